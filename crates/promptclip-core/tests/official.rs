//! Prompts under the official code's state-dict names (methods::official). The names below are
//! written out by hand from the official repositories' `CustomCLIP`s (MaPLe's trainers/maple.py,
//! multimodal-prompt-learning's clip/model.py for IVLP and VPT, CoOp's and CoCoOp's prompt
//! learners as Dassl saves them), not taken from the code under test. Files under those names,
//! holding the fixtures' starting prompts, import to learners whose loss and logits on the
//! fixtures' first batch are the official code's; exports give the same names back; training
//! starts from such a file (`initFrom`) and can keep the data's order (`shuffle: false`).
mod common;
use candle_core::{DType, Device, Tensor};
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::official::{self, ImportRequest};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::{Clip, Error};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture(name: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(
        &fixtures().join(format!("{name}/deep.safetensors")),
        &dev(),
    )
    .unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("promptclip-official-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A safetensors file of `tensors` under `names` (official name, fixture tensor).
fn write(path: &Path, named: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = named
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_device(&Device::Cpu).unwrap()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn request<'a>(
    method: Option<&'a str>,
    classes: &'a [String],
    options: serde_json::Value,
) -> ImportRequest<'a> {
    ImportRequest {
        method,
        class_names: Some(classes),
        options,
        runtime: Runtime::default(),
    }
}

/// The learner's loss and logits on the fixture's first batch equal the official code's.
fn assert_official_loss(clip: &Clip, l: &dyn Learner, t: &HashMap<String, Tensor>, b: usize) {
    let (first, labels) = pixel_batch(clip, t, 0, b);
    let out = l.batch_loss_and_grads(clip, &first, &labels, 1.0).unwrap();
    let loss = t["loss"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        ((out.loss - loss) / loss).abs() < 1e-5,
        "loss {} vs the official {loss}",
        out.loss
    );
    assert!(rel_err(&out.logits, &t["logits"]) < 1e-5);
}

fn names_in(path: &Path) -> BTreeSet<String> {
    promptclip_core::files::read_safetensors(path, &Device::Cpu)
        .unwrap()
        .0
        .into_keys()
        .collect()
}

#[test]
fn maple_prompts_under_the_official_names_score_as_the_official_code_and_export_back() {
    let clip = hf_clip();
    let (t, md) = fixture("maple");
    let classes: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let official = [
        ("prompt_learner.ctx", t["ctx"].clone()),
        (
            "prompt_learner.compound_prompts_text.0",
            t["text_prompt_1"].clone(),
        ),
        ("prompt_learner.proj.weight", t["coupling_0_weight"].clone()),
        ("prompt_learner.proj.bias", t["coupling_0_bias"].clone()),
        (
            "prompt_learner.compound_prompt_projections.0.weight",
            t["coupling_1_weight"].clone(),
        ),
        (
            "prompt_learner.compound_prompt_projections.0.bias",
            t["coupling_1_bias"].clone(),
        ),
    ];
    let mut file = official.to_vec();
    // What a whole-model state dict holds besides: the class-token buffers, frozen weights.
    file.push((
        "prompt_learner.token_prefix",
        Tensor::zeros((3, 1, 8), DType::F32, &Device::Cpu).unwrap(),
    ));
    file.push((
        "image_encoder.conv1.weight",
        Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
    ));
    let path = temp("maple-official.safetensors");
    write(&path, &file);
    let options = serde_json::json!({ "ctxInit": md["ctx_init"] });
    let l = official::import(&clip, &path, request(None, &classes, options)).unwrap();
    let meta = l.meta();
    assert_eq!(meta.method, "maple", "inferred from the names");
    assert_eq!(meta.options["depth"], md["depth"].parse::<usize>().unwrap());
    assert_eq!(meta.options["nCtx"], t["ctx"].dim(0).unwrap());
    assert_official_loss(&clip, l.as_ref(), &t, md["batch"].parse().unwrap());

    // Export: the official names, the same values; imported back with no flags at all.
    let out = temp("maple-export.safetensors");
    official::export(&out, l.as_ref()).unwrap();
    let expected: BTreeSet<String> = official.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names_in(&out), expected);
    let (back, md_out) = promptclip_core::files::read_safetensors(&out, &dev()).unwrap();
    assert_eq!(md_out["format"], "pt");
    for (n, v) in &official {
        assert_eq!(rel_err(&back[*n], v), 0.0, "{n}");
    }
    let again = official::import(
        &clip,
        &out,
        ImportRequest {
            method: None,
            class_names: None,
            options: serde_json::Value::Null,
            runtime: Runtime::default(),
        },
    )
    .unwrap();
    assert_eq!(again.meta(), meta);

    // A promptclip learner file exports to the same file without a model.
    let saved = temp("maple.safetensors");
    io::save(&saved, l.as_ref(), &clip).unwrap();
    let out2 = temp("maple-export-file.safetensors");
    official::export_file(&saved, &out2).unwrap();
    assert_eq!(names_in(&out2), expected);
}

#[test]
fn ivlp_and_vpt_prompts_under_the_official_names_score_as_the_official_code() {
    let clip = hf_clip();
    let (t, md) = fixture("ivlp");
    let classes: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    // As DataParallel saves it: every name under `module.`.
    let path = temp("ivlp-official.safetensors");
    write(
        &path,
        &[
            ("module.prompt_learner.ctx", t["ctx"].clone()),
            (
                "module.text_encoder.transformer.resblocks.1.VPT_shallow",
                t["text_prompt_1"].clone(),
            ),
            ("module.image_encoder.VPT", t["vision_prompt_0"].clone()),
            (
                "module.image_encoder.transformer.resblocks.1.VPT_shallow",
                t["vision_prompt_1"].clone(),
            ),
        ],
    );
    let options = serde_json::json!({ "ctxInit": md["ctx_init"] });
    let l = official::import(&clip, &path, request(None, &classes, options.clone())).unwrap();
    assert_eq!(l.meta().method, "ivlp");
    assert_eq!(l.meta().options["depthText"], 2);
    assert_eq!(l.meta().options["depthVision"], 2);
    assert_official_loss(&clip, l.as_ref(), &t, md["batch"].parse().unwrap());
    // PromptSRC's prompts are IVLP's: the same file, named as PromptSRC's.
    let src = official::import(
        &clip,
        &path,
        request(Some("promptsrc"), &classes, options.clone()),
    )
    .unwrap();
    assert_eq!(src.meta().method, "promptsrc");
    for ((a, x), (b, y)) in l.vars().iter().zip(src.vars().iter()) {
        assert_eq!(a, b);
        assert_eq!(rel_err(x.as_tensor(), y.as_tensor()), 0.0, "{a}");
    }
    // Refusals, each naming what is wrong.
    let err = official::import(
        &clip,
        &path,
        request(Some("coop"), &classes, options.clone()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("image_encoder.VPT") && err.contains("coop"),
        "{err}"
    );
    let err = official::import(
        &clip,
        &path,
        request(
            None,
            &classes,
            serde_json::json!({ "ctxInit": md["ctx_init"], "nCtxText": 3 }),
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nCtxText") && err.contains('3'), "{err}");
    let err = official::import(
        &clip,
        &path,
        request(Some("linear-probe"), &classes, options.clone()),
    )
    .unwrap_err();
    assert_eq!(err.code(), "E_UNSUPPORTED", "{err}");
    let wide = temp("ivlp-wide.safetensors");
    let dv = t["vision_prompt_0"].dim(1).unwrap();
    write(
        &wide,
        &[
            ("prompt_learner.ctx", t["ctx"].clone()),
            (
                "text_encoder.transformer.resblocks.1.VPT_shallow",
                t["text_prompt_1"].clone(),
            ),
            (
                "image_encoder.VPT",
                Tensor::zeros((2, dv + 1), DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                t["vision_prompt_1"].clone(),
            ),
        ],
    );
    let err = official::import(&clip, &wide, request(None, &classes, options)).unwrap_err();
    assert_eq!(err.code(), "E_SHAPE_MISMATCH", "{err}");
    assert!(err.to_string().contains("image_encoder.VPT"), "{err}");

    let (t, md) = fixture("vpt");
    let classes: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let path = temp("vpt-official.safetensors");
    write(
        &path,
        &[
            ("image_encoder.VPT", t["prompt_0"].clone()),
            (
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                t["prompt_1"].clone(),
            ),
        ],
    );
    let options = serde_json::json!({ "template": md["template"] });
    let l = official::import(&clip, &path, request(None, &classes, options)).unwrap();
    assert_eq!(l.meta().method, "vpt");
    assert_eq!(l.meta().options["depth"], 2);
    assert_official_loss(&clip, l.as_ref(), &t, md["batch"].parse().unwrap());
}

#[test]
fn coop_and_cocoop_dassl_state_dicts_import_with_their_shapes_deciding_the_options() {
    let clip = hf_clip();
    let (classes, _) = colours(1, 1, 0..3);
    let d = clip.text.hidden_size();
    let e = clip.embed_dim();
    let cpu = Device::Cpu;
    let rand = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, &cpu).unwrap();
    // CoOp's Dassl checkpoint names its prompt learner's own state dict: `ctx`, the buffers.
    let ctx = rand(&[3, 5, d]);
    let path = temp("coop-csc.safetensors");
    write(
        &path,
        &[
            ("ctx", ctx.clone()),
            ("token_prefix", rand(&[3, 1, d])),
            ("token_suffix", rand(&[3, 8, d])),
        ],
    );
    let l = official::import(
        &clip,
        &path,
        request(None, &classes, serde_json::Value::Null),
    )
    .unwrap();
    assert_eq!(l.meta().method, "coop");
    assert_eq!(l.meta().options["nCtx"], 5);
    assert_eq!(l.meta().options["classSpecific"], true);
    assert_eq!(
        rel_err(l.vars()[0].1.as_tensor(), &ctx.to_device(&dev()).unwrap()),
        0.0
    );
    // Class-specific context is for as many classes as it has rows.
    let err = official::import(
        &clip,
        &path,
        request(None, &classes[..2], serde_json::Value::Null),
    )
    .unwrap_err();
    assert_eq!(err.code(), "E_SHAPE_MISMATCH", "{err}");
    let kg = official::import(
        &clip,
        &path,
        request(Some("kgcoop"), &classes, serde_json::Value::Null),
    )
    .unwrap();
    assert_eq!(kg.meta().method, "kgcoop");

    let hidden = e / 4;
    let path = temp("cocoop.safetensors");
    write(
        &path,
        &[
            ("ctx", rand(&[4, d])),
            ("meta_net.linear1.weight", rand(&[hidden, e])),
            ("meta_net.linear1.bias", rand(&[hidden])),
            ("meta_net.linear2.weight", rand(&[d, hidden])),
            ("meta_net.linear2.bias", rand(&[d])),
        ],
    );
    let l = official::import(
        &clip,
        &path,
        request(None, &classes, serde_json::Value::Null),
    )
    .unwrap();
    assert_eq!(l.meta().method, "cocoop");
    assert_eq!(l.meta().options["nCtx"], 4);
    assert_eq!(l.meta().options["metaNetRatio"], 4);

    let junk = temp("junk.safetensors");
    write(&junk, &[("token_prefix", rand(&[3, 1, d]))]);
    let err = official::import(
        &clip,
        &junk,
        request(None, &classes, serde_json::Value::Null),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no learned prompts") && err.contains("token_prefix"),
        "{err}"
    );
}

fn flat(l: &dyn Learner) -> Vec<f32> {
    l.vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn training_starts_from_an_init_file_and_keeps_the_data_order_without_shuffling() {
    let clip = hf_clip();
    let (classes, data) = colours(4, 7, 0..3);
    let create = |seed: u64| {
        methods::create(
            &clip,
            "coop",
            &classes,
            serde_json::json!({ "nCtx": 4, "seed": seed }),
            Runtime::default(),
        )
        .unwrap()
    };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        augment: false,
        ..TrainConfig::default()
    };
    let cancel = AtomicBool::new(false);
    let a = create(1);
    fit(&clip, a.as_ref(), &data, &config, &mut |_| {}, &cancel).unwrap();
    let learned = temp("coop-a.safetensors");
    io::save(&learned, a.as_ref(), &clip).unwrap();
    let exported = temp("coop-a-official.safetensors");
    official::export(&exported, a.as_ref()).unwrap();

    // From the learner file, and from its official export: the same run as continuing `a`.
    let (cont, _) = io::load(&learned, &clip, Runtime::default()).unwrap();
    fit(&clip, cont.as_ref(), &data, &config, &mut |_| {}, &cancel).unwrap();
    for file in [&learned, &exported] {
        let b = create(2);
        let with = TrainConfig {
            init_from: Some(promptclip_core::train::InitFrom::of(file.clone()).unwrap()),
            ..config.clone()
        };
        fit(&clip, b.as_ref(), &data, &with, &mut |_| {}, &cancel).unwrap();
        assert_eq!(flat(b.as_ref()), flat(cont.as_ref()), "{}", file.display());
    }

    // Without shuffling (and without augmentation) the training seed changes nothing; with it,
    // the order does.
    let run = |seed: u64, shuffle: bool| {
        let l = create(1);
        let c = TrainConfig {
            seed,
            shuffle,
            ..config.clone()
        };
        fit(&clip, l.as_ref(), &data, &c, &mut |_| {}, &cancel).unwrap();
        flat(l.as_ref())
    };
    assert_eq!(run(1, false), run(2, false));
    assert_ne!(run(1, true), run(2, true));

    // A checkpoint of a run from an init file resumes only with that file.
    let ck = temp("coop-init.ckpt.safetensors");
    let with = TrainConfig {
        init_from: Some(promptclip_core::train::InitFrom::of(exported.clone()).unwrap()),
        checkpoint_path: Some(ck.clone()),
        ..config.clone()
    };
    fit(
        &clip,
        create(2).as_ref(),
        &data,
        &with,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    let resumed = TrainConfig {
        resume_from: Some(ck),
        epochs: 3,
        ..config.clone()
    };
    let err = fit(
        &clip,
        create(2).as_ref(),
        &data,
        &resumed,
        &mut |_| {},
        &cancel,
    )
    .unwrap_err();
    assert!(err.to_string().contains("initFrom"), "{err}");
    // A file of another method's prompts is refused by name.
    let (t, _) = fixture("vpt");
    let vpt = temp("vpt-for-coop.safetensors");
    write(&vpt, &[("image_encoder.VPT", t["prompt_0"].clone())]);
    let with = TrainConfig {
        init_from: Some(promptclip_core::train::InitFrom::of(vpt).unwrap()),
        ..config.clone()
    };
    let err = fit(
        &clip,
        create(2).as_ref(),
        &data,
        &with,
        &mut |_| {},
        &cancel,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("image_encoder.VPT"),
        "{err}"
    );
}
