//! CLIP-Adapter against PyTorch (scripts/make_adapter_fixtures.py, `clip_adapter.safetensors`: a
//! re-implementation of the official `Adapter` and `CustomCLIP.forward` on the tiny transformers
//! CLIP): the template's text features, the adapted logits, the loss, d(loss)/d(W1, W2), and one
//! SGD step with momentum 0.9 and weight decay 5e-4 (Dassl's optimiser); then the learner through
//! the registry: saved, loaded, scoring new class names, and trained by the trainer.
mod common;
use candle_core::{DType, Tensor};
use common::{dev, fixtures, rel_err};
use promptclip_core::clip::l2_normalize;
use promptclip_core::methods::clip_adapter::{ClipAdapter, ClipAdapterConfig};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::Clip;
use std::collections::HashMap;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(
        &fixtures().join("adapters/clip_adapter.safetensors"),
        &dev(),
    )
    .unwrap()
}

fn learner(clip: &Clip, t: &HashMap<String, Tensor>, md: &HashMap<String, String>) -> ClipAdapter {
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = ClipAdapterConfig {
        ratio: md["ratio"].parse().unwrap(),
        reduction: md["reduction"].parse().unwrap(),
        template: md["template"].clone(),
        ..ClipAdapterConfig::default()
    };
    ClipAdapter::from_parts(
        clip,
        &names,
        config,
        t["fc1_weight"].clone(),
        t["fc2_weight"].clone(),
    )
    .unwrap()
}

fn labels(t: &HashMap<String, Tensor>) -> Tensor {
    t["labels"].to_dtype(DType::U32).unwrap()
}

// Measured on CPU (AMD EPYC, 2026-12-04): text features 2.7e-7, logits 4.0e-7, gradients 2.8e-6
// (W1) and 1.0e-6 (W2), the weights after the SGD step equal in f32; 1e-5 leaves the GPU's fp32
// room.
const TOL: f32 = 1e-5;

#[test]
fn forward_loss_gradients_and_one_sgd_step_equal_pytorch() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let l = learner(&clip, &t, &md);
    assert!(
        (clip.logit_scale - md["logit_scale"].parse::<f32>().unwrap()).abs() < 1e-6,
        "the fixture was made on this CLIP"
    );
    // The text side: the template's frozen features, normalised (the official encodes once).
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let text =
        promptclip_core::zeroshot::class_embeddings(&clip, &names, &[md["template"].clone()])
            .unwrap();
    let e = rel_err(&text, &l2_normalize(&t["text_features"]).unwrap());
    assert!(e < TOL, "text features: {e}");

    let feats = &t["image_features"];
    let logits = l.logits(&clip, feats).unwrap();
    let e = rel_err(&logits, &t["logits"]);
    assert!(e < TOL, "logits: {e}");

    let out = l.loss_and_grads(&clip, feats, &labels(&t)).unwrap();
    let loss = t["loss"].to_scalar::<f32>().unwrap();
    assert!(
        (out.loss - loss).abs() / loss < TOL,
        "loss {} vs {loss}",
        out.loss
    );
    for (g, name) in out.grads.iter().zip(["grad_fc1_weight", "grad_fc2_weight"]) {
        let e = rel_err(g, &t[name]);
        assert!(e < TOL, "{name}: {e}");
    }

    let sgd: serde_json::Value = serde_json::from_str(&md["sgd"]).unwrap();
    let lr = sgd["lr"].as_f64().unwrap();
    let mut opt = Sgd::new(
        SgdConfig {
            lr,
            momentum: sgd["momentum"].as_f64().unwrap(),
            weight_decay: sgd["weight_decay"].as_f64().unwrap(),
        },
        2,
    );
    let vars: Vec<_> = l.vars().into_iter().map(|(_, v)| v).collect();
    opt.step(&vars, &out.grads, lr).unwrap();
    for (v, name) in vars.iter().zip(["fc1_weight_step1", "fc2_weight_step1"]) {
        let e = rel_err(v.as_tensor(), &t[name]);
        assert!(e < TOL, "{name}: {e}");
    }
}

#[test]
fn gradients_equal_central_finite_differences_in_f64() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let l = learner(&clip, &t, &md);
    let feats = t["image_features"].to_dtype(DType::F64).unwrap();
    let y = labels(&t);
    // The loss in f64 as a function of the flattened W1 and W2 (the learner's forward in f64).
    let text = l2_normalize(
        &promptclip_core::zeroshot::class_embeddings(
            &clip,
            l.class_names(),
            &[md["template"].clone()],
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap(),
    )
    .unwrap();
    let scale = (clip.logit_scale as f64).exp();
    let ratio = l.config.ratio;
    let loss = |w1: &Tensor, w2: &Tensor| -> f64 {
        let h = feats.matmul(&w1.t().unwrap()).unwrap().relu().unwrap();
        let a = h.matmul(&w2.t().unwrap()).unwrap().relu().unwrap();
        let f = ((a * ratio).unwrap() + (&feats * (1.0 - ratio)).unwrap()).unwrap();
        let logits = (l2_normalize(&f)
            .unwrap()
            .matmul(&text.t().unwrap())
            .unwrap()
            * scale)
            .unwrap();
        promptclip_core::loss::cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let w1 = l.fc1.as_tensor().to_dtype(DType::F64).unwrap();
    let w2 = l.fc2.as_tensor().to_dtype(DType::F64).unwrap();
    let grads = l
        .loss_and_grads(&clip, &t["image_features"], &y)
        .unwrap()
        .grads;
    let h = 1e-6;
    for (which, g) in grads.iter().enumerate() {
        let base = if which == 0 { &w1 } else { &w2 };
        let flat: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let gmax = g.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for i in (0..flat.len()).step_by(5) {
            let at = |d: f64| {
                let mut v = flat.clone();
                v[i] += d;
                Tensor::from_vec(v, base.dims(), &dev()).unwrap()
            };
            let (p, m) = (at(h), at(-h));
            let fd = if which == 0 {
                (loss(&p, &w2) - loss(&m, &w2)) / (2.0 * h)
            } else {
                (loss(&w1, &p) - loss(&w1, &m)) / (2.0 * h)
            };
            assert!(
                (fd - g[i] as f64).abs() <= 1e-4 * gmax,
                "W{}[{i}]: finite differences {fd}, gradient {}",
                which + 1,
                g[i]
            );
        }
    }
}

#[test]
fn through_the_registry_it_saves_loads_and_scores_new_class_names() {
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "paper_crane", "x"].map(String::from).to_vec();
    let l = methods::create(
        &clip,
        "clip-adapter",
        &names,
        serde_json::json!({ "seed": 3 }),
        Runtime::default(),
    )
    .unwrap();
    // Widths from the model: E = 16 here, hidden 16 / 4.
    let e = clip.embed_dim();
    assert_eq!(
        l.meta().params,
        vec![
            ("fc1".into(), vec![e / 4, e]),
            ("fc2".into(), vec![e, e / 4])
        ]
    );
    // torch.nn.Linear's range: U(+-1/sqrt(fan_in)).
    let w1: Vec<f32> = l.vars()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let bound = 1.0 / (e as f32).sqrt();
    assert!(w1.iter().all(|w| w.abs() <= bound) && w1.iter().any(|w| w.abs() > bound / 2.0));
    assert!(l.scores_any_classes());

    let dir = std::env::temp_dir().join(format!("promptclip-clip-adapter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adapter.safetensors");
    io::save(&path, l.as_ref(), &clip).unwrap();
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(back.meta(), l.meta());
    let feats = Tensor::randn(0f32, 1.0, (5, e), &dev()).unwrap();
    let a = l.scorer(&clip, None).unwrap().logits(&feats).unwrap();
    let b = back.scorer(&clip, None).unwrap().logits(&feats).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);

    // New class names: the same adapted image features against the new names' text features.
    let new: Vec<String> = ["golden retriever", "cat"].map(String::from).to_vec();
    let scored = l.scorer(&clip, Some(&new)).unwrap().logits(&feats).unwrap();
    let adapter = methods::clip_adapter::ClipAdapter::from_parts(
        &clip,
        &new,
        ClipAdapterConfig {
            seed: 3,
            ..ClipAdapterConfig::default()
        },
        l.vars()[0].1.as_tensor().clone(),
        l.vars()[1].1.as_tensor().clone(),
    )
    .unwrap();
    assert!(rel_err(&scored, &adapter.logits(&clip, &feats).unwrap()) < 1e-6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_name_the_field_and_the_model_s_width() {
    let clip = hf_clip();
    let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
    // The refusal of options `o`, in words.
    let refusal = |o| {
        methods::create(&clip, "clip-adapter", &names, o, Runtime::default())
            .unwrap_err()
            .to_string()
    };
    for (options, expected) in [
        (
            serde_json::json!({ "ratio": 1.5 }),
            "ratio must be a number from 0 to 1, got 1.5",
        ),
        (
            serde_json::json!({ "reduction": 64 }),
            "reduction must be from 1 to the image feature size 16, got 64",
        ),
    ] {
        let msg = refusal(options);
        assert!(msg.contains(expected), "{msg}");
    }
    let msg = refusal(serde_json::json!({ "nCtx": 4 }));
    assert!(
        msg.contains("unknown field `nCtx`") && msg.contains("ratio"),
        "{msg}"
    );
}
