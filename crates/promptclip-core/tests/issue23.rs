//! Issue 23 (core): prompts longer than CLIP's context are refused everywhere by one check, an
//! empty image file says so, a learner file's metadata errors name the file, and inference
//! batches are bounded by a memory budget.
mod common;
use common::{colours, dev, fixtures};
use promptclip_core::methods::coop::{CoopConfig, CoopContext};
use promptclip_core::methods::{self, io, Runtime};
use promptclip_core::preprocess::ImageSource;
use promptclip_core::{features, zeroshot, Clip};
use serde_json::json;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn assert_err<T>(r: promptclip_core::Result<T>, code: &str, parts: &[&str]) {
    let e = match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    let m = e.to_string();
    assert_eq!(e.code(), code, "{m}");
    for p in parts {
        assert!(m.contains(p), "`{p}` not in: {m}");
    }
}

/// `n` distinct words, one token each.
fn words(n: usize) -> String {
    vec!["cat"; n].join(" ")
}

#[test]
fn long_prompts_are_refused_by_zero_shot_prediction_and_training_alike() {
    let clip = hf_clip();
    let l = clip.text.context_length();
    let limit = format!("{l}-token context");
    // A 200-word template: every class would score the same cut prompt.
    let long_template = format!("{} {{}}.", words(200));
    assert_err(
        zeroshot::class_embeddings(&clip, &s(&["red", "green"]), &[long_template]),
        "E_INVALID_ARGUMENT",
        &[
            "classNames[0] `red`",
            "templates[0]",
            "it needs 204 tokens",
            &limit,
        ],
    );
    // Two long class names that share their first 77 tokens would become one class.
    let (a, b) = (format!("{} red", words(90)), format!("{} green", words(90)));
    let long_names = vec![a.clone(), b];
    assert_err(
        zeroshot::class_embeddings(&clip, &long_names, &s(&["a photo of a {}."])),
        "E_INVALID_ARGUMENT",
        &[&format!("classNames[0] `{a}`"), "templates[0]", &limit],
    );
    // A template that fits still scores.
    zeroshot::class_embeddings(&clip, &s(&["red", "green"]), &s(&["a photo of a {}."])).unwrap();
    // Texts to encode.
    assert_err(
        clip.encode_texts(&[words(100)]),
        "E_INVALID_ARGUMENT",
        &["texts[0]", "it needs 102 tokens", &limit],
    );
    // A learned prompt applied to long names (prediction) is refused like training is.
    let learner = CoopContext::new(&clip, &s(&["red", "green"]), CoopConfig::default()).unwrap();
    assert_err(
        learner.buffers_for(&clip, &long_names),
        "E_INVALID_ARGUMENT",
        &["classNames[", &limit],
    );
    for method in ["coop", "cocoop", "kgcoop"] {
        let m = methods::create(
            &clip,
            method,
            &s(&["red", "green"]),
            json!({}),
            Runtime::default(),
        )
        .unwrap();
        let sources = colours(1, 1, 0..2).1.sources;
        assert_err(
            methods::predict(
                &clip,
                m.as_ref(),
                &sources,
                Some(&long_names),
                4,
                &mut |_, _| {},
            ),
            "E_INVALID_ARGUMENT",
            &["classNames[", &limit],
        );
        // Training (building the learner) refuses the same names with the same message.
        assert_err(
            methods::create(&clip, method, &long_names, json!({}), Runtime::default()),
            "E_INVALID_ARGUMENT",
            &["classNames[", &limit, "more than the limit"],
        );
    }
    // KgCoOp's anchor template goes through the same check.
    assert_err(
        methods::create(
            &clip,
            "kgcoop",
            &s(&["red"]),
            json!({ "template": format!("{} {{}}", words(100)) }),
            Runtime::default(),
        ),
        "E_INVALID_ARGUMENT",
        &["templates[0]", &limit],
    );
}

#[test]
fn an_empty_image_file_says_it_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    for src in [
        ImageSource::Path(path.clone()),
        ImageSource::Bytes {
            name: "empty-bytes".into(),
            data: Vec::<u8>::new().into(),
        },
    ] {
        let e = promptclip_core::preprocess::decode(&src).unwrap_err();
        let m = e.to_string();
        assert_eq!(e.code(), "E_IMAGE_DECODE", "{m}");
        assert!(m.contains("empty (0 bytes)"), "{m}");
        assert!(m.contains(&src.name()), "{m}");
        assert!(!m.contains("could not be determined"), "{m}");
    }
}

#[test]
fn learner_metadata_errors_name_the_file() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let learner = CoopContext::new(&clip, &s(&["red", "green"]), CoopConfig::default()).unwrap();
    let good = dir.path().join("good.safetensors");
    io::save(&good, &learner, &clip).unwrap();
    let (tensors, md) =
        promptclip_core::files::read_safetensors(&good, &candle_core::Device::Cpu).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&md["promptclip"]).unwrap();
    type Change = fn(&mut serde_json::Value);
    let changes: [(&str, Change); 6] = [
        ("no-nctx", |m| {
            m["learner"]["options"]
                .as_object_mut()
                .unwrap()
                .remove("nCtx");
        }),
        ("bad-option", |m| {
            m["learner"]["options"]["nCtx"] = json!("many")
        }),
        ("no-classes", |m| m["learner"]["classNames"] = json!([])),
        ("long-class", |m| {
            m["learner"]["classNames"] = json!([words(100), "green"])
        }),
        ("bad-method", |m| m["learner"]["method"] = json!("nope")),
        ("bad-version", |m| m["formatVersion"] = json!(99)),
    ];
    for (name, change) in changes {
        let mut m = meta.clone();
        change(&mut m);
        let path = dir.path().join(format!("{name}.safetensors"));
        let mut md = md.clone();
        md.insert("promptclip".into(), m.to_string());
        let refs: Vec<(&str, &candle_core::Tensor)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        promptclip_core::files::write_safetensors_atomic(&path, &refs, md).unwrap();
        let e = io::load(&path, &clip, Runtime::default()).unwrap_err();
        assert!(
            e.to_string().contains(&path.display().to_string()),
            "{name}: {} ({})",
            e,
            e.code()
        );
        assert_ne!(e.code(), "E_INTERNAL", "{name}: {e}");
    }
}

#[test]
fn a_huge_inference_batch_is_chunked_to_the_memory_budget() {
    let clip = hf_clip();
    let per = features::bytes_per_image(&clip);
    assert!(per >= 3 * 32 * 32 * 4, "{per}");
    // The chunk for a huge batch fits the budget; small batches are kept.
    for budget_mb in [1usize, 64, features::INFERENCE_MEMORY_BUDGET_MB] {
        let n = features::inference_batch_size(&clip, 100_000, budget_mb);
        assert!((1..100_000).contains(&n), "{budget_mb}: {n}");
        assert!(n * per <= budget_mb << 20, "{budget_mb}: {n} x {per}");
        assert_eq!(features::inference_batch_size(&clip, 2, budget_mb), 2);
    }
    assert_eq!(features::inference_batch_size(&clip, 0, 64), 1);
    assert_eq!(features::inference_batch_size(&clip, usize::MAX, 0), 1);

    // Same features with batch 100000 (chunked to a 1 MiB budget) as with batch 2.
    let sources = colours(20, 3, 0..3).1.sources;
    let cap = features::inference_batch_size(&clip, 100_000, 1);
    assert!(cap < sources.len(), "the budget must cut this set: {cap}");
    let mut calls = 0;
    let huge = features::encode_within(&clip, &sources, 100_000, 1, &mut |_, _| {
        calls += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, sources.len().div_ceil(cap));
    let small = features::encode(&clip, &sources, 2).unwrap();
    let (a, b) = (huge.features.unwrap(), small.features.unwrap());
    assert_eq!(huge.indices, small.indices);
    assert!(
        common::rel_err(&a, &b) < 1e-6,
        "{}",
        common::rel_err(&a, &b)
    );

    // Prediction with a huge batch equals batch 2.
    let learner = methods::create(
        &clip,
        "coop",
        &s(&["red", "green", "blue"]),
        json!({}),
        Runtime::default(),
    )
    .unwrap();
    let p1 = methods::predict(
        &clip,
        learner.as_ref(),
        &sources,
        None,
        100_000,
        &mut |_, _| {},
    )
    .unwrap();
    let p2 = methods::predict(&clip, learner.as_ref(), &sources, None, 2, &mut |_, _| {}).unwrap();
    assert_eq!(p1.indices, p2.indices);
    for (x, y) in p1.probs.iter().zip(&p2.probs) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}
