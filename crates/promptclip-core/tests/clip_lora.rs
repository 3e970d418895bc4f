//! CLIP-LoRA against the official code (scripts/make_clip_lora_fixture.py runs the official
//! loralib layers on the tiny OpenAI CLIP): factors imported under the official names give the
//! official loss, logits and gradients on a batch, 20 AdamW steps on the official cosine end at the
//! official factors, and the merged model's predictions equal the official eval-mode logits. In
//! f64 the factors' gradients equal central finite differences (with dropout masks held fixed); a
//! batch run in chunks equals one pass; and through the registry a learner trains for its steps,
//! saves only its factors, loads onto the same CLIP and refuses another's by name.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::{colours, dev, fixtures, pixel_batch, rel_err};
use promptclip_core::methods::clip_lora::ClipLoraLearner;
use promptclip_core::methods::official::{self, ImportRequest};
use promptclip_core::methods::{self, io, Batch, FrozenTower, Learner, Runtime};
use promptclip_core::train::optim::{AdamW, AdamWConfig};
use promptclip_core::train::schedule::{LrSchedule, ScheduleKind};
use promptclip_core::train::{fit, TrainOptions};
use promptclip_core::Clip;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

fn openai_clip(dtype: DType) -> Clip {
    Clip::load_with_dtype(
        &fixtures().join("tiny-clip-openai.safetensors"),
        &dev(),
        dtype,
    )
    .unwrap()
}

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(&fixtures().join("clip_lora/lora.safetensors"), &dev())
        .unwrap()
}

/// `name` in a folder of this test process and test (`test`), which the test removes.
fn temp(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "promptclip-clip-lora-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The fixture's tensors with `prefix` (`init.`, `final.`), under their official names.
fn factors(t: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    t.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|n| (n.to_string(), v.to_device(&Device::Cpu).unwrap()))
        })
        .collect()
}

fn cross_entropy64(logits: &Tensor, labels: &[u32]) -> f64 {
    let l: Vec<Vec<f64>> = logits.to_dtype(DType::F64).unwrap().to_vec2().unwrap();
    l.iter()
        .zip(labels)
        .map(|(row, &y)| {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            lse - row[y as usize]
        })
        .sum::<f64>()
        / labels.len() as f64
}

#[test]
fn official_factors_give_the_official_loss_gradients_twenty_adamw_steps_and_merged_logits() {
    let clip = openai_clip(DType::F32);
    let (t, md) = fixture();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let matrices: Vec<String> = serde_json::from_str(&md["params"]).unwrap();
    // The official factors under their own names, imported: the options come from their names
    // and shapes (rank 2, q k v o, both towers, blocks 0 and 1); dropout is the fixture's 0.
    let path = temp("official", "init.safetensors");
    candle_core::safetensors::save(&factors(&t, "init."), &path).unwrap();
    let l = official::import(
        &clip,
        &path,
        ImportRequest {
            method: None,
            class_names: Some(&names),
            options: serde_json::json!({ "dropout": 0.0, "template": md["template"] }),
            runtime: Runtime::default(),
        },
    )
    .unwrap();
    let meta = l.meta();
    assert_eq!(meta.method, "clip-lora");
    assert_eq!(meta.options["rank"], 2);
    assert_eq!(meta.options["matrices"], serde_json::json!(matrices));
    assert_eq!(meta.options["encoder"], "both");
    let theirs = |ours: &str| methods::clip_lora::OFFICIAL.theirs(ours).unwrap();

    // Training can start from the official file (initFrom), in the data's own order: a learner of
    // other classes (the factors belong to no class) starts at the official factors.
    let (colour_names, data) = colours(2, 4, 0..4);
    let started = methods::create(
        &clip,
        "clip-lora",
        &colour_names,
        serde_json::json!({ "matrices": matrices }),
        Runtime::default(),
    )
    .unwrap();
    let recipe = methods::recipe_of(started.as_ref(), Default::default()).unwrap();
    let config = TrainOptions {
        steps: Some(1),
        lr: Some(1e-12),
        min_lr: Some(0.0),
        shuffle: Some(false),
        init_from: Some(path.clone()),
        ..TrainOptions::default()
    }
    .resolve(&recipe)
    .unwrap();
    fit(
        &clip,
        started.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    for (name, v) in started.vars() {
        let e = rel_err(v.as_tensor(), &t[&format!("init.{}", theirs(&name))]);
        assert!(e < 1e-6, "{name} from initFrom: {e}");
    }

    let b: usize = md["batch"].parse().unwrap();
    let (first, labels) = pixel_batch(&clip, &t, 0, b);
    let out = l.batch_loss_and_grads(&clip, &first, &labels, 1.0).unwrap();
    let loss = t["loss"].to_scalar::<f32>().unwrap();
    println!("loss {} vs official {loss}", out.loss);
    assert!(((out.loss - loss) / loss).abs() < 1e-5);
    let e = rel_err(&out.logits, &t["logits"]);
    assert!(e < 1e-5, "logits: {e}");
    let mut worst = 0f32;
    for ((name, _), g) in l.vars().iter().zip(&out.grads) {
        let e = rel_err(g, &t[&format!("grad.{}", theirs(name))]);
        worst = worst.max(e);
        assert!(e < 1e-4, "{name} gradient: {e}");
    }
    println!(
        "worst factor gradient rel_err {worst:.1e} over {}",
        out.grads.len()
    );

    // 20 AdamW steps on the official cosine (T_max 20, to 1e-6), batches in turn.
    let lrs: Vec<f32> = t["lrs"].to_vec1().unwrap();
    let schedule = LrSchedule {
        kind: ScheduleKind::Cosine,
        base_lr: md["lr"].parse().unwrap(),
        max_epochs: 1,
        warmup_epochs: 0,
        warmup_lr: 0.0,
        per_step: true,
        total_steps: Some(lrs.len()),
        min_lr: md["eta_min"].parse().unwrap(),
    };
    let mut opt = AdamW::new(
        AdamWConfig {
            lr: schedule.base_lr,
            weight_decay: md["weight_decay"].parse().unwrap(),
            ..AdamWConfig::default()
        },
        out.grads.len(),
    );
    let vars: Vec<Var> = l.vars().into_iter().map(|(_, v)| v).collect();
    let step_losses: Vec<f32> = t["step_losses"].to_vec1().unwrap();
    let batches = t["pixels"].dim(0).unwrap() / b;
    for (step, expected) in step_losses.iter().enumerate() {
        let lr = schedule.lr_at(0, step, lrs.len());
        assert!(
            ((lr as f32 - lrs[step]) / lrs[step]).abs() < 1e-6,
            "lr {step}"
        );
        let (x, y) = pixel_batch(&clip, &t, step % batches, b);
        let out = l.batch_loss_and_grads(&clip, &x, &y, 1.0).unwrap();
        assert!(
            ((out.loss - expected) / expected).abs() < 1e-4,
            "step {step}: {} vs {expected}",
            out.loss
        );
        opt.step(&vars, &out.grads, lr).unwrap();
    }
    let mut worst = 0f32;
    for (name, v) in l.vars() {
        let e = rel_err(v.as_tensor(), &t[&format!("final.{}", theirs(&name))]);
        worst = worst.max(e);
        assert!(e < 1e-4, "final {name}: {e}");
    }
    println!("worst final factor rel_err {worst:.1e}");

    // Predictions fold B A into the weights: the official eval-mode (merged) logits.
    let merged = l.scorer(&clip, None).unwrap().batch_logits(&first).unwrap();
    let e = rel_err(&merged, &t["final_logits"]);
    println!("merged logits vs official eval mode: rel_err {e:.1e}");
    assert!(e < 1e-5, "merged logits: {e}");
    // ... and the model itself is untouched: the frozen features are as before.
    let frozen = clip.encode_image(first.pixels().unwrap()).unwrap();
    let again = openai_clip(DType::F32)
        .encode_image(first.pixels().unwrap())
        .unwrap();
    assert_eq!(rel_err(&frozen, &again), 0.0);

    // Exported under the official names, the factors are the trained ones.
    let out_path = temp("official", "exported.safetensors");
    official::export(&out_path, l.as_ref()).unwrap();
    let (exported, _) = promptclip_core::files::read_safetensors(&out_path, &dev()).unwrap();
    assert_eq!(exported.len(), l.vars().len());
    for (name, v) in l.vars() {
        assert_eq!(rel_err(&exported[&theirs(&name)], v.as_tensor()), 0.0);
    }
    std::fs::remove_dir_all(out_path.parent().unwrap()).ok();
}

/// N(0, std) values of `shape` (f64) from `seed`: every run of a test draws the same.
fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = promptclip_core::rng::Rng::new(seed)
        .normal_vec(n, std)
        .into_iter()
        .map(f64::from)
        .collect();
    Tensor::from_vec(v, shape, &dev()).unwrap()
}

/// A learner on `clip` with B drawn at random (so that both factors' gradients are non-zero).
fn random_learner(clip: &Clip, options: serde_json::Value) -> methods::BoxedLearner {
    let names: Vec<String> = ["red", "green", "blue"].map(String::from).to_vec();
    let l = methods::create(clip, "clip-lora", &names, options, Runtime::default()).unwrap();
    for (i, (name, v)) in l.vars().into_iter().enumerate() {
        if name.ends_with(".B") {
            let r = randn(v.dims(), 0.3, 100 + i as u64)
                .to_dtype(v.dtype())
                .unwrap();
            v.set(&r).unwrap();
        }
    }
    l
}

fn pixels(clip: &Clip, b: usize) -> Tensor {
    let s = clip.config.vision_config.image_size;
    randn(&[b, 3, s, s], 1.0, 7).to_dtype(clip.dtype).unwrap()
}

#[test]
fn factor_gradients_equal_central_finite_differences_in_f64_with_dropout_masks_held() {
    let clip = openai_clip(DType::F64);
    for options in [
        serde_json::json!({ "matrices": ["q", "k", "v", "o"], "dropout": 0.25 }),
        serde_json::json!({ "dropout": 0.0, "layers": [1] }),
        serde_json::json!({ "encoder": "vision", "matrices": ["v", "o"] }),
        serde_json::json!({ "encoder": "text" }),
    ] {
        let l = random_learner(&clip, options.clone());
        let x = pixels(&clip, 3);
        let labels = [0u32, 2, 1];
        let y = Tensor::new(&labels, &dev()).unwrap();
        // The same step seed draws the same dropout masks every time.
        let batch = || {
            Batch::of_pixels(x.clone(), FrozenTower::Clip(&clip), 3)
                .unwrap()
                .with_step_seed(11)
        };
        let out = l.batch_loss_and_grads(&clip, &batch(), &y, 1.0).unwrap();
        let vars = l.vars();
        let dirs: Vec<Tensor> = vars
            .iter()
            .enumerate()
            .map(|(i, (_, v))| randn(v.dims(), 1.0, 1000 + i as u64))
            .collect();
        let at: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        let loss_at = |h: f64| {
            for (((_, v), p), d) in vars.iter().zip(&at).zip(&dirs) {
                v.set(&(p + (d * h).unwrap()).unwrap()).unwrap();
            }
            let o = l.batch_loss_and_grads(&clip, &batch(), &y, 1.0).unwrap();
            cross_entropy64(&o.logits, &labels)
        };
        // Central differences of fourth order (Richardson): truncation O(h^4), so that the
        // check holds at any curvature the random point has.
        let h = 1e-4;
        let fd = (8.0 * (loss_at(h) - loss_at(-h)) - (loss_at(2.0 * h) - loss_at(-2.0 * h)))
            / (12.0 * h);
        for ((_, v), p) in vars.iter().zip(&at) {
            v.set(p).unwrap();
        }
        let terms: Vec<f64> = out
            .grads
            .iter()
            .zip(&dirs)
            .map(|(g, d)| {
                (g * d)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .collect();
        let analytic: f64 = terms.iter().sum();
        // Relative to the terms' scale, not their sum, which may cancel.
        let scale: f64 = terms.iter().map(|t| t.abs()).sum();
        let e = (fd - analytic).abs() / scale;
        println!("{options}: directional derivative {analytic:.6e}, fd {fd:.6e} ({e:.1e})");
        assert!(
            e < 1e-8,
            "{options}: analytic {analytic}, fd {fd} ({e:.1e})"
        );
        // Every factor gets a gradient (B random: A's too).
        for ((name, _), g) in vars.iter().zip(&out.grads) {
            let n = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(n > 0.0, "{options}: {name} got no gradient");
        }
    }
}

#[test]
fn a_batch_in_chunks_equals_one_pass_and_dropout_differs_by_step() {
    let clip = openai_clip(DType::F64);
    let options = serde_json::json!({ "matrices": ["q", "v", "o"], "dropout": 0.25 });
    let whole = random_learner(&clip, options.clone());
    let names: Vec<String> = ["red", "green", "blue"].map(String::from).to_vec();
    let (tensors, meta) = (
        whole
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect::<HashMap<_, _>>(),
        whole.meta(),
    );
    let mut chunked = ClipLoraLearner::from_tensors(
        &clip,
        &names,
        serde_json::from_value(meta.options.clone()).unwrap(),
        &tensors,
    )
    .unwrap();
    // A budget of one image's tape: ten images run in ten chunks.
    chunked.image_budget = 1;
    let x = pixels(&clip, 10);
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2, 0], &dev()).unwrap();
    let batch = |seed| {
        Batch::of_pixels(x.clone(), FrozenTower::Clip(&clip), 10)
            .unwrap()
            .with_step_seed(seed)
    };
    let a = whole
        .batch_loss_and_grads(&clip, &batch(5), &y, 1.0)
        .unwrap();
    let c = chunked
        .batch_loss_and_grads(&clip, &batch(5), &y, 1.0)
        .unwrap();
    assert!(((a.loss - c.loss) / a.loss).abs() < 1e-6);
    assert!(rel_err(&a.logits, &c.logits) < 1e-12);
    for (g, h) in a.grads.iter().zip(&c.grads) {
        assert!(rel_err(g, h) < 1e-10, "chunked gradient: {}", rel_err(g, h));
        // Formed by the tapes, not by autograd: no graph keeps a chunk's forward alive.
        assert!(!g.track_op() && !h.track_op());
    }
    // Another step draws other masks.
    let other = whole
        .batch_loss_and_grads(&clip, &batch(6), &y, 1.0)
        .unwrap();
    assert!(rel_err(&other.logits, &a.logits) > 1e-6);
}

#[test]
fn through_the_registry_it_trains_its_steps_saves_only_factors_and_refuses_another_model() {
    let clip = openai_clip(DType::F32);
    let (names, data) = colours(6, 6, 0..4);
    let l = methods::create(
        &clip,
        "clip-lora",
        &names,
        serde_json::json!({ "seed": 3 }),
        Runtime::default(),
    )
    .unwrap();
    // q, k and v of both blocks of both towers: A (2, width), B (width, 2).
    let (dt, dv) = (
        clip.text.hidden_size(),
        clip.config.vision_config.hidden_size,
    );
    let params = l.meta().params;
    assert_eq!(params.len(), 2 * 2 * 3 * 2);
    assert_eq!(params[0], ("text.0.q.A".to_string(), vec![2, dt]));
    assert_eq!(params[1], ("text.0.q.B".to_string(), vec![dt, 2]));
    assert!(params.contains(&("vision.1.v.B".to_string(), vec![dv, 2])));
    // B starts at zero: the learner is the frozen CLIP with the template's prompts.
    let frozen = promptclip_core::zeroshot::class_embeddings(
        &clip,
        &names,
        &["a photo of a {}.".to_string()],
    )
    .unwrap();
    let p0 = methods::predict(&clip, l.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    let f = promptclip_core::features::encode_all(&clip, &data.sources, "image").unwrap();
    let zs = promptclip_core::zeroshot::probabilities(&clip, &f, &frozen).unwrap();
    // (the learner's logit scale is the official fixed 100, the model's its own: compare argmax)
    let zs_top: Vec<u32> = zs.argmax(1).unwrap().to_vec1().unwrap();
    let top: Vec<u32> = Tensor::from_vec(p0.probs.clone(), (data.sources.len(), 4), &dev())
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(top, zs_top);

    // The recipe counts steps: 500 x shots; asked for 7 steps of batches of 4 of 24 images, the
    // run takes two epochs, the second cut after one step.
    let recipe = methods::recipe_of(l.as_ref(), Default::default()).unwrap();
    assert_eq!(recipe.steps_per_shot, Some(500));
    let resolved = TrainOptions::default().resolve(&recipe).unwrap();
    assert_eq!(resolved.with_steps_for(24, 4).steps, Some(3000));
    let config = TrainOptions {
        steps: Some(7),
        batch_size: Some(4),
        lr: Some(0.01),
        ..TrainOptions::default()
    }
    .resolve(&recipe)
    .unwrap();
    let mut steps = 0;
    let summary = fit(
        &clip,
        l.as_ref(),
        &data,
        &config,
        &mut |_| steps += 1,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(steps, 7);
    assert_eq!(summary.epochs, 2);
    let moved = l.vars()[1]
        .1
        .as_tensor()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(moved > 0.0, "B trained");

    let path = temp("registry", "learner.safetensors");
    io::save(&path, l.as_ref(), &clip).unwrap();
    // Only the factors and the description: far below the model.
    let size = std::fs::metadata(&path).unwrap().len();
    let factor_bytes: usize = params
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * 4)
        .sum();
    assert!(size < factor_bytes as u64 + 16_384, "{size} bytes");
    let (back, _) = io::load(&path, &clip, Runtime::default()).unwrap();
    let a = methods::predict(&clip, l.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    let b = methods::predict(&clip, back.as_ref(), &data.sources, None, 8, &mut |_, _| {}).unwrap();
    assert_eq!(a.probs, b.probs);
    // Any class list: the text tower is adapted, not a classifier.
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
    assert_eq!(p.probs.len(), 2 * data.sources.len());

    // On another CLIP (the transformers tiny model: other widths) the file is refused, naming the
    // model it was learned on; factors given to that CLIP directly are refused by name.
    let other = Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap();
    let err = match io::load(&path, &other, Runtime::default()) {
        Ok(_) => panic!("loaded onto another model"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("learned on a CLIP with text width 64"),
        "{err}"
    );
    let tensors: HashMap<String, Tensor> = l
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let config = serde_json::from_value(l.meta().options).unwrap();
    let err = ClipLoraLearner::from_tensors(&other, &names, config, &tensors)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`text.0.q.A` has shape [2, 64]"), "{err}");
    assert!(err.contains("another model"), "{err}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();

    for (options, expected) in [
        (
            serde_json::json!({ "matrices": ["q", "x"] }),
            "`x` is not a projection",
        ),
        (
            serde_json::json!({ "layers": [2] }),
            "block 2 does not exist",
        ),
        (
            serde_json::json!({ "dropout": 1.0 }),
            "dropout must be at least 0 and below 1",
        ),
        (serde_json::json!({ "rank": 0 }), "rank must be at least 1"),
        (
            serde_json::json!({ "template": "a photo" }),
            "must contain `{}`",
        ),
    ] {
        let err = methods::create(&clip, "clip-lora", &names, options, Runtime::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_run_in_steps_cancelled_mid_epoch_resumes_to_the_uninterrupted_result() {
    let clip = openai_clip(DType::F32);
    let (names, data) = colours(5, 8, 0..4);
    let recipe = methods::recipe_of(
        methods::create(
            &clip,
            "clip-lora",
            &names,
            serde_json::json!({}),
            Runtime::default(),
        )
        .unwrap()
        .as_ref(),
        Default::default(),
    )
    .unwrap();
    let checkpoint = temp("resume", "run.ckpt");
    let options = |resume: bool| TrainOptions {
        steps: Some(8),
        batch_size: Some(6),
        lr: Some(0.01),
        checkpoint_path: Some(checkpoint.clone()),
        resume_from: resume.then(|| checkpoint.clone()),
        ..TrainOptions::default()
    };
    let fresh = || {
        methods::create(
            &clip,
            "clip-lora",
            &names,
            serde_json::json!({}),
            Runtime::default(),
        )
        .unwrap()
    };
    let whole = fresh();
    let config = options(false).resolve(&recipe).unwrap();
    fit(
        &clip,
        whole.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();

    // 20 images in batches of 6: 3 steps an epoch; cancelled after step 5 (the second epoch's
    // second), resumed there with the same dropout masks and batches.
    let part = fresh();
    let cancel = AtomicBool::new(false);
    let err = fit(
        &clip,
        part.as_ref(),
        &data,
        &config,
        &mut |p| {
            if p.global_step == 5 {
                cancel.store(true, Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(
        matches!(err, promptclip_core::Error::Cancelled { .. }),
        "{err}"
    );
    let resumed = fresh();
    let config = options(true).resolve(&recipe).unwrap();
    let mut steps = 0;
    let summary = fit(
        &clip,
        resumed.as_ref(),
        &data,
        &config,
        &mut |_| steps += 1,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((steps, summary.epochs, summary.global_step), (3, 3, 8));
    for ((name, a), (_, b)) in whole.vars().iter().zip(resumed.vars().iter()) {
        assert_eq!(rel_err(a.as_tensor(), b.as_tensor()), 0.0, "{name}");
    }
    // Other steps are another run: refused by name.
    let other = TrainOptions {
        steps: Some(9),
        ..options(true)
    }
    .resolve(&recipe)
    .unwrap();
    let err = fit(
        &clip,
        fresh().as_ref(),
        &data,
        &other,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("steps was 8, this run has 9"), "{err}");
    std::fs::remove_dir_all(checkpoint.parent().unwrap()).ok();
}
