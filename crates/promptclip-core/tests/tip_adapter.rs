//! Tip-Adapter and Tip-Adapter-F against PyTorch (scripts/make_adapter_fixtures.py,
//! `tip_adapter.safetensors` and `tip_adapter_f.safetensors`: re-implementations of the official
//! utils.py and main.py on the tiny transformers CLIP): the templates' classifier, the cache from
//! augmented passes, the logits, the alpha / beta search on validation (grid, order, first best),
//! and Tip-Adapter-F's four AdamW steps under the per-batch cosine (losses, gradients, weights)
//! followed by the search with the trained keys. The fixture's features reach the learners
//! through the same `FitData` seam the trainer gives them. Then the learners through the
//! registry and the trainer: saved, loaded, own classes only, resumed bit for bit.
mod common;
use candle_core::{DType, Tensor};
use common::{colours, dev, fixtures, rel_err};
use promptclip_core::methods::tip_adapter;
use promptclip_core::methods::{self, io, FitData, Learner, Runtime};
use promptclip_core::train::optim::{AdamW, AdamWConfig};
use promptclip_core::train::schedule::{LrSchedule, ScheduleKind};
use promptclip_core::train::{fit_with_validation, TrainOptions};
use promptclip_core::{Clip, Result};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

type Fixture = (HashMap<String, Tensor>, HashMap<String, String>);

fn fixture(name: &str) -> Fixture {
    promptclip_core::files::read_safetensors(
        &fixtures().join(format!("adapters/{name}.safetensors")),
        &dev(),
    )
    .unwrap()
}

fn usizes(t: &Tensor) -> Vec<usize> {
    t.to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The fixture's data as a learner's preparation sees it from the trainer: its augmented passes
/// are the fixture's (P, N, E) features.
struct FixtureData {
    labels: Vec<usize>,
    augmented: Tensor,
    validation: Option<(Tensor, Vec<usize>)>,
    /// The passes asked for.
    asked: Option<(usize, (f64, f64))>,
}

impl FitData for FixtureData {
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn features(&mut self) -> Result<Tensor> {
        Ok(self.augmented.get(0)?)
    }
    fn augmented_features(&mut self, passes: usize, crop_scale: (f64, f64)) -> Result<Tensor> {
        self.asked = Some((passes, crop_scale));
        Ok(self.augmented.clone())
    }
    fn validation(&mut self) -> Result<Option<(Tensor, Vec<usize>)>> {
        Ok(self.validation.clone())
    }
    fn check_cancelled(&self) -> Result<()> {
        Ok(())
    }
}

fn data(tip: &Fixture) -> FixtureData {
    let (t, _) = tip;
    FixtureData {
        labels: usizes(&t["train_labels"]),
        augmented: t["aug_features"].clone(),
        validation: Some((t["val_features"].clone(), usizes(&t["val_labels"]))),
        asked: None,
    }
}

/// The fixture's options: its templates, passes and grid.
fn options(md: &HashMap<String, String>) -> serde_json::Value {
    let scale: Vec<f64> = serde_json::from_str(&md["search_scale"]).unwrap();
    let step: Vec<usize> = serde_json::from_str(&md["search_step"]).unwrap();
    let templates: Vec<String> = serde_json::from_str(&md["templates"]).unwrap();
    json!({
        "templates": templates,
        "augmentPasses": md["augment_passes"].parse::<usize>().unwrap(),
        "betaScale": scale[0], "alphaScale": scale[1],
        "betaSteps": step[0], "alphaSteps": step[1],
    })
}

fn names(md: &HashMap<String, String>) -> Vec<String> {
    serde_json::from_str(&md["class_names"]).unwrap()
}

// Measured on CPU (AMD EPYC, 2026-12-04), as `rel_err` (largest difference over the largest
// value): classifier 1.5e-7, zero-shot logits 1.5e-7, cache keys 1.7e-7, Tip-Adapter logits
// 1.5e-7 (alpha = beta = 1) and 1.1e-7 (best); Tip-Adapter-F losses up to 4.2e-6 (relative), the
// step-1 gradient 1.5e-6, the keys after each of the four AdamW steps 1.7e-7, its logits at the
// best point 1.1e-7. The search's accuracies are equal at every grid point (every prediction in
// it has a top-1 margin of 1e-2 or more). 1e-5 leaves the GPU's fp32 room.
const TOL: f32 = 1e-5;

#[test]
fn the_cache_logits_and_search_equal_pytorch() {
    let clip = hf_clip();
    let tip = fixture("tip_adapter");
    let (t, md) = &tip;
    let names = names(md);
    let learner = methods::create(
        &clip,
        "tip-adapter",
        &names,
        options(md),
        Runtime::default(),
    )
    .unwrap();
    // The templates' classifier: each normalised, averaged, normalised again.
    let templates: Vec<String> = serde_json::from_str(&md["templates"]).unwrap();
    let text = tip_adapter::classifier(&clip, &names, &templates).unwrap();
    let e = rel_err(&text, &t["text_weights"]);
    assert!(e < TOL, "classifier: {e}");
    // Before a fit there is no cache: zero-shot CLIP with the fixed 100.
    let test = &t["test_features"];
    let e = rel_err(
        &learner.logits(&clip, test).unwrap(),
        &t["clip_logits_test"],
    );
    assert!(e < TOL, "zero-shot logits: {e}");

    let mut d = data(&tip);
    let report = learner.prepare(&clip, &mut d).unwrap().unwrap();
    assert_eq!(d.asked, Some((3, tip_adapter::CACHE_CROP_SCALE)));
    let state: HashMap<String, Tensor> = learner.state().into_iter().collect();
    let e = rel_err(&state["cacheKeys"], &t["cache_keys"]);
    assert!(e < TOL, "cache keys: {e}");
    assert_eq!(rel_err(&state["cacheValues"], &t["cache_values"]), 0.0);

    // The search: the same accuracy at every grid point, the same (first) best.
    let (betas, alphas) = (tip_adapter::grid(7.0, 20), tip_adapter::grid(3.0, 10));
    let want_betas: Vec<f64> = serde_json::from_str(&md["search_betas"]).unwrap();
    let want_alphas: Vec<f64> = serde_json::from_str(&md["search_alphas"]).unwrap();
    // (serde_json's float parsing may miss the last bit: compared to 1e-12.)
    for (got, want) in [(&betas, &want_betas), (&alphas, &want_alphas)] {
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12),
            "{got:?}"
        );
    }
    let cache = tip_adapter::Cache {
        keys: candle_core::Var::from_tensor(&state["cacheKeys"]).unwrap(),
        values: state["cacheValues"].clone(),
        alpha: 1.0,
        beta: 1.0,
    };
    let val = tip_adapter::normalized(&t["val_features"]).unwrap();
    let s = tip_adapter::search(
        &val,
        &usizes(&t["val_labels"]),
        &text,
        cache.keys.as_tensor(),
        &cache.values,
        &betas,
        &alphas,
    )
    .unwrap();
    let grid: Vec<Vec<f32>> = t["search_accuracy"].to_vec2().unwrap();
    for (i, (row, want)) in s.grid.iter().zip(&grid).enumerate() {
        for (j, (a, w)) in row.iter().zip(want).enumerate() {
            assert!(
                (*a as f32 - w).abs() < 1e-4,
                "beta {i}, alpha {j}: {a} vs {w}"
            );
        }
    }
    let (best_beta, best_alpha): (f64, f64) = (
        md["best_beta"].parse().unwrap(),
        md["best_alpha"].parse().unwrap(),
    );
    assert_eq!((s.beta, s.alpha), (best_beta, best_alpha));
    assert!((s.accuracy - scalar(&t["best_val_accuracy"])).abs() < 1e-4);
    // The learner chose the same, and says so.
    assert_eq!(report.details["beta"], json!(best_beta));
    assert_eq!(report.details["alpha"], json!(best_alpha));
    assert_eq!(report.details["cacheSize"], 12);

    // The logits at the initial alpha = beta = 1 and at the best point.
    let at_init = tip_adapter::tip_logits(
        &tip_adapter::normalized(test).unwrap(),
        &text,
        &cache,
        cache.keys.as_tensor(),
    )
    .unwrap();
    let e = rel_err(&at_init, &t["tip_logits_test"]);
    assert!(e < TOL, "Tip-Adapter logits at alpha = beta = 1: {e}");
    let e = rel_err(
        &learner.logits(&clip, test).unwrap(),
        &t["tip_logits_test_best"],
    );
    assert!(
        e < TOL,
        "Tip-Adapter logits at the best alpha and beta: {e}"
    );
}

#[test]
fn tip_adapter_f_trains_its_keys_as_the_official_adamw_loop() {
    let clip = hf_clip();
    let tip = fixture("tip_adapter");
    let (f, fmd) = fixture("tip_adapter_f");
    let names = names(&tip.1);
    let learner = methods::create(
        &clip,
        "tip-adapter-f",
        &names,
        options(&tip.1),
        Runtime::default(),
    )
    .unwrap();
    let mut d = data(&tip);
    learner.prepare(&clip, &mut d).unwrap();
    let vars = learner.vars();
    assert_eq!(vars.len(), 1, "the cache keys are what trains");
    let e = rel_err(vars[0].1.as_tensor(), &f["adapter_weight_init"]);
    assert!(e < TOL, "initial keys: {e}");

    // Four steps: 2 epochs of 2 batches of 6, lr by the per-batch cosine (T_max = 4).
    let recipe = methods::spec("tip-adapter-f").unwrap();
    let config = TrainOptions {
        epochs: Some(2),
        batch_size: Some(6),
        ..TrainOptions::default()
    }
    .resolve(&(recipe.recipe)(Default::default()))
    .unwrap();
    assert_eq!(
        (
            config.adamw.lr,
            config.adamw.eps,
            config.adamw.weight_decay,
            config.adamw.betas
        ),
        (0.001, 1e-4, 0.01, (0.9, 0.999))
    );
    let schedule: LrSchedule = config.lr_schedule();
    assert!(schedule.per_step && schedule.kind == ScheduleKind::Cosine);
    assert_eq!(schedule.warmup_epochs, 0);
    let mut adamw = AdamW::new(AdamWConfig { ..config.adamw }, 1);
    let want_lrs: Vec<f64> = serde_json::from_str(&fmd["lrs"]).unwrap();
    let losses: Vec<f32> = f["step_losses"].to_vec1().unwrap();
    let batches = &f["train_batches"];
    let batch_labels = &f["train_batch_labels"];
    for step in 0..4 {
        let lr = schedule.lr_at(step / 2, step % 2, 2);
        assert!(
            (lr - want_lrs[step]).abs() <= 1e-12 * want_lrs[step],
            "lr {step}"
        );
        let x = batches.get(step).unwrap();
        let y = batch_labels
            .get(step)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap();
        let out = learner.loss_and_grads(&clip, &x, &y).unwrap();
        assert!(
            (out.loss - losses[step]).abs() / losses[step] < TOL,
            "loss {step}: {} vs {}",
            out.loss,
            losses[step]
        );
        if step == 0 {
            let e = rel_err(&out.grads[0], &f["grad_step1"]);
            assert!(e < TOL, "gradient at step 1: {e}");
        }
        let params: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
        adamw.step(&params, &out.grads, lr).unwrap();
        let want = f["adapter_weight_steps"].get(step).unwrap();
        let e = rel_err(vars[0].1.as_tensor(), &want);
        assert!(e < TOL, "keys after step {}: {e}", step + 1);
    }
    // Then the search on validation with the trained keys (not on test data).
    let report = learner.finish(&clip, &mut d).unwrap().unwrap();
    let (best_beta, best_alpha): (f64, f64) = (
        fmd["best_beta"].parse().unwrap(),
        fmd["best_alpha"].parse().unwrap(),
    );
    assert_eq!(report.details["beta"], json!(best_beta));
    assert_eq!(report.details["alpha"], json!(best_alpha));
    let e = rel_err(
        &learner.logits(&clip, &f["test_features"]).unwrap(),
        &f["tip_logits_test_best"],
    );
    assert!(e < TOL, "Tip-Adapter-F logits at the best point: {e}");
}

#[test]
fn without_validation_alpha_and_beta_must_be_given() {
    let clip = hf_clip();
    let tip = fixture("tip_adapter");
    let names = names(&tip.1);
    for method in ["tip-adapter", "tip-adapter-f"] {
        let l = methods::create(&clip, method, &names, json!({}), Runtime::default()).unwrap();
        let mut d = FixtureData {
            validation: None,
            ..data(&tip)
        };
        let err = l.prepare(&clip, &mut d).unwrap_err().to_string();
        assert!(
            err.contains("validation set") && err.contains("set both alpha and beta"),
            "{err}"
        );
        // Before any work: no augmented pass was asked for.
        assert_eq!(d.asked, None);
        // Both given: no search, those values.
        let l = methods::create(
            &clip,
            method,
            &names,
            json!({ "alpha": 2.0, "beta": 3.0 }),
            Runtime::default(),
        )
        .unwrap();
        let r = l.prepare(&clip, &mut d).unwrap().unwrap();
        let r = l.finish(&clip, &mut d).unwrap().unwrap_or(r);
        assert_eq!(
            (r.details["alpha"].clone(), r.details["beta"].clone()),
            (json!(2.0), json!(3.0))
        );
    }
}

#[test]
fn through_the_trainer_they_save_load_refuse_new_classes_and_resume_bit_for_bit() {
    let clip = hf_clip();
    let (names, train) = colours(4, 11, 0..3);
    let (_, val) = colours(2, 12, 0..3);
    let dir = std::env::temp_dir().join(format!("promptclip-tip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cancel = AtomicBool::new(false);
    let small = json!({ "augmentPasses": 2, "betaSteps": 8, "alphaSteps": 4 });
    let options = |extra: serde_json::Value| {
        let mut o = TrainOptions::from_json(extra).unwrap();
        o.seed = Some(5);
        o
    };

    // Tip-Adapter: one fit, no epochs; the cache is saved with the learner.
    let tip = methods::create(
        &clip,
        "tip-adapter",
        &names,
        small.clone(),
        Runtime::default(),
    )
    .unwrap();
    let recipe = methods::recipe_of(tip.as_ref(), Default::default()).unwrap();
    let config = options(json!({})).resolve(&recipe).unwrap();
    let s = fit_with_validation(
        &clip,
        tip.as_ref(),
        &train,
        Some(&val),
        &config,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    assert_eq!(s.epochs, 0);
    let details = s.details.unwrap();
    assert_eq!(details["cacheSize"], 12);
    assert!(details["validationAccuracy"].as_f64().unwrap() > 0.0);
    let path = dir.join("tip.safetensors");
    io::save(&path, tip.as_ref(), &clip).unwrap();
    let (back, meta) = io::load(&path, &clip, Runtime::default()).unwrap();
    assert_eq!(meta, tip.meta());
    assert_eq!(
        meta.params[0],
        ("cacheKeys".to_string(), vec![12, clip.embed_dim()])
    );
    let feats = Tensor::randn(0f32, 1.0, (3, clip.embed_dim()), &dev()).unwrap();
    let a = tip.scorer(&clip, None).unwrap().logits(&feats).unwrap();
    let b = back.scorer(&clip, None).unwrap().logits(&feats).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0);
    assert!(!back.scores_any_classes());
    let new: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
    let err = back.scorer(&clip, Some(&new)).err().unwrap().to_string();
    assert!(err.contains("its cache holds only"), "{err}");

    // Tip-Adapter-F: the cache, AdamW epochs on augmented crops, then the search. Cancelled after
    // step 3 and resumed, it ends where an uninterrupted run ends, bit for bit.
    let fresh = || {
        methods::create(
            &clip,
            "tip-adapter-f",
            &names,
            small.clone(),
            Runtime::default(),
        )
        .unwrap()
    };
    let recipe = methods::recipe_of(fresh().as_ref(), Default::default()).unwrap();
    let run = |learner: &dyn Learner, extra: serde_json::Value, stop_at: Option<usize>| {
        let config = options(extra).resolve(&recipe).unwrap();
        let flag = AtomicBool::new(false);
        let mut on_progress = |p: &promptclip_core::train::Progress| {
            if Some(p.global_step) == stop_at {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        fit_with_validation(
            &clip,
            learner,
            &train,
            Some(&val),
            &config,
            &mut on_progress,
            &flag,
        )
    };
    let whole = fresh();
    let s = run(whole.as_ref(), json!({ "epochs": 3, "batchSize": 4 }), None).unwrap();
    assert_eq!((s.epochs, s.global_step), (3, 9));
    assert!(s.details.as_ref().unwrap()["alpha"].is_number());
    let ck = dir.join("tipf.ckpt");
    let first = fresh();
    let with_ck = json!({ "epochs": 3, "batchSize": 4, "checkpointPath": ck });
    let err = run(first.as_ref(), with_ck.clone(), Some(4)).unwrap_err();
    assert!(
        matches!(err, promptclip_core::Error::Cancelled { .. }),
        "{err}"
    );
    let resumed = fresh();
    let again = json!({ "epochs": 3, "batchSize": 4, "resumeFrom": ck });
    let r = run(resumed.as_ref(), again, None).unwrap();
    assert_eq!((r.start_epoch, r.start_step), (1, 1));
    assert_eq!(r.epoch_loss, s.epoch_loss);
    let bits = |l: &dyn Learner| -> Vec<Vec<u32>> {
        l.vars()
            .into_iter()
            .map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .chain(l.state().into_iter().map(|(_, t)| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            }))
            .map(|v| v.into_iter().map(f32::to_bits).collect())
            .collect()
    };
    assert_eq!(bits(resumed.as_ref()), bits(whole.as_ref()));
    // AdamW has no momentum option.
    let err = options(json!({ "momentum": 0.5 }))
        .resolve(&recipe)
        .unwrap_err();
    assert!(err.to_string().contains("AdamW"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
