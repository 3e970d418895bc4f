//! IVLP against PyTorch (scripts/make_ivlp_fixture.py: the official multimodal-prompt-learning
//! towers with independent text and image prompts, on transformers' CLIP modules): features,
//! logits, loss and every prompt's gradient on a batch, 20 SGD steps and the final prompts; and,
//! through the registry, training, saving, loading, new class names and interpret.
mod common;
use candle_core::Tensor;
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::ivlp::{IvlpConfig, IvlpLearner};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::Clip;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(&fixtures().join("ivlp/deep.safetensors"), &dev())
        .unwrap()
}

const NAMES: [&str; 4] = ["ctx", "text_prompt_1", "vision_prompt_0", "vision_prompt_1"];

#[test]
fn loss_gradients_and_twenty_sgd_steps_equal_the_official_code() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = IvlpConfig {
        ctx_init: md["ctx_init"].clone(),
        ..IvlpConfig::default()
    };
    // The text context starts from the init words' first tokens, as the official code's.
    let fresh = IvlpLearner::new(&clip, &names, config.clone()).unwrap();
    let e = rel_err(fresh.context.ctx.as_tensor(), &t["ctx"]);
    assert!(e < 1e-6, "ctx init: {e}");
    let l = IvlpLearner::from_parts(
        &clip,
        &names,
        config,
        t["ctx"].clone(),
        vec![t["text_prompt_1"].clone()],
        vec![t["vision_prompt_0"].clone(), t["vision_prompt_1"].clone()],
    )
    .unwrap();
    let b: usize = md["batch"].parse().unwrap();
    let (first, labels) = pixel_batch(&clip, &t, 0, b);
    let tf = l.text_features(&clip, &l.context.buffers).unwrap();
    let e = rel_err(&tf, &t["text_features"]);
    println!("text features: rel_err {e:.1e}");
    assert!(e < 1e-5, "text features: {e}");
    let f = l.image_features(&clip, first.pixels().unwrap()).unwrap();
    assert!(rel_err(&f, &t["image_features"]) < 1e-5);
    let out = l.batch_loss_and_grads(&clip, &first, &labels, 1.0).unwrap();
    let loss = t["loss"].to_scalar::<f32>().unwrap();
    assert!(
        ((out.loss - loss) / loss).abs() < 1e-5,
        "loss {} vs {loss}",
        out.loss
    );
    assert!(rel_err(&out.logits, &t["logits"]) < 1e-5);
    for (name, g) in NAMES.iter().zip(&out.grads) {
        let e = rel_err(g, &t[&format!("grad_{name}")]);
        println!("{name} gradient: rel_err {e:.1e}");
        assert!(e < 1e-4, "{name} gradient: {e}");
    }
    let scored = l.scorer(&clip, None).unwrap().batch_logits(&first).unwrap();
    assert!(rel_err(&scored, &t["logits"]) < 1e-5);

    let lr: f64 = md["lr"].parse().unwrap();
    let mut sgd = Sgd::new(
        SgdConfig {
            lr,
            momentum: md["momentum"].parse().unwrap(),
            weight_decay: md["weight_decay"].parse().unwrap(),
        },
        NAMES.len(),
    );
    let vars: Vec<_> = l.vars().into_iter().map(|(_, v)| v).collect();
    let step_losses: Vec<f32> = t["step_losses"].to_vec1().unwrap();
    let batches = t["pixels"].dim(0).unwrap() / b;
    for (step, expected) in step_losses.iter().enumerate() {
        let (x, y) = pixel_batch(&clip, &t, step % batches, b);
        let out = l.batch_loss_and_grads(&clip, &x, &y, 1.0).unwrap();
        assert!(
            ((out.loss - expected) / expected).abs() < 1e-4,
            "step {step}: {} vs {expected}",
            out.loss
        );
        sgd.step(&vars, &out.grads, lr).unwrap();
    }
    for (name, v) in NAMES.iter().zip(&vars) {
        let e = rel_err(v.as_tensor(), &t[&format!("final_{name}")]);
        println!(
            "final {name} after {} steps: rel_err {e:.1e}",
            step_losses.len()
        );
        assert!(e < 1e-4, "final {name}: {e}");
    }
}

#[test]
fn through_the_registry_it_trains_saves_loads_interprets_and_scores_new_class_names() {
    let clip = hf_clip();
    let (names, data) = colours(4, 9, 0..3);
    let l = methods::create(
        &clip,
        "ivlp",
        &names,
        serde_json::json!({ "seed": 2 }),
        Runtime::default(),
    )
    .unwrap();
    let (dt, dv) = (
        clip.text.hidden_size(),
        clip.config.vision_config.hidden_size,
    );
    assert_eq!(
        l.meta().params,
        vec![
            ("ctx".into(), vec![2, dt]),
            ("text_prompt.1".into(), vec![2, dt]),
            ("vision_prompt.0".into(), vec![2, dv]),
            ("vision_prompt.1".into(), vec![2, dv]),
        ]
    );
    // The text context is in token-embedding space: its nearest words are the init's.
    let words = l
        .learned_context()
        .unwrap()
        .nearest_tokens(&clip, 1)
        .unwrap();
    assert_eq!(words.len(), 2);
    assert_eq!(words[0][0].1, "a");
    assert_eq!(words[1][0].1, "photo");

    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        ..TrainConfig::default()
    };
    let before = l.vars()[1]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    fit(
        &clip,
        l.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let after = l.vars()[1]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(before, after, "the deep text prompt trained");

    let dir = std::env::temp_dir().join(format!("promptclip-ivlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ivlp.safetensors");
    io::save(&path, l.as_ref(), &clip).unwrap();
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(back.meta(), l.meta());
    let a = methods::predict(&clip, l.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    let b = methods::predict(&clip, back.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    assert_eq!(a.probs, b.probs);
    let new: Vec<String> = ["purple", "orange", "golden retriever"]
        .map(String::from)
        .to_vec();
    let p = methods::predict(
        &clip,
        l.as_ref(),
        &data.sources,
        Some(&new),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(p.probs.len(), 3 * data.sources.len());
    std::fs::remove_dir_all(&dir).unwrap();

    let err = methods::create(
        &clip,
        "ivlp",
        &names,
        serde_json::json!({ "depthText": 5 }),
        Runtime::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("depthText must be from 1 to the text tower's 2 layers"),
        "{err}"
    );
}
