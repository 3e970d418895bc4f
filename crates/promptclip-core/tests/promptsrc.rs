//! PromptSRC against PyTorch (scripts/make_promptsrc_fixture.py: the official CustomCLIP forward,
//! forward_backward's loss and its Gaussian prompt aggregation, on transformers' CLIP modules):
//! the frozen text and image sides, the loss and its terms' sum, every prompt's gradient, three
//! epochs of SGD with GPA and the aggregated prompts; and, through the trainer, a run cancelled
//! mid-way and resumed ends bit for bit where an uninterrupted one does.
mod common;
use candle_core::{DType, Tensor};
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::promptsrc::{PromptSrcConfig, PromptSrcLearner};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::{Clip, Error};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

const NAMES: [&str; 4] = ["ctx", "text_prompt_1", "vision_prompt_0", "vision_prompt_1"];

fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn loss_gradients_and_gaussian_prompt_aggregation_equal_the_official_code() {
    let clip = hf_clip();
    let (t, md) = promptclip_core::files::read_safetensors(
        &fixtures().join("promptsrc/deep.safetensors"),
        &dev(),
    )
    .unwrap();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = PromptSrcConfig {
        gpa_mean: md["gpa_mean"].parse().unwrap(),
        gpa_std: md["gpa_std"].parse().unwrap(),
        ..PromptSrcConfig::default()
    };
    let l = PromptSrcLearner::new(&clip, &names, config.clone()).unwrap();
    // The official 60 templates' mean features, and the text context from the four init words.
    let e = rel_err(&l.frozen_text(&clip).unwrap(), &t["frozen_text"]);
    println!("frozen text features: rel_err {e:.1e}");
    assert!(e < 1e-5, "frozen text: {e}");
    assert!(rel_err(l.prompts.context.ctx.as_tensor(), &t["ctx"]) < 1e-6);
    let vars: Vec<_> = l.vars().into_iter().map(|(_, v)| v).collect();
    for (name, v) in NAMES.iter().zip(&vars) {
        v.set(&t[*name]).unwrap();
    }
    let b: usize = md["batch"].parse().unwrap();
    let (first, labels) = pixel_batch(&clip, &t, 0, b);
    // The frozen image side: the unprompted tower's features of the same images, normalised.
    let zs = promptclip_core::clip::l2_normalize(&first.features().unwrap()).unwrap();
    let e = rel_err(&zs, &t["frozen_image"]);
    assert!(e < 1e-5, "frozen image features: {e}");
    let out = l.batch_loss_and_grads(&clip, &first, &labels, 1.0).unwrap();
    let loss = scalar(&t["loss"]);
    let parts = ["loss_ce", "loss_text", "loss_image", "loss_kl"].map(|k| scalar(&t[k]));
    assert!((parts.iter().sum::<f32>() - loss).abs() < 1e-5 * loss);
    println!("loss {} vs {loss} (terms {parts:?})", out.loss);
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

    // Three epochs of SGD, the aggregate after each.
    let gw: Vec<f64> = t["gpa_weights"].to_vec1().unwrap();
    let epochs: usize = md["epochs"].parse().unwrap();
    let w: Vec<f64> = config.gauss(epochs);
    for (a, e) in w.iter().zip(&gw) {
        assert!((a - e).abs() < 1e-15, "GPA weights {w:?} vs {gw:?}");
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
    let steps: usize = md["steps_per_epoch"].parse().unwrap();
    let step_losses: Vec<f32> = t["step_losses"].to_vec1().unwrap();
    l.start_run(None).unwrap();
    for epoch in 0..epochs {
        for k in 0..steps {
            let (x, y) = pixel_batch(&clip, &t, k, b);
            let out = l.batch_loss_and_grads(&clip, &x, &y, 1.0).unwrap();
            let expected = step_losses[epoch * steps + k];
            assert!(
                ((out.loss - expected) / expected).abs() < 1e-4,
                "epoch {epoch} step {k}: {} vs {expected}",
                out.loss
            );
            sgd.step(&vars, &out.grads, lr).unwrap();
        }
        l.epoch_end(epoch, epochs).unwrap();
    }
    let state: HashMap<String, Tensor> = l.run_state().into_iter().collect();
    for (i, name) in NAMES.iter().enumerate() {
        let e = rel_err(vars[i].as_tensor(), &t[&format!("final_{name}")]);
        let var_name = &l.vars()[i].0;
        let g = rel_err(
            &state[&format!("gpa.{var_name}")],
            &t[&format!("gpa_{name}")],
        );
        println!("{name}: last epoch rel_err {e:.1e}, aggregate rel_err {g:.1e}");
        assert!(e < 1e-4 && g < 1e-4, "{name}: {e}, {g}");
    }
}

#[test]
fn a_cancelled_and_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does() {
    let clip = hf_clip();
    let (names, data) = colours(3, 11, 0..3); // 9 images: two steps of 4 per epoch
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let options = serde_json::json!({ "gpaMean": 2, "gpaStd": 1, "seed": 5 });
    let new = || {
        methods::create(
            &clip,
            "promptsrc",
            &names,
            options.clone(),
            Runtime::default(),
        )
        .unwrap()
    };
    let config = TrainConfig {
        epochs: 3,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        ..TrainConfig::default()
    };
    let full = new();
    let s = fit(
        &clip,
        full.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(
        s.fitted.iter().any(|f| f.contains("Gaussian")),
        "{:?}",
        s.fitted
    );

    let interrupted = new();
    let cancel = AtomicBool::new(false);
    let with_ck = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..config.clone()
    };
    let err = fit(
        &clip,
        interrupted.as_ref(),
        &data,
        &with_ck,
        &mut |p| {
            if p.epoch == 3 && p.step == 1 {
                cancel.store(true, Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    let resumed = new();
    let s = fit(
        &clip,
        resumed.as_ref(),
        &data,
        &TrainConfig {
            resume_from: Some(ck.clone()),
            ..with_ck.clone()
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.start_epoch, 2);
    let bits = |l: &dyn Learner| -> Vec<Vec<u32>> {
        l.vars()
            .iter()
            .map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
    };
    assert_eq!(bits(full.as_ref()), bits(resumed.as_ref()));
    // The saved learner holds the aggregated prompts.
    let path = dir.path().join("promptsrc.safetensors");
    io::save(&path, resumed.as_ref(), &clip).unwrap();
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(bits(back.as_ref()), bits(full.as_ref()));
}
