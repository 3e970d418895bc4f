//! MaPLe against PyTorch (scripts/make_maple_fixture.py: the official MultiModalPromptLearner and
//! towers on transformers' CLIP modules): features, logits, loss and the gradient of every
//! parameter (the text prompts through both towers, the couplings), 20 SGD steps and the final
//! values; and, through the registry, the couplings' initialisation, training, saving and loading.
mod common;
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::maple::{MapleConfig, MapleLearner};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::Clip;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

const NAMES: [&str; 6] = [
    "ctx",
    "text_prompt_1",
    "coupling_0_weight",
    "coupling_0_bias",
    "coupling_1_weight",
    "coupling_1_bias",
];

#[test]
fn loss_gradients_and_twenty_sgd_steps_equal_the_official_code() {
    let clip = hf_clip();
    let (t, md) = promptclip_core::files::read_safetensors(
        &fixtures().join("maple/deep.safetensors"),
        &dev(),
    )
    .unwrap();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let l = MapleLearner::from_parts(
        &clip,
        &names,
        MapleConfig {
            ctx_init: md["ctx_init"].clone(),
            depth: Some(md["depth"].parse().unwrap()),
            ..MapleConfig::default()
        },
        t["ctx"].clone(),
        vec![t["text_prompt_1"].clone()],
        vec![
            (t["coupling_0_weight"].clone(), t["coupling_0_bias"].clone()),
            (t["coupling_1_weight"].clone(), t["coupling_1_bias"].clone()),
        ],
    )
    .unwrap();
    let b: usize = md["batch"].parse().unwrap();
    let (first, labels) = pixel_batch(&clip, &t, 0, b);
    assert!(
        rel_err(
            &l.text_features(&clip, &l.context.buffers).unwrap(),
            &t["text_features"]
        ) < 1e-5
    );
    let e = rel_err(
        &l.image_features(&clip, first.pixels().unwrap()).unwrap(),
        &t["image_features"],
    );
    println!("image features: rel_err {e:.1e}");
    assert!(e < 1e-5, "image features: {e}");
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
fn through_the_registry_the_couplings_start_as_the_official_ones_and_train_save_and_load() {
    let clip = hf_clip();
    let (names, data) = colours(4, 3, 0..3);
    let l = methods::create(
        &clip,
        "maple",
        &names,
        serde_json::json!({}),
        Runtime::default(),
    )
    .unwrap();
    let (dt, dv) = (
        clip.text.hidden_size(),
        clip.config.vision_config.hidden_size,
    );
    let params = l.meta().params;
    assert_eq!(params.len(), 6, "{params:?}");
    assert_eq!(params[2], ("coupling.0.weight".into(), vec![dv, dt]));
    assert_eq!(params[5], ("coupling.1.bias".into(), vec![dv]));
    let v = l.vars();
    let flat = |i: usize| {
        v[i].1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    // torch.nn.Linear's range, and the input map is its own Linear.
    let bound = 1.0 / (dt as f32).sqrt();
    assert!(
        flat(2).iter().all(|w| w.abs() <= bound) && flat(2).iter().any(|w| w.abs() > bound / 2.0)
    );
    assert_ne!(flat(2), flat(4));

    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        ..TrainConfig::default()
    };
    let before = flat(4);
    fit(
        &clip,
        l.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_ne!(
        l.vars()[4]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        before
    );

    let dir = std::env::temp_dir().join(format!("promptclip-maple-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("maple.safetensors");
    io::save(&path, l.as_ref(), &clip).unwrap();
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(back.meta(), l.meta());
    let new: Vec<String> = ["purple", "orange"].map(String::from).to_vec();
    let a = methods::predict(
        &clip,
        l.as_ref(),
        &data.sources,
        Some(&new),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    let b = methods::predict(
        &clip,
        back.as_ref(),
        &data.sources,
        Some(&new),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(a.probs, b.probs);
    std::fs::remove_dir_all(&dir).unwrap();
}
