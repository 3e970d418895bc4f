//! CoCoOp against PyTorch (scripts/make_cocoop_fixture.py: the official per-image loop through
//! transformers' text model), the batched path against the per-image loop, chunking against no
//! chunking, the Meta-Net's initialisation, training on base classes and use on new ones.
mod common;
use candle_core::Tensor;
use common::{colours, dev, fixtures, rel_err};
use promptclip_core::methods::io::{load, save};
use promptclip_core::methods::{
    CocoopConfig, CocoopLearner, CoopConfig, CoopContext, Learner, MetaNet, Runtime, StepOutput,
};
use promptclip_core::train::optim::SgdConfig;
use promptclip_core::train::{fit, LabelledImages, TrainConfig};
use promptclip_core::Clip;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture(case: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(
        &fixtures().join(format!("cocoop/{case}.safetensors")),
        &dev(),
    )
    .unwrap()
}

fn learner_for(
    clip: &Clip,
    t: &HashMap<String, Tensor>,
    md: &HashMap<String, String>,
    budget: usize,
) -> CocoopLearner {
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = CocoopConfig {
        meta_net_ratio: md["ratio"].parse().unwrap(),
        ..CocoopConfig::default()
    };
    let mut l = CocoopLearner::new(clip, &names, config, Runtime::default()).unwrap();
    assert_eq!(
        l.meta.hidden().to_string(),
        md["hidden"],
        "Meta-Net hidden size"
    );
    // The budget in bytes, finer than `Runtime`'s MiB (one byte: one image per chunk).
    l.memory_budget_bytes = budget;
    assert_eq!(
        rel_err(l.context.ctx.as_tensor(), &t["ctx"]),
        0.0,
        "ctx from \"a photo of a\""
    );
    for (name, var) in l.meta.named() {
        var.set(&t[&name]).unwrap();
    }
    l
}

const NAMES: [&str; 5] = [
    "ctx",
    "meta.linear1.weight",
    "meta.linear1.bias",
    "meta.linear2.weight",
    "meta.linear2.bias",
];

#[test]
fn logits_loss_and_gradients_match_pytorch_for_one_and_several_images() {
    let clip = hf_clip();
    for case in ["batch1", "batch3"] {
        let (t, md) = fixture(case);
        let l = learner_for(&clip, &t, &md, 2 << 30);
        let labels = t["labels"].to_dtype(candle_core::DType::U32).unwrap();
        let StepOutput {
            loss,
            logits,
            grads,
        } = l
            .loss_and_grads(&clip, &t["image_features"], &labels)
            .unwrap();
        let e_logits = rel_err(&logits, &t["logits"]);
        let e_loss = (loss - t["loss"].to_scalar::<f32>().unwrap()).abs()
            / t["loss"].to_scalar::<f32>().unwrap().abs();
        assert!(
            e_logits < 1e-4 && e_loss < 1e-4,
            "{case}: logits {e_logits} loss {e_loss}"
        );
        for (name, g) in NAMES.iter().zip(&grads) {
            let e = rel_err(g, &t[&format!("grad.{name}")]);
            println!("{case}: grad {name} rel err {e:.1e}");
            assert!(e < 1e-3, "{case}: grad {name} rel err {e}");
        }
    }
}

#[test]
fn batched_equals_per_image_loop_and_chunking_changes_nothing() {
    let clip = hf_clip();
    let (t, md) = fixture("batch3");
    let labels = t["labels"].to_dtype(candle_core::DType::U32).unwrap();
    let big = learner_for(&clip, &t, &md, 2 << 30);
    let StepOutput {
        loss,
        logits,
        grads,
    } = big
        .loss_and_grads(&clip, &t["image_features"], &labels)
        .unwrap();
    // A budget that fits one image's K prompts at a time: three chunks, gradients accumulated.
    let small = learner_for(&clip, &t, &md, 1);
    assert_eq!(
        small.prompts_per_chunk(&clip, &small.context.buffers, true),
        3
    );
    let StepOutput {
        loss: loss_c,
        logits: logits_c,
        grads: grads_c,
    } = small
        .loss_and_grads(&clip, &t["image_features"], &labels)
        .unwrap();
    assert!((loss - loss_c).abs() < 1e-6 && rel_err(&logits_c, &logits) < 1e-6);
    // The official loop: one image at a time, loss averaged.
    let mut per_image: Vec<Tensor> = vec![];
    let mut loss_loop = 0f32;
    for i in 0..3 {
        let StepOutput {
            loss: l_i,
            grads: g_i,
            ..
        } = big
            .loss_and_grads(
                &clip,
                &t["image_features"].narrow(0, i, 1).unwrap(),
                &labels.narrow(0, i, 1).unwrap(),
            )
            .unwrap();
        loss_loop += l_i / 3.0;
        per_image = if per_image.is_empty() {
            g_i
        } else {
            per_image
                .iter()
                .zip(&g_i)
                .map(|(a, b)| (a + b).unwrap())
                .collect()
        };
    }
    assert!((loss - loss_loop).abs() < 1e-6);
    for ((g, gc), gl) in grads.iter().zip(&grads_c).zip(&per_image) {
        assert!(rel_err(gc, g) < 1e-5);
        assert!(rel_err(&(gl / 3.0).unwrap(), g) < 1e-5);
    }
    // Inference (no gradients) takes the same chunked path.
    assert!(
        rel_err(
            &small
                .logits_for(&clip, &t["image_features"], &small.context.buffers)
                .unwrap(),
            &logits
        ) < 1e-6
    );
}

#[test]
fn meta_net_is_initialised_like_pytorch_and_sized_like_the_paper() {
    // ViT-B/16: vis_dim 512 -> 32 -> ctx_dim 512, plus M = 4 context vectors: 35,360 parameters.
    let m = MetaNet::new(512, 512 / 16, 512, 7, &dev()).unwrap();
    let count: usize = m.named().iter().map(|(_, v)| v.elem_count()).sum::<usize>() + 4 * 512;
    assert_eq!(count, 35_360);
    let max = |v: &candle_core::Var| {
        v.as_tensor()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let b1 = 1.0 / 512f32.sqrt();
    let b2 = 1.0 / 32f32.sqrt();
    assert!(max(&m.linear1_weight) <= b1 && max(&m.linear1_weight) > 0.95 * b1);
    assert!(
        max(&m.linear1_bias) <= b1 && max(&m.linear2_weight) <= b2 && max(&m.linear2_bias) <= b2
    );
    let again = MetaNet::new(512, 32, 512, 7, &dev()).unwrap();
    assert_eq!(
        rel_err(
            again.linear2_weight.as_tensor(),
            m.linear2_weight.as_tensor()
        ),
        0.0
    );
}

#[test]
fn trains_on_base_classes_and_predicts_new_ones() {
    let clip = hf_clip();
    let (base_names, base_train) = colours(6, 1, 0..3);
    let (_, base_test) = colours(5, 50, 0..3);
    let (new_names, new_test) = colours(5, 60, 3..6);
    let acc = |logits: &Tensor, data: &LabelledImages| -> f64 {
        let p = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        100.0
            * p.iter()
                .zip(&data.labels)
                .filter(|(p, l)| **p as usize == **l)
                .count() as f64
            / data.labels.len() as f64
    };
    let feats = |d: &LabelledImages| {
        promptclip_core::features::encode_all(&clip, &d.sources, "test image").unwrap()
    };
    let (fb, fnw) = (feats(&base_test), feats(&new_test));
    let tpl = vec!["a photo of a {}.".to_string()];
    let zs = |names: &[String], f: &Tensor, d: &LabelledImages| {
        acc(
            &clip
                .logits(
                    f,
                    &promptclip_core::zeroshot::class_embeddings(&clip, names, &tpl).unwrap(),
                )
                .unwrap(),
            d,
        )
    };
    // Learning rates that suit each method on this tiny random CLIP (no claim about which wins).
    let config = |lr: f64| TrainConfig {
        epochs: 20,
        batch_size: 6,
        augment: false,
        sgd: SgdConfig {
            lr,
            ..SgdConfig::default()
        },
        seed: 2,
        ..TrainConfig::default()
    };

    let co = CocoopLearner::new(
        &clip,
        &base_names,
        CocoopConfig {
            meta_net_ratio: 4,
            ..CocoopConfig::default()
        },
        Runtime::default(),
    )
    .unwrap();
    let co_initial = flat(co.context.ctx.as_tensor());
    let s = fit(
        &clip,
        &co,
        &base_train,
        &config(0.1),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    // The comparison below means nothing if training left the context where it started.
    let moved = relative_change(&co_initial, &flat(co.context.ctx.as_tensor()));
    assert!(
        moved > 0.01,
        "CoCoOp's context moved by only {moved} of its norm"
    );
    let new_buffers = co.context.buffers_for(&clip, &new_names).unwrap();
    let co_new_logits = co.logits_for(&clip, &fnw, &new_buffers).unwrap();
    let (co_base, co_new) = (
        acc(
            &co.logits_for(&clip, &fb, &co.context.buffers).unwrap(),
            &base_test,
        ),
        acc(&co_new_logits, &new_test),
    );

    let coop = CoopContext::new(
        &clip,
        &base_names,
        CoopConfig {
            ctx_init: Some("a photo of a".into()),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let coop_initial = flat(coop.ctx.as_tensor());
    fit(
        &clip,
        &coop,
        &base_train,
        &config(0.01),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let moved = relative_change(&coop_initial, &flat(coop.ctx.as_tensor()));
    assert!(
        moved > 0.01,
        "CoOp's context moved by only {moved} of its norm"
    );
    let coop_new_b = coop.buffers_for(&clip, &new_names).unwrap();
    let (coop_base, coop_new) = (
        acc(&coop.logits(&clip, &fb, &coop.buffers).unwrap(), &base_test),
        acc(&coop.logits(&clip, &fnw, &coop_new_b).unwrap(), &new_test),
    );
    let (zs_base, zs_new) = (
        zs(&base_names, &fb, &base_test),
        zs(&new_names, &fnw, &new_test),
    );
    let h = |b: f64, n: f64| {
        if b + n == 0.0 {
            0.0
        } else {
            2.0 * b * n / (b + n)
        }
    };
    println!("base/new/H: zero-shot {zs_base:.1}/{zs_new:.1}/{:.1}  CoOp {coop_base:.1}/{coop_new:.1}/{:.1}  CoCoOp {co_base:.1}/{co_new:.1}/{:.1}", h(zs_base, zs_new), h(coop_base, coop_new), h(co_base, co_new));
    println!("CoCoOp epoch loss {:?}", s.epoch_loss);
    assert!(
        s.epoch_loss.last().unwrap() < &(0.2 * s.epoch_loss[1]),
        "CoCoOp loss did not fall: {:?}",
        s.epoch_loss
    );
    assert!(
        co_base >= zs_base + 50.0,
        "CoCoOp base accuracy {co_base} vs zero-shot {zs_base}"
    );
    // New classes go through the learner's scorer: the prompts are rebuilt for the new names
    // (the base names' prompts score the same images differently), and the result is exactly the
    // per-image path with the new buffers.
    let scored = co
        .scorer(&clip, Some(&new_names))
        .unwrap()
        .logits(&fnw)
        .unwrap();
    assert_eq!(scored.dims(), &[new_test.labels.len(), new_names.len()]);
    assert_eq!(
        rel_err(&scored, &co_new_logits),
        0.0,
        "scorer vs logits_for"
    );
    let with_base_names = co.logits_for(&clip, &fnw, &co.context.buffers).unwrap();
    let e = rel_err(&with_base_names, &scored);
    assert!(
        e > 1e-3,
        "new-class logits equal the base-class ones (rel diff {e})"
    );
    // New-class accuracy is over the 3 new classes: the metrics agree with the accuracy above,
    // and top-5 is capped at top-3, which every image hits.
    let m = promptclip_core::eval::metrics(
        &scored.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        new_names.len(),
        &new_test.labels,
        &promptclip_core::eval::EVAL_TOP_K,
    )
    .unwrap();
    assert_eq!((m.total, m.confusion.len()), (15, 3));
    assert!(
        (m.accuracy - co_new).abs() < 1e-9,
        "{} vs {co_new}",
        m.accuracy
    );
    assert_eq!(m.top_k, vec![(1, m.accuracy), (3, 100.0)]);
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

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn save_and_load_round_trip() {
    let clip = hf_clip();
    let names: Vec<String> = ["dog", "cat"].map(String::from).to_vec();
    let config = |seed: u64| CocoopConfig {
        context: CoopConfig {
            seed,
            ..CoopConfig::default()
        },
        meta_net_ratio: 4,
    };
    let co = CocoopLearner::new(&clip, &names, config(3), Runtime::default()).unwrap();
    // Trained-like parameters: not the initial ones, so that a load that re-initialised from the
    // seed would be caught.
    for (_, v) in co.vars() {
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    save(&path, &co, &clip).unwrap();
    let (loaded, meta) = load(
        &path,
        &clip,
        Runtime {
            memory_budget_mb: 3,
        },
    )
    .unwrap();
    assert_eq!(meta, co.meta());
    assert_eq!(loaded.meta(), co.meta());
    assert_eq!(meta.method, "cocoop");
    // The seed and the M that "a photo of a" resolved to are part of the saved options.
    assert_eq!(meta.options["seed"], 3);
    assert_eq!(meta.options["nCtx"], 4);
    assert_eq!(meta.options["ctxInit"], "a photo of a");
    assert_eq!(meta.options["metaNetRatio"], 4);
    let context = loaded
        .learned_context()
        .expect("CoCoOp has a learned context");
    assert_eq!(context.n_ctx(), 4);
    let names_loaded: Vec<String> = loaded.vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names_loaded, NAMES.map(String::from).to_vec());
    for ((name, a), (_, b)) in loaded.vars().iter().zip(co.vars().iter()) {
        assert_eq!(
            bits(a.as_tensor()),
            bits(b.as_tensor()),
            "{name} after load"
        );
    }
    // The budget is the caller's runtime setting, not the saver's (not saved with the learner).
    let shown = format!("{loaded:?}");
    assert!(
        shown.contains(&format!("memory_budget_bytes: {}", 3usize << 20)),
        "loaded learner's budget: {}",
        &shown[shown.find("memory_budget_bytes").unwrap_or(0)..]
    );
    // The seed determines the Meta-Net's initialisation.
    let again = CocoopLearner::new(&clip, &names, config(3), Runtime::default()).unwrap();
    let other = CocoopLearner::new(&clip, &names, config(4), Runtime::default()).unwrap();
    let fresh = CocoopLearner::new(&clip, &names, config(3), Runtime::default()).unwrap();
    for (((name, a), (_, b)), (_, c)) in again
        .meta
        .named()
        .iter()
        .zip(fresh.meta.named().iter())
        .zip(other.meta.named().iter())
    {
        assert_eq!(
            bits(a.as_tensor()),
            bits(b.as_tensor()),
            "{name}: same seed"
        );
        assert_ne!(
            bits(a.as_tensor()),
            bits(c.as_tensor()),
            "{name}: other seed"
        );
    }
}

#[test]
fn resume_restores_meta_net_and_momentum() {
    let clip = hf_clip();
    let (names, data) = colours(2, 9, 0..3);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("cocoop.ckpt");
    let new = || {
        CocoopLearner::new(
            &clip,
            &names,
            CocoopConfig {
                meta_net_ratio: 4,
                ..CocoopConfig::default()
            },
            Runtime::default(),
        )
        .unwrap()
    };
    let config = TrainConfig {
        epochs: 3,
        batch_size: 3,
        augment: true,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        seed: 4,
        checkpoint_path: Some(ck.clone()),
        ..TrainConfig::default()
    };
    let full = new();
    fit(
        &clip,
        &full,
        &data,
        &TrainConfig {
            checkpoint_path: None,
            ..config.clone()
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let cancel = AtomicBool::new(false);
    let interrupted = new();
    let err = fit(
        &clip,
        &interrupted,
        &data,
        &config,
        &mut |p| {
            // The second epoch (epochs count from 1), after the first one's checkpoint.
            if p.epoch == 2 {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert_eq!(err.code(), "E_CANCELLED");
    let resumed = new();
    let s = fit(
        &clip,
        &resumed,
        &data,
        &TrainConfig {
            resume_from: Some(ck),
            ..config
        },
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(s.start_epoch, 1);
    for ((name, a), (_, b)) in full.vars().iter().zip(resumed.vars().iter()) {
        let (a, b) = (
            a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after resume"
        );
    }
}

#[test]
fn default_options_work_on_a_clip_narrower_than_the_ratio() {
    // The tiny CLIP's features have 16 dimensions: the paper's ratio 16 leaves a Meta-Net hidden
    // layer of one unit, and a ratio above 16 is clamped to one unit too.
    let clip = hf_clip();
    assert_eq!(clip.embed_dim(), 16);
    let (names, data) = colours(1, 3, 0..3);
    for (ratio, hidden) in [(16, 1), (64, 1), (8, 2)] {
        let options = serde_json::json!({ "metaNetRatio": ratio });
        let co = CocoopLearner::new(
            &clip,
            &names,
            serde_json::from_value(options.clone()).unwrap(),
            Runtime::default(),
        )
        .unwrap();
        assert_eq!(co.meta.hidden(), hidden, "ratio {ratio}");
        let shapes: Vec<Vec<usize>> = co.vars().iter().map(|(_, v)| v.dims().to_vec()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![4, 32],
                vec![hidden, 16],
                vec![hidden],
                vec![32, hidden],
                vec![32]
            ],
            "ratio {ratio}"
        );
        // Through the registry the same options give the same learner.
        let made =
            promptclip_core::methods::create(&clip, "cocoop", &names, options, Runtime::default())
                .unwrap();
        assert_eq!(made.meta(), co.meta());
    }
    // All defaults: "a photo of a", ratio 16, seed 1.
    let co =
        CocoopLearner::new(&clip, &names, CocoopConfig::default(), Runtime::default()).unwrap();
    assert_eq!(
        (co.meta.hidden(), co.meta_net_ratio, co.context.n_ctx()),
        (1, 16, 4)
    );
    let feats = Tensor::randn(0f32, 1.0, (2, 16), &dev()).unwrap();
    let labels = Tensor::new(&[0u32, 2], &dev()).unwrap();
    let out = co.loss_and_grads(&clip, &feats, &labels).unwrap();
    assert!(out.loss.is_finite() && out.loss > 0.0, "loss {}", out.loss);
    assert_eq!(out.logits.dims(), &[2, 3]);
    assert_eq!(out.grads.len(), 5);
    for ((name, v), g) in co.vars().iter().zip(&out.grads) {
        assert_eq!(g.dims(), v.dims(), "{name}");
    }
    let g_ctx = out.grads[0]
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(g_ctx.is_finite() && g_ctx > 0.0, "grad ctx {g_ctx}");
    // One epoch of the method's own recipe (batch 1).
    let recipe = promptclip_core::methods::recipe_of(&co, Default::default()).unwrap();
    let config = TrainConfig {
        epochs: 1,
        augment: false,
        ..TrainConfig::for_recipe(&recipe)
    };
    assert_eq!(config.batch_size, 1);
    let before = co.context.ctx.as_tensor().copy().unwrap();
    let mut steps = 0;
    let s = fit(
        &clip,
        &co,
        &data,
        &config,
        &mut |p| {
            steps += 1;
            assert_eq!((p.epoch, p.step, p.steps_per_epoch), (1, steps, 3));
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((steps, s.global_step, s.epoch_loss.len()), (3, 3, 1));
    assert!(s.epoch_loss[0].is_finite());
    assert!(
        rel_err(co.context.ctx.as_tensor(), &before) > 0.0,
        "ctx did not move"
    );
}
