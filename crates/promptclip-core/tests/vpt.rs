//! VPT-deep against PyTorch (scripts/make_vpt_fixture.py: the official multimodal-prompt-learning
//! image tower with VPT prompts, on transformers' CLIP modules): the loss, logits and both
//! prompts' gradients on a batch, then 20 SGD steps and the final prompts; and, through the
//! registry and the trainer, training, saving, loading, new class names and a ResNet refused.
mod common;
use candle_core::Tensor;
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::vpt::{VptConfig, VptLearner};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::{Clip, Error};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(&fixtures().join("vpt/deep.safetensors"), &dev())
        .unwrap()
}

fn learner(clip: &Clip, t: &HashMap<String, Tensor>, md: &HashMap<String, String>) -> VptLearner {
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = VptConfig {
        n_ctx: md["n_ctx"].parse().unwrap(),
        depth: Some(md["depth"].parse().unwrap()),
        template: md["template"].clone(),
        ..VptConfig::default()
    };
    VptLearner::from_parts(
        clip,
        &names,
        config,
        vec![t["prompt_0"].clone(), t["prompt_1"].clone()],
    )
    .unwrap()
}

#[test]
fn loss_gradients_and_twenty_sgd_steps_equal_the_official_code() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let l = learner(&clip, &t, &md);
    let b: usize = md["batch"].parse().unwrap();
    let (first, labels) = pixel_batch(&clip, &t, 0, b);

    // The prompted image features and the frozen hand-made text side.
    let f = l.image_features(&clip, first.pixels().unwrap()).unwrap();
    let e = rel_err(&f, &t["image_features"]);
    println!("image features: rel_err {e:.1e}");
    assert!(e < 1e-5, "image features: {e}");
    let out = l.batch_loss_and_grads(&clip, &first, &labels, 1.0).unwrap();
    let loss = t["loss"].to_scalar::<f32>().unwrap();
    assert!(
        ((out.loss - loss) / loss).abs() < 1e-5,
        "loss {} vs {loss}",
        out.loss
    );
    let e = rel_err(&out.logits, &t["logits"]);
    assert!(e < 1e-5, "logits: {e}");
    for (i, g) in out.grads.iter().enumerate() {
        let e = rel_err(g, &t[&format!("grad_prompt_{i}")]);
        println!("prompt {i} gradient: rel_err {e:.1e}");
        assert!(e < 1e-4, "prompt {i} gradient: {e}");
    }
    // Scoring the batch gives the training pass's logits.
    let scored = l.scorer(&clip, None).unwrap().batch_logits(&first).unwrap();
    assert!(rel_err(&scored, &t["logits"]) < 1e-5);

    // 20 steps of SGD (torch.optim.SGD with momentum and weight decay) over the batches in turn.
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: md["lr"].parse().unwrap(),
            momentum: md["momentum"].parse().unwrap(),
            weight_decay: md["weight_decay"].parse().unwrap(),
        },
        2,
    );
    let vars: Vec<_> = l.vars().into_iter().map(|(_, v)| v).collect();
    let step_losses: Vec<f32> = t["step_losses"].to_vec1().unwrap();
    let batches = t["pixels"].dim(0).unwrap() / b;
    let lr: f64 = md["lr"].parse().unwrap();
    for (step, expected) in step_losses.iter().enumerate() {
        let (x, y) = pixel_batch(&clip, &t, step % batches, b);
        let out = l.batch_loss_and_grads(&clip, &x, &y, 1.0).unwrap();
        assert!(
            ((out.loss - expected) / expected).abs() < 1e-4,
            "step {step}: loss {} vs {expected}",
            out.loss
        );
        sgd.step(&vars, &out.grads, lr).unwrap();
    }
    for (i, v) in vars.iter().enumerate() {
        let expected = &t[&format!("final_prompt_{i}")];
        let e = rel_err(v.as_tensor(), expected);
        println!(
            "final prompt {i} after {} steps: rel_err {e:.1e}",
            step_losses.len()
        );
        assert!(e < 1e-4, "final prompt {i}: {e}");
        assert!(rel_err(&t[&format!("prompt_{i}")], expected) > 1e-2);
    }
}

#[test]
fn through_the_registry_it_trains_saves_loads_and_scores_new_class_names() {
    let clip = hf_clip();
    let (names, data) = colours(4, 5, 0..3);
    let l = methods::create(
        &clip,
        "vpt",
        &names,
        serde_json::json!({ "nCtx": 3, "seed": 4 }),
        Runtime::default(),
    )
    .unwrap();
    // Widths and depth from the model: every layer of the tiny tower, (3, 32) each.
    let d = clip.config.vision_config.hidden_size;
    assert_eq!(
        l.meta().params,
        vec![
            ("vision_prompt.0".into(), vec![3, d]),
            ("vision_prompt.1".into(), vec![3, d])
        ]
    );
    assert!(l.scores_any_classes() && l.learned_context().is_none());
    let before: Vec<Vec<f32>> = l
        .vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    // N(0, 0.02).
    let all: Vec<f32> = before.concat();
    let std = (all.iter().map(|x| x * x).sum::<f32>() / all.len() as f32).sqrt();
    assert!((0.015..0.025).contains(&std), "{std}");

    let config = TrainConfig {
        epochs: 3,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        ..TrainConfig::default()
    };
    let s = fit(
        &clip,
        l.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.epoch_loss.len(), 3);
    let moved = l.vars()[1]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(moved, before[1], "the deep prompt trained");

    let dir = std::env::temp_dir().join(format!("promptclip-vpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vpt.safetensors");
    io::save(&path, l.as_ref(), &clip).unwrap();
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(back.meta(), l.meta());
    let a = methods::predict(&clip, l.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    let b = methods::predict(&clip, back.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    assert_eq!(a.probs, b.probs);

    // New class names: the same prompted image features against the new names' text.
    let new: Vec<String> = ["purple", "orange"].map(String::from).to_vec();
    let p = methods::predict(
        &clip,
        l.as_ref(),
        &data.sources,
        Some(&new),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(p.num_classes, 2);
    assert_eq!(p.probs.len(), 2 * data.sources.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options_and_a_resnet_clip_are_refused_by_name() {
    let clip = hf_clip();
    let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
    let err = |o: serde_json::Value| {
        methods::create(&clip, "vpt", &names, o, Runtime::default())
            .unwrap_err()
            .to_string()
    };
    assert!(err(serde_json::json!({ "depth": 3 }))
        .contains("depth must be from 1 to the image tower's 2 layers"));
    assert!(err(serde_json::json!({ "nCtx": 0 })).contains("nCtx must be at least 1"));
    assert!(err(serde_json::json!({ "ctxInit": "a photo" })).contains("unknown field `ctxInit`"));

    let rn = Clip::load(&fixtures().join("resnet/tiny-rn.safetensors"), &dev()).unwrap();
    let e = methods::create(
        &rn,
        "vpt",
        &names,
        serde_json::json!({}),
        Runtime::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(
        e.to_string()
            .contains("the methods that work on it: linear-probe, coop, cocoop"),
        "{e}"
    );
}
