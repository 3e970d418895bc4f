//! CoOp against PyTorch (scripts/make_coop_fixture.py: the official code's prompt assembly fed
//! through transformers' text model), finite differences, the recipe's schedule and optimiser,
//! determinism, checkpoint resume, save/load, interpretation, and learning on real data.
mod common;
use candle_core::{DType, Tensor, Var};
use common::{dev, fixtures, rel_err};
use promptclip_core::clip::l2_normalize;
use promptclip_core::methods::coop::{ClassTokenPosition, CoopConfig, CoopContext};
use promptclip_core::methods::io::{load, save};
use promptclip_core::methods::{Learner, Runtime, StepOutput};
use promptclip_core::preprocess::ImageSource;
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::train::schedule::{LrSchedule, ScheduleKind};
use promptclip_core::train::{fit, LabelledImages, TrainConfig};
use promptclip_core::{Clip, Error};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn class_names(md: &HashMap<String, String>) -> Vec<String> {
    serde_json::from_str(&md["class_names"]).unwrap()
}

fn learner_for_case(clip: &Clip, case: &str) -> (CoopContext, HashMap<String, Tensor>) {
    let (t, md) = promptclip_core::files::read_safetensors(
        &fixtures().join(format!("coop/{case}.safetensors")),
        &dev(),
    )
    .unwrap();
    let n_ctx: usize = md["n_ctx"].parse().unwrap();
    let ctx_init = (md["init"] != "random").then(|| md["init"].clone());
    let config = CoopConfig {
        n_ctx: Some(n_ctx),
        ctx_init,
        class_specific: md["csc"] == "true",
        position: serde_json::from_value(serde_json::json!(md["position"])).unwrap(),
        init_std: 0.02,
        seed: 0,
    };
    let learner = CoopContext::new(clip, &class_names(&md), config).unwrap();
    assert_eq!(learner.n_ctx(), n_ctx, "{case}: M");
    assert_eq!(learner.config.n_ctx, Some(n_ctx), "{case}: resolved nCtx");
    if md["init"] == "random" {
        learner.ctx.set(&t["ctx"]).unwrap();
    } else {
        // Initialised from words, our context must already equal the fixture's.
        assert_eq!(
            rel_err(learner.ctx.as_tensor(), &t["ctx"]),
            0.0,
            "{case}: ctx from words"
        );
    }
    (learner, t)
}

#[test]
fn prompts_logits_and_gradients_match_pytorch() {
    let clip = hf_clip();
    for case in [
        "unified_end",
        "csc_middle",
        "unified_front",
        "unified_end_words",
    ] {
        let (learner, t) = learner_for_case(&clip, case);
        let eot: Vec<usize> = t["eot_index"]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as usize)
            .collect();
        assert_eq!(learner.buffers.eot, eot, "{case}: EOT positions");
        let prompts = learner
            .assemble(learner.ctx.as_tensor(), &learner.buffers)
            .unwrap();
        assert_eq!(
            rel_err(&prompts, &t["prompts"]),
            0.0,
            "{case}: prompt assembly"
        );
        let labels = t["labels"].to_dtype(DType::U32).unwrap();
        let logits = Learner::logits(&learner, &clip, &t["image_features"]).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(learner.ctx.as_tensor())
            .expect("gradient reaches ctx");
        let text = learner.text_features(&clip, &learner.buffers).unwrap();
        let (e_text, e_logits, e_loss, e_grad) = (
            rel_err(&text, &t["text_features"]),
            rel_err(&logits, &t["logits"]),
            rel_err(&loss, &t["loss"]),
            rel_err(g, &t["grad_ctx"]),
        );
        println!("{case}: rel err text {e_text:.1e} logits {e_logits:.1e} loss {e_loss:.1e} grad {e_grad:.1e}");
        assert!(
            e_text < 1e-4 && e_logits < 1e-4 && e_loss < 1e-4,
            "{case}: forward differs"
        );
        assert!(e_grad < 1e-3, "{case}: gradient rel err {e_grad}");
    }
}

#[test]
fn gradient_matches_finite_differences_through_the_whole_pipeline() {
    let clip = Clip::load_with_dtype(
        &fixtures().join("tiny-clip-openai.safetensors"),
        &dev(),
        DType::F64,
    )
    .unwrap();
    let names: Vec<String> = ["dog", "paper crane", "x"].map(String::from).to_vec();
    let config = CoopConfig {
        n_ctx: Some(3),
        class_specific: true,
        position: ClassTokenPosition::Middle,
        init_std: 0.5,
        seed: 3,
        ..CoopConfig::default()
    };
    let learner = CoopContext::new(&clip, &names, config).unwrap();
    let ctx64 = learner.ctx.as_tensor().to_dtype(DType::F64).unwrap();
    let ctx = Var::from_tensor(&ctx64).unwrap();
    let feats = Tensor::randn(0f64, 1.0, (4, clip.embed_dim()), &dev()).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2, 1], &dev()).unwrap();
    let loss_of = |c: &Tensor| -> f64 {
        let prompts = learner.assemble(c, &learner.buffers).unwrap();
        let text = clip
            .encode_text_embeds(&prompts, &learner.buffers.eot)
            .unwrap();
        let logits = clip.logits(&feats, &text).unwrap();
        candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let prompts = learner.assemble(ctx.as_tensor(), &learner.buffers).unwrap();
    let text = clip
        .encode_text_embeds(&prompts, &learner.buffers.eot)
        .unwrap();
    let loss =
        candle_nn::loss::cross_entropy(&clip.logits(&feats, &text).unwrap(), &labels).unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(ctx.as_tensor())
        .unwrap()
        .to_vec3::<f64>()
        .unwrap();
    let base = ctx64.to_vec3::<f64>().unwrap();
    for &(k, m, d) in &[(0usize, 0usize, 0usize), (1, 1, 5), (2, 2, 63), (1, 2, 17)] {
        let h = 1e-6;
        let (mut p, mut q) = (base.clone(), base.clone());
        p[k][m][d] += h;
        q[k][m][d] -= h;
        let fd = (loss_of(&Tensor::new(p, &dev()).unwrap())
            - loss_of(&Tensor::new(q, &dev()).unwrap()))
            / (2.0 * h);
        assert!(
            (fd - g[k][m][d]).abs() < 1e-6 + 1e-5 * fd.abs(),
            "({k},{m},{d}): analytic {} fd {fd}",
            g[k][m][d]
        );
    }
}

#[test]
fn loss_and_grads_equal_autograd_for_every_variant() {
    // The trainer's path (the text encoder's own backward pass) against candle's autograd through
    // the same prompts, in f64.
    let clip = Clip::load_with_dtype(
        &fixtures().join("tiny-clip-openai.safetensors"),
        &dev(),
        DType::F64,
    )
    .unwrap();
    let names: Vec<String> = ["dog", "paper crane", "x", "golden retriever"]
        .map(String::from)
        .to_vec();
    let feats = Tensor::randn(0f64, 1.0, (5, clip.embed_dim()), &dev()).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2, 3, 1], &dev()).unwrap();
    for (class_specific, position) in [
        (false, ClassTokenPosition::End),
        (false, ClassTokenPosition::Middle),
        (false, ClassTokenPosition::Front),
        (true, ClassTokenPosition::Middle),
    ] {
        let config = CoopConfig {
            n_ctx: Some(3),
            class_specific,
            position,
            init_std: 0.5,
            seed: 3,
            ..CoopConfig::default()
        };
        let mut learner = CoopContext::new(&clip, &names, config).unwrap();
        // The context in f64 too, so that the whole comparison runs in f64 (learners keep their
        // parameters in f32; the field is public for tests like this one).
        learner.ctx =
            Var::from_tensor(&learner.ctx.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let logits = Learner::logits(&learner, &clip, &feats).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let g_ref = loss
            .backward()
            .unwrap()
            .get(learner.ctx.as_tensor())
            .unwrap()
            .clone();
        let StepOutput {
            loss: l,
            logits: logits2,
            grads,
        } = learner.loss_and_grads(&clip, &feats, &labels).unwrap();
        let e_loss = (l as f64 - loss.to_scalar::<f64>().unwrap()).abs();
        let (e_logits, e_grad) = (rel_err(&logits2, &logits), rel_err(&grads[0], &g_ref));
        println!("csc {class_specific} {position:?}: loss {e_loss:.1e} logits {e_logits:.1e} grad {e_grad:.1e}");
        assert!(
            e_loss < 1e-6 && e_logits < 1e-10 && e_grad < 1e-10,
            "{class_specific} {position:?}"
        );
    }
}

#[test]
fn loss_scaling_by_a_power_of_two_leaves_gradients_bit_identical() {
    // Every op between the loss and the context is linear in the incoming gradient, and scaling
    // by 2^k is exact in floating point: scaled-then-unscaled gradients equal plain ones exactly.
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "cat", "paper crane"].map(String::from).to_vec();
    let feats = Tensor::randn(0f32, 1.0, (4, clip.embed_dim()), &dev()).unwrap();
    let labels = Tensor::new(&[0u32, 1, 2, 1], &dev()).unwrap();
    let learner = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(4),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let StepOutput {
        loss: l1,
        grads: g1,
        ..
    } = learner.loss_and_grads(&clip, &feats, &labels).unwrap();
    let StepOutput {
        loss: l2,
        grads: g2,
        ..
    } = learner
        .loss_and_grads_scaled(&clip, &feats, &labels, 65536.0)
        .unwrap();
    assert_eq!(l1, l2);
    assert_eq!(rel_err(&g2[0], &g1[0]), 0.0);
    // The scaler: an overflow halves the scale; enough good steps double it.
    let mut s = promptclip_core::train::optim::LossScaler {
        growth_interval: 2,
        ..Default::default()
    };
    assert!(s.backoff() && s.scale == 32768.0);
    s.good_step();
    s.good_step();
    assert!(s.scale == 65536.0 && s.good_steps == 0);
    let mut tiny = promptclip_core::train::optim::LossScaler {
        scale: 2f64.powi(-24),
        ..Default::default()
    };
    assert!(!tiny.backoff());
    assert!(!promptclip_core::train::optim::all_finite(&[Tensor::new(
        &[1f32, f32::INFINITY],
        &dev()
    )
    .unwrap()])
    .unwrap());
}

#[test]
fn schedule_and_sgd_follow_the_official_recipe() {
    let sched: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("coop/schedule.json")).unwrap(),
    )
    .unwrap();
    let lrs: Vec<f64> = serde_json::from_value(sched["lrs"].clone()).unwrap();
    let s = LrSchedule {
        kind: ScheduleKind::Cosine,
        base_lr: 0.002,
        max_epochs: 10,
        warmup_epochs: 1,
        warmup_lr: 1e-5,
        per_step: false,
        total_steps: None,
        min_lr: 0.0,
    };
    assert_eq!(lrs.len(), 10);
    for (e, lr) in lrs.iter().enumerate() {
        assert!(
            (s.lr(e) - lr).abs() < 1e-12,
            "epoch {e}: {} vs {lr}",
            s.lr(e)
        );
    }
    // SGD against a torch.optim.SGD trace.
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("coop/sgd.json")).unwrap())
            .unwrap();
    let v = |x: &serde_json::Value| -> Vec<f32> { serde_json::from_value(x.clone()).unwrap() };
    let p = Var::from_vec(v(&trace["initial_param"]), 3, &dev()).unwrap();
    let mut sgd = Sgd::new(
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        1,
    );
    for (i, g) in trace["grads"].as_array().unwrap().iter().enumerate() {
        sgd.step(
            std::slice::from_ref(&p),
            &[Tensor::new(v(g).as_slice(), &dev()).unwrap()],
            0.1,
        )
        .unwrap();
        let expected = Tensor::new(v(&trace["params"][i]).as_slice(), &dev()).unwrap();
        assert!(rel_err(p.as_tensor(), &expected) < 1e-6, "step {i}");
    }
}

/// Four colour classes of small synthetic photos (PNG-encoded), distinct enough for a tiny
/// random CLIP's features to separate once the prompts are learned.
fn colour_dataset(per_class: usize, seed: u64) -> (Vec<String>, LabelledImages) {
    let classes = ["red", "green", "blue", "yellow"];
    let base = [
        [220u8, 40, 40],
        [40, 200, 60],
        [40, 70, 220],
        [230, 220, 40],
    ];
    let mut rng = promptclip_core::rng::Rng::new(seed);
    let (mut sources, mut labels) = (vec![], vec![]);
    for i in 0..per_class {
        for (c, rgb) in base.iter().enumerate() {
            let (w, h) = (40 + rng.below(30) as u32, 40 + rng.below(30) as u32);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let shade = ((x + y) % 16) as i32 - 8;
                image::Rgb(
                    rgb.map(|v| (v as i32 + shade + rng.below(30) as i32 - 15).clamp(0, 255) as u8),
                )
            });
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            sources.push(ImageSource::Bytes {
                name: format!("{}-{i}.png", classes[c]),
                data: Arc::from(png),
            });
            labels.push(c);
        }
    }
    (
        classes.map(String::from).to_vec(),
        LabelledImages { sources, labels },
    )
}

fn small_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn same_seed_same_context_bit_for_bit() {
    let clip = hf_clip();
    let (names, data) = colour_dataset(3, 1);
    let run = || {
        let l = CoopContext::new(
            &clip,
            &names,
            CoopConfig {
                n_ctx: Some(4),
                ..CoopConfig::default()
            },
        )
        .unwrap();
        let initial = flat(l.ctx.as_tensor());
        fit(
            &clip,
            &l,
            &data,
            &small_config(2),
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let learned = flat(l.ctx.as_tensor());
        // Equal runs prove nothing if training left the context where it started.
        let moved = relative_change(&initial, &learned);
        assert!(
            moved > 0.01,
            "the context moved by only {moved} of its norm"
        );
        learned
    };
    let (a, b) = (run(), run());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// ||b - a|| / ||a||.
fn relative_change(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f32 = a.iter().map(|x| x * x).sum();
    (d / n.max(f32::MIN_POSITIVE)).sqrt()
}

#[test]
fn resume_from_checkpoint_equals_uninterrupted_run() {
    let clip = hf_clip();
    let (names, data) = colour_dataset(4, 2); // 16 images: two steps per epoch
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let new_learner = || {
        CoopContext::new(
            &clip,
            &names,
            CoopConfig {
                n_ctx: Some(4),
                ..CoopConfig::default()
            },
        )
        .unwrap()
    };

    let full = new_learner();
    fit(
        &clip,
        &full,
        &data,
        &small_config(3),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();

    // Interrupted: cancel during the second epoch (epochs count from 1), after the first epoch's
    // checkpoint.
    let interrupted = new_learner();
    let cancel = AtomicBool::new(false);
    let config = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..small_config(3)
    };
    let err = fit(
        &clip,
        &interrupted,
        &data,
        &config,
        &mut |p| {
            if p.epoch == 2 && p.step == 1 {
                cancel.store(true, Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }));
    assert!(ck.exists());

    let resumed = new_learner();
    let summary = fit(
        &clip,
        &resumed,
        &data,
        &TrainConfig {
            resume_from: Some(ck.clone()),
            ..config.clone()
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(summary.start_epoch, 1);
    let a = full
        .ctx
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = resumed
        .ctx
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "resumed context differs"
    );

    // A checkpoint of another configuration is refused by name.
    let other = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(5),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let err = fit(
        &clip,
        &other,
        &data,
        &TrainConfig {
            resume_from: Some(ck),
            ..small_config(3)
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("different learner: nCtx was "),
        "{err}"
    );
    assert!(err.to_string().contains("this run has 5"), "{err}");
}

#[test]
fn save_load_and_apply_to_new_classes() {
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "cat"].map(String::from).to_vec();
    let dir = tempfile::tempdir().unwrap();
    let learner = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(4),
            position: ClassTokenPosition::Middle,
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let path = dir.path().join("p.safetensors");
    save(&path, &learner, &clip).unwrap();
    let (loaded, meta) = load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(meta.method, "coop");
    assert_eq!(meta.class_names, names);
    assert_eq!(meta.options["position"], "middle");
    let context = loaded
        .learned_context()
        .expect("CoOp has a learned context");
    assert_eq!(rel_err(&context.vectors, learner.ctx.as_tensor()), 0.0);
    // Unified context transfers to new class names: buffers are rebuilt for them.
    let new_names: Vec<String> = ["golden retriever", "paper crane", "x"]
        .map(String::from)
        .to_vec();
    let b = learner.buffers_for(&clip, &new_names).unwrap();
    assert_eq!(b.class_names, new_names);
    let f = l2_normalize(&learner.text_features(&clip, &b).unwrap()).unwrap();
    let features = Tensor::randn(0f32, 1.0, (2, 16), &clip.device).unwrap();
    let scored = loaded.scorer(&clip, Some(&new_names)).unwrap();
    assert_eq!(scored.logits(&features).unwrap().dims(), &[2, 3]);
    assert_eq!(f.dims(), &[3, 16]);
    // Class-specific context does not.
    let csc = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(2),
            class_specific: true,
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let err = csc.buffers_for(&clip, &new_names).unwrap_err();
    assert!(err.to_string().contains("class-specific"), "{err}");
    // Another CLIP width, or a file that is not a prompt, is refused with a clear message.
    let other = Clip::load(&fixtures().join("tiny-clip-openai.safetensors"), &dev()).unwrap();
    let err = load(&path, &other, Runtime::default()).unwrap_err();
    assert!(err.to_string().contains("text width 32"), "{err}");
    // ... naming the CLIP it was learned on, the one to load instead.
    assert!(err.to_string().contains("tiny-clip-hf"), "{err}");
    let err = load(
        &fixtures().join("reference-hf.safetensors"),
        &clip,
        Runtime::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a promptclip learner file"),
        "{err}"
    );
}

#[test]
fn bad_options_are_named() {
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "cat"].map(String::from).to_vec();
    let err = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(0),
            ..CoopConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("nCtx"), "{err}");
    assert!(CoopContext::new(&clip, &[], CoopConfig::default())
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let dup: Vec<String> = ["dog", "dog"].map(String::from).to_vec();
    assert!(CoopContext::new(&clip, &dup, CoopConfig::default())
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    assert!(CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(80),
            ..CoopConfig::default()
        }
    )
    .is_err());
    assert!(serde_json::from_value::<ClassTokenPosition>(serde_json::json!("left")).is_err());
    assert_eq!(
        serde_json::from_value::<ClassTokenPosition>(serde_json::json!("middle")).unwrap(),
        ClassTokenPosition::Middle
    );
    let l = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(2),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let bad = LabelledImages {
        sources: vec![ImageSource::Path("a.png".into())],
        labels: vec![2],
    };
    let err = fit(
        &clip,
        &l,
        &bad,
        &small_config(1),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("labels[0] = 2"), "{err}");
    let empty = LabelledImages {
        sources: vec![],
        labels: vec![],
    };
    assert!(fit(
        &clip,
        &l,
        &empty,
        &small_config(1),
        &mut |_| {},
        &AtomicBool::new(false)
    )
    .unwrap_err()
    .to_string()
    .contains("empty"));
}

#[test]
fn interpret_finds_the_init_words() {
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "cat"].map(String::from).to_vec();
    let l = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            ctx_init: Some("a photo of a".into()),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    assert_eq!(l.n_ctx(), 4);
    let rows = l.interpret(&clip, 3).unwrap();
    let nearest: Vec<&str> = rows.iter().map(|r| r[0].1.as_str()).collect();
    assert_eq!(nearest, vec!["a", "photo", "of", "a"]);
    assert!(rows.iter().all(|r| r[0].2 < 1e-3 && r[1].2 > r[0].2));
}

#[test]
fn learning_beats_zero_shot_on_held_out_images() {
    let clip = hf_clip();
    let (names, train) = colour_dataset(8, 11);
    let (_, test) = colour_dataset(6, 99);
    let accuracy = |scores: &Tensor| -> f64 {
        let pred = scores.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        100.0
            * pred
                .iter()
                .zip(&test.labels)
                .filter(|(p, l)| **p as usize == **l)
                .count() as f64
            / test.labels.len() as f64
    };
    let test_feats =
        promptclip_core::features::encode_all(&clip, &test.sources, "test image").unwrap();
    let templates = vec!["a photo of a {}.".to_string()];
    let zs = promptclip_core::zeroshot::class_embeddings(&clip, &names, &templates).unwrap();
    let zero_shot = accuracy(&clip.logits(&test_feats, &zs).unwrap());

    let learner = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(4),
            class_specific: true,
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let initial = flat(learner.ctx.as_tensor());
    let config = TrainConfig {
        epochs: 30,
        batch_size: 8,
        augment: false,
        sgd: SgdConfig {
            lr: 0.01,
            ..SgdConfig::default()
        },
        seed: 3,
        ..TrainConfig::default()
    };
    let summary = fit(
        &clip,
        &learner,
        &train,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let coop = accuracy(
        &learner
            .logits(&clip, &test_feats, &learner.buffers)
            .unwrap()
            .detach(),
    );
    let moved = relative_change(&initial, &flat(learner.ctx.as_tensor()));
    assert!(
        moved > 0.05,
        "the context moved by only {moved} of its norm"
    );
    let (first, last) = (summary.epoch_loss[1], *summary.epoch_loss.last().unwrap());
    println!("train loss {first:.3} -> {last:.3}; held-out accuracy zero-shot {zero_shot:.1}% -> CoOp {coop:.1}%");
    assert!(
        last < 0.5 * first,
        "training loss did not fall: {:?}",
        summary.epoch_loss
    );
    assert!(
        coop >= zero_shot + 40.0,
        "held-out accuracy {coop} vs zero-shot {zero_shot}"
    );
}

#[test]
fn non_finite_loss_stops_training_with_a_clear_error() {
    // Finite parameters whose loss is not: a context at f32's largest value overflows in the text
    // encoder, so the very first loss is NaN.
    let clip = hf_clip();
    let (names, data) = colour_dataset(2, 5);
    let l = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(2),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    l.ctx
        .set(&Tensor::full(f32::MAX, l.ctx.dims(), &dev()).unwrap())
        .unwrap();
    let config = TrainConfig {
        epochs: 3,
        batch_size: 8,
        augment: false,
        ..TrainConfig::default()
    };
    let err = fit(
        &clip,
        &l,
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert_eq!(err.code(), "E_NON_FINITE_LOSS", "{err}");
    // Epochs and steps count from 1.
    assert!(
        matches!(
            err,
            Error::NonFiniteLoss {
                epoch: 1,
                step: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at epoch 1, step 1"), "{err}");
}

#[test]
fn diverging_update_stops_training_before_it_is_saved_or_checkpointed() {
    // A huge learning rate: the losses stay finite, but the second epoch's update overflows the
    // context. Training stops there with the parameters' error, deterministically at epoch 2,
    // step 1 (one step per epoch), and the checkpoint keeps the finite first epoch.
    let clip = hf_clip();
    let (names, data) = colour_dataset(2, 5);
    let l = CoopContext::new(
        &clip,
        &names,
        CoopConfig {
            n_ctx: Some(2),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let config = TrainConfig {
        epochs: 3,
        batch_size: 8,
        warmup_epochs: 0,
        augment: false,
        sgd: SgdConfig {
            lr: 1e38,
            ..SgdConfig::default()
        },
        checkpoint_path: Some(ck.clone()),
        ..TrainConfig::default()
    };
    let mut losses = vec![];
    let err = fit(
        &clip,
        &l,
        &data,
        &config,
        &mut |p| losses.push(p.loss),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert_eq!(err.code(), "E_NON_FINITE_PARAMS", "{err}");
    assert!(matches!(err, Error::NonFiniteParams(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("parameter `ctx`") && msg.contains("at epoch 2, step 1"),
        "{msg}"
    );
    // Only the first epoch's step was reported, with a finite loss.
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert!(losses[0].is_finite());
    let saved = promptclip_core::train::checkpoint::load(&ck, &dev()).unwrap();
    assert_eq!(saved.meta.epochs_done, 1);
    let finite = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite())
    };
    assert!(finite(&saved.params["ctx"]), "checkpointed ctx");
    assert!(
        !finite(l.ctx.as_tensor()),
        "the learner's ctx after the overflow"
    );
    // The diverged learner cannot be saved; no file is left behind.
    let path = dir.path().join("diverged.safetensors");
    let err = save(&path, &l, &clip).unwrap_err();
    assert_eq!(err.code(), "E_NON_FINITE_PARAMS", "{err}");
    assert!(err.to_string().contains("`ctx`"), "{err}");
    assert!(!path.exists());
}

#[test]
fn half_precision_runs_close_to_fp32() {
    let f32_clip = hf_clip();
    let names: Vec<String> = ["dog", "cat", "paper crane"].map(String::from).to_vec();
    let (_, data) = colour_dataset(1, 8);
    let feats32 = promptclip_core::features::encode_all(&f32_clip, &data.sources, "image").unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let clip = Clip::load_with_dtype(&fixtures().join("tiny-clip-hf"), &dev(), dtype).unwrap();
        let feats = promptclip_core::features::encode_all(&clip, &data.sources, "image").unwrap();
        assert_eq!(feats.dtype(), dtype);
        let err = rel_err(&feats, &feats32);
        assert!(err < 0.05, "{dtype:?} image features rel err {err}");
        // A training step runs and the context (kept in f32) receives a gradient.
        let l = CoopContext::new(
            &clip,
            &names,
            CoopConfig {
                n_ctx: Some(2),
                ..CoopConfig::default()
            },
        )
        .unwrap();
        let labels = Tensor::new(&[0u32, 1, 2, 0], &dev()).unwrap();
        let logits = Learner::logits(&l, &clip, &feats).unwrap();
        let loss = promptclip_core::loss::cross_entropy(&logits, &labels).unwrap();
        let g = loss
            .backward()
            .unwrap()
            .get(l.ctx.as_tensor())
            .cloned()
            .expect("gradient in half precision");
        assert_eq!(g.dtype(), DType::F32);
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
}
