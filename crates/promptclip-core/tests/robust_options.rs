//! Options, weights and checkpoints that are out of range, non-finite, damaged or hostile are
//! refused before any work, by a coded error that names the option (and its value), the file and
//! the tensor (issue 11). One test per point of the issue, in its order.
mod common;
use common::{colours, dev, fixtures};
use promptclip_core::methods::coop::{CoopConfig, CoopContext};
use promptclip_core::methods::{self, io, Learner, Runtime};
use promptclip_core::train::checkpoint;
use promptclip_core::train::optim::SgdConfig;
use promptclip_core::train::schedule::ScheduleKind;
use promptclip_core::train::{fit, LabelledImages, TrainConfig, TrainOptions, TrainSummary};
use promptclip_core::{Clip, Error};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn names(k: usize) -> Vec<String> {
    ["red", "green", "blue", "yellow"][..k]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The error's code and message, for assertions.
fn err<T>(r: promptclip_core::Result<T>) -> (String, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => (e.code().to_string(), e.to_string()),
    }
}

fn assert_err<T>(r: promptclip_core::Result<T>, code: &str, parts: &[&str]) {
    let (c, m) = err(r);
    assert_eq!(c, code, "{m}");
    for p in parts {
        assert!(m.contains(p), "`{p}` not in: {m}");
    }
}

// ---- 1. sizes are checked before anything is allocated ----

#[test]
fn n_ctx_beyond_the_context_is_refused_before_allocating() {
    let clip = hf_clip();
    let l = clip.text.context_length();
    for n_ctx in [100_000_000usize, 10_000_000, usize::MAX, l] {
        let started = Instant::now();
        for method in ["coop", "cocoop", "kgcoop"] {
            let r = methods::create(
                &clip,
                method,
                &names(2),
                json!({ "nCtx": n_ctx, "classSpecific": method == "coop" }),
                Runtime::default(),
            );
            assert_err(
                r,
                "E_INVALID_ARGUMENT",
                &[&format!("nCtx {n_ctx} does not fit"), "at most"],
            );
        }
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{n_ctx}: {:?}",
            started.elapsed()
        );
    }
    // The largest M that fits still builds: SOS + M + "red" (1 token) + "." + EOT = 77.
    let m = l - 4;
    let built = CoopContext::new(
        &clip,
        &names(1),
        CoopConfig {
            n_ctx: Some(m),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    assert_eq!(built.n_ctx(), m);
    assert_err(
        methods::create(
            &clip,
            "coop",
            &names(1),
            json!({ "nCtx": m + 1 }),
            Runtime::default(),
        ),
        "E_INVALID_ARGUMENT",
        &[&format!("nCtx can be at most {m}")],
    );
    // The Meta-Net's bottleneck (feature size / ratio, at least 1): 0 is refused; the largest
    // ratio builds a 1-unit bottleneck at once.
    assert_err(
        methods::create(
            &clip,
            "cocoop",
            &names(2),
            json!({ "metaNetRatio": 0 }),
            Runtime::default(),
        ),
        "E_INVALID_ARGUMENT",
        &["metaNetRatio must be at least 1, got 0"],
    );
    let started = Instant::now();
    methods::create(
        &clip,
        "cocoop",
        &names(2),
        json!({ "metaNetRatio": u32::MAX }),
        Runtime::default(),
    )
    .unwrap();
    assert!(started.elapsed().as_secs_f64() < 1.0);
}

// ---- 2. numbers out of an integer option's range are refused, never wrapped ----

#[test]
fn out_of_range_integers_are_refused_by_name_and_value() {
    let clip = hf_clip();
    // What napi makes of JavaScript numbers: whole numbers >= 2^32 and fractions arrive as
    // floats, negative whole numbers as negative integers.
    let big = 4294967300.0f64; // 2^32 + 4
    for (field, value, shown) in [
        ("nCtx", json!(big), "4294967300"),
        ("nCtx", json!(-1), "-1"),
        ("nCtx", json!(2.5), "2.5"),
        ("seed", json!(-1), "-1"),
        ("seed", json!(4294967296.0f64), "4294967296"),
    ] {
        assert_err(
            methods::create(
                &clip,
                "coop",
                &names(2),
                json!({ field: value }),
                Runtime::default(),
            ),
            "E_INVALID_ARGUMENT",
            &[
                &format!("coop options: {field}: must be a whole number"),
                &format!("got {shown}"),
            ],
        );
    }
    for (field, value, shown) in [
        ("epochs", json!(4294967297.0f64), "4294967297"),
        ("batchSize", json!(4294967304.0f64), "4294967304"),
        ("seed", json!(-1), "-1"),
        ("warmupEpochs", json!(1.5), "1.5"),
        ("checkpointEvery", json!(-3), "-3"),
    ] {
        assert_err(
            TrainOptions::from_json(json!({ field: value })),
            "E_INVALID_ARGUMENT",
            &[
                &format!("train options: {field}: must be a whole number"),
                &format!("got {shown}"),
            ],
        );
    }
    // topK: numbers from JavaScript, checked by the core (the binding used to wrap -1 to 2^32-1).
    use promptclip_core::eval::top_k_from_numbers;
    assert_eq!(top_k_from_numbers(&[1.0, 5.0]).unwrap(), vec![1, 5]);
    for (ks, shown) in [
        (
            vec![-1.0],
            "topK[0] must be a whole number from 1 to 4294967295, got -1",
        ),
        (
            vec![1.0, 4294967297.0],
            "topK[1] must be a whole number from 1 to 4294967295, got 4294967297",
        ),
        (vec![0.5], "got 0.5"),
        (vec![f64::NAN], "got NaN"),
        (vec![0.0], "got 0"),
    ] {
        assert_err(top_k_from_numbers(&ks), "E_INVALID_ARGUMENT", &[shown]);
    }
}

// ---- 3. non-finite numbers: options, learner files, model weights ----

fn recipe(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        seed: 3,
        augment: false,
        ..TrainConfig::default()
    }
}

#[test]
fn non_finite_options_are_refused_by_name() {
    let base = recipe(1);
    type Set = Box<dyn Fn(&mut TrainConfig, f64)>;
    let cases: Vec<(&str, Set)> = vec![
        ("lr", Box::new(|c, v| c.sgd.lr = v)),
        ("momentum", Box::new(|c, v| c.sgd.momentum = v)),
        ("weightDecay", Box::new(|c, v| c.sgd.weight_decay = v)),
        ("warmupLr", Box::new(|c, v| c.warmup_lr = v)),
    ];
    for (name, set) in &cases {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut c = base.clone();
            set(&mut c, v);
            assert_err(
                c.validate(),
                "E_INVALID_ARGUMENT",
                &[name, &format!("got {v}")],
            );
        }
    }
    let clip = hf_clip();
    for v in [f64::NAN, f64::INFINITY] {
        let r = CoopContext::new(
            &clip,
            &names(2),
            CoopConfig {
                init_std: v,
                ..CoopConfig::default()
            },
        );
        assert_err(r, "E_INVALID_ARGUMENT", &["initStd", &v.to_string()]);
    }
    // The linear probe's C and tol, KgCoOp's w: finite too.
    for (method, opts) in [
        ("linear-probe", json!({ "c": 1e308 * 10.0 })),
        ("linear-probe", json!({ "tol": 1e308 * 10.0 })),
    ] {
        // 1e309 has no JSON number form: serde_json makes it null, which is "not given".
        let _ = methods::create(&clip, method, &names(2), opts, Runtime::default());
    }
    let probe = promptclip_core::methods::LinearProbe::new(
        &clip,
        &names(2),
        promptclip_core::methods::LinearProbeConfig {
            c: Some(f64::INFINITY),
            ..Default::default()
        },
    );
    assert_err(
        probe,
        "E_INVALID_ARGUMENT",
        &["c must be a positive number, got inf"],
    );
}

/// Rewrite a safetensors file with `change` applied to its tensors (metadata kept).
fn rewrite(
    from: &Path,
    to: &Path,
    change: impl FnOnce(&mut HashMap<String, candle_core::Tensor>, &mut HashMap<String, String>),
) {
    let (mut tensors, mut md) =
        promptclip_core::files::read_safetensors(from, &candle_core::Device::Cpu).unwrap();
    change(&mut tensors, &mut md);
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    promptclip_core::files::write_safetensors_atomic(to, &refs, md).unwrap();
}

fn with_nan(t: &candle_core::Tensor) -> candle_core::Tensor {
    let mut v = t
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mid = v.len() / 2;
    v[mid] = f32::NAN;
    candle_core::Tensor::from_vec(v, t.dims(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap()
}

#[test]
fn non_finite_learner_files_and_weights_are_refused_naming_file_and_tensor() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let learner = CoopContext::new(&clip, &names(2), CoopConfig::default()).unwrap();
    let good = dir.path().join("good.safetensors");
    io::save(&good, &learner, &clip).unwrap();
    let bad = dir.path().join("nan.safetensors");
    rewrite(&good, &bad, |t, _| {
        let ctx = with_nan(&t["ctx"]);
        t.insert("ctx".into(), ctx);
    });
    assert_err(
        io::load(&bad, &clip, Runtime::default()),
        "E_NON_FINITE_PARAMS",
        &["nan.safetensors", "`ctx`"],
    );

    // OpenAI-named weights with one NaN, and a NaN or overflowing logit_scale.
    let model = fixtures().join("tiny-clip-openai.safetensors");
    Clip::load(&model, &dev()).unwrap();
    for (tensor, value) in [
        ("transformer.resblocks.0.mlp.c_fc.weight", f32::NAN),
        ("logit_scale", f32::NAN),
        ("logit_scale", f32::INFINITY),
        ("logit_scale", 1000.0),
    ] {
        let out = dir
            .path()
            .join(format!("{}.safetensors", tensor.replace('.', "_")));
        rewrite(&model, &out, |t, _| {
            let v = if tensor == "logit_scale" {
                candle_core::Tensor::new(value, &candle_core::Device::Cpu).unwrap()
            } else {
                with_nan(&t[tensor])
            };
            t.insert(tensor.into(), v);
        });
        assert_err(
            Clip::load(&out, &dev()),
            "E_NON_FINITE_PARAMS",
            &[&format!("`{tensor}`")],
        );
    }
}

/// Load time with the finiteness check (one summing pass over every weight), against the time
/// of that pass alone: printed for the report (`--nocapture`).
#[test]
fn finiteness_check_cost_at_load() {
    for path in [
        fixtures().join("tiny-clip-openai.safetensors"),
        fixtures().join("tiny-clip-hf"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/builtin"),
    ] {
        if !path.exists() {
            continue;
        }
        Clip::load(&path, &dev()).unwrap(); // warm the page cache
        let t = Instant::now();
        let runs = 5;
        for _ in 0..runs {
            Clip::load(&path, &dev()).unwrap();
        }
        let load = t.elapsed().as_secs_f64() / runs as f64;
        let file = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.clone()
        };
        let tensors = candle_core::safetensors::load(&file, &dev()).unwrap();
        let bytes: usize = tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        let t = Instant::now();
        for _ in 0..runs {
            for v in tensors.values() {
                let v = v.to_dtype(candle_core::DType::F32).unwrap();
                let s = v.sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(s.is_finite());
            }
        }
        let check = t.elapsed().as_secs_f64() / runs as f64;
        println!(
            "{}: {:.1} MB of weights, load {:.1} ms, of which the finiteness pass {:.2} ms ({:.1}%, {:.2} GB/s)",
            path.file_name().unwrap().to_string_lossy(),
            bytes as f64 / 1e6,
            load * 1e3,
            check * 1e3,
            100.0 * check / load,
            bytes as f64 / check / 1e9
        );
    }
}

// ---- 4. resuming refuses every option that changes the run ----

fn coop(clip: &Clip) -> CoopContext {
    CoopContext::new(
        clip,
        &names(3),
        CoopConfig {
            n_ctx: Some(2),
            ..CoopConfig::default()
        },
    )
    .unwrap()
}

fn data() -> LabelledImages {
    colours(4, 4, 0..3).1
}

fn train(
    clip: &Clip,
    l: &dyn Learner,
    config: &TrainConfig,
) -> promptclip_core::Result<TrainSummary> {
    fit(
        clip,
        l,
        &data(),
        config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
}

#[test]
fn resume_refuses_any_changed_option_naming_both_values() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let config = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..recipe(2)
    };
    // Stop after the first epoch: train 1 of 2 epochs by cancelling at its last step.
    let cancel = AtomicBool::new(false);
    let l = coop(&clip);
    let _ = fit(
        &clip,
        &l,
        &data(),
        &config,
        &mut |p| {
            if p.global_step == 3 {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    let meta = checkpoint::load(&ck, &dev()).unwrap().meta;
    assert_eq!(meta.format_version, checkpoint::CHECKPOINT_VERSION);
    assert!(meta.run.is_some());
    let resume = TrainConfig {
        resume_from: Some(ck.clone()),
        checkpoint_path: None,
        ..config.clone()
    };
    type Change = Box<dyn Fn(&mut TrainConfig)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "lr was 0.05, this run has 0.01",
            Box::new(|c| c.sgd.lr = 0.01),
        ),
        (
            "momentum was 0.9, this run has 0.5",
            Box::new(|c| c.sgd.momentum = 0.5),
        ),
        (
            "weightDecay was 0.0005, this run has 0",
            Box::new(|c| c.sgd.weight_decay = 0.0),
        ),
        (
            "schedule was cosine, this run has constant",
            Box::new(|c| c.schedule = ScheduleKind::Constant),
        ),
        (
            "warmupEpochs was 1, this run has 0",
            Box::new(|c| c.warmup_epochs = 0),
        ),
        (
            "warmupLr was 0.00001, this run has 0.001",
            Box::new(|c| c.warmup_lr = 1e-3),
        ),
        (
            "augment was false, this run has true",
            Box::new(|c| c.augment = true),
        ),
        ("seed was 3, this run has 4", Box::new(|c| c.seed = 4)),
        ("epochs was 2, this run has 3", Box::new(|c| c.epochs = 3)),
        (
            "batchSize was 4, this run has 2",
            Box::new(|c| c.batch_size = 2),
        ),
    ];
    for (says, change) in &changes {
        let mut c = resume.clone();
        change(&mut c);
        let (code, msg) = err(train(&clip, &coop(&clip), &c));
        assert_eq!(code, "E_INVALID_ARGUMENT", "{msg}");
        assert!(msg.contains("run.ckpt: cannot resume"), "{msg}");
        // f64 Display writes 1e-5 as 0.00001.
        assert!(msg.contains(*says), "`{says}` not in: {msg}");
    }
    // Two changes at once: both named.
    let mut c = resume.clone();
    c.sgd.lr = 0.01;
    c.augment = true;
    let (_, msg) = err(train(&clip, &coop(&clip), &c));
    assert!(
        msg.contains("lr was") && msg.contains("augment was"),
        "{msg}"
    );
    // The same options resume (and what only changes how the run is computed may differ).
    let same = TrainConfig {
        encode_batch_size: 3,
        checkpoint_every: 5,
        ..resume.clone()
    };
    let s = train(&clip, &coop(&clip), &same).unwrap();
    assert_eq!((s.start_epoch, s.epoch_loss.len()), (1, 2)); // the whole curve: the epoch before the resume, from the checkpoint

    // A checkpoint claiming more epochs done than its run has is damaged, not "finished".
    let (tensors, mut md) = promptclip_core::files::read_safetensors(&ck, &dev()).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&md["promptclip_checkpoint"]).unwrap();
    m["epochs_done"] = json!(7);
    md.insert("promptclip_checkpoint".into(), m.to_string());
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let over = dir.path().join("over.ckpt");
    promptclip_core::files::write_safetensors_atomic(&over, &refs, md.clone()).unwrap();
    let c = TrainConfig {
        resume_from: Some(over.clone()),
        ..resume.clone()
    };
    assert_err(
        train(&clip, &coop(&clip), &c),
        "E_INVALID_ARGUMENT",
        &["over.ckpt: damaged checkpoint metadata: 7 of 2 epochs done"],
    );
    // A version 2 file (no recorded recipe) still resumes, checked on what it recorded.
    let mut m: serde_json::Value = serde_json::from_str(&md["promptclip_checkpoint"]).unwrap();
    m["epochs_done"] = json!(1);
    m["format_version"] = json!(2);
    m.as_object_mut().unwrap().remove("run");
    md.insert("promptclip_checkpoint".into(), m.to_string());
    let v2 = dir.path().join("v2.ckpt");
    promptclip_core::files::write_safetensors_atomic(&v2, &refs, md).unwrap();
    let c = TrainConfig {
        resume_from: Some(v2),
        ..resume.clone()
    };
    assert_eq!(train(&clip, &coop(&clip), &c).unwrap().start_epoch, 1);
}

// ---- 5. weight dtypes CLIP cannot have ----

/// The fixture model with tensor `name` stored as `dtype` (zeros of the same shape).
fn relabelled(dir: &Path, name: &str, dtype: safetensors::Dtype) -> PathBuf {
    let bytes = std::fs::read(fixtures().join("tiny-clip-openai.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = vec![];
    let mut data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = vec![];
    for (n, v) in st.tensors() {
        if n == name {
            let count: usize = v.shape().iter().product();
            let size = dtype.bitsize() / 8;
            data.push((n, v.shape().to_vec(), dtype, vec![0u8; count * size]));
        } else {
            data.push((n, v.shape().to_vec(), v.dtype(), v.data().to_vec()));
        }
    }
    for (n, shape, dtype, d) in &data {
        views.push((
            n.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), d).unwrap(),
        ));
    }
    let out = dir.join(format!("{name}-{dtype:?}.safetensors"));
    safetensors::serialize_to_file(views, None, &out).unwrap();
    out
}

#[test]
fn weights_with_dtypes_clip_cannot_have_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let name = "transformer.resblocks.0.mlp.c_fc.weight";
    for dtype in [
        safetensors::Dtype::I16,
        safetensors::Dtype::I32,
        safetensors::Dtype::U8,
        safetensors::Dtype::I64,
    ] {
        let path = relabelled(dir.path(), name, dtype);
        assert_err(
            Clip::load(&path, &dev()),
            "E_UNSUPPORTED",
            &[
                &format!("tensor `{name}` has dtype {dtype:?}"),
                "F32, F16, BF16 and F64",
            ],
        );
    }
    // Float dtypes load (zeros are finite).
    for dtype in [
        safetensors::Dtype::F16,
        safetensors::Dtype::BF16,
        safetensors::Dtype::F64,
    ] {
        Clip::load(&relabelled(dir.path(), name, dtype), &dev()).unwrap();
    }
    // Learner files and checkpoints hold float tensors only, too.
    let clip = hf_clip();
    let good = dir.path().join("good.safetensors");
    io::save(&good, &coop(&clip), &clip).unwrap();
    let ints = dir.path().join("ints.safetensors");
    rewrite(&good, &ints, |t, _| {
        let ctx = t["ctx"].to_dtype(candle_core::DType::I64).unwrap();
        t.insert("ctx".into(), ctx);
    });
    assert_err(
        io::load(&ints, &clip, Runtime::default()),
        "E_UNSUPPORTED",
        &["`ctx` has dtype I64"],
    );
}

// ---- 6. messages: writing, checkpointPath up front, momentum shapes, stale temporary files ----

#[test]
fn write_failures_say_cannot_write_and_checkpoint_path_is_checked_up_front() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A folder that cannot exist (its parent is a file): E_IO, "cannot write", the path.
    let inside = file.join("sub").join("learner.safetensors");
    assert_err(
        io::save(&inside, &coop(&clip), &clip),
        "E_IO",
        &["cannot write", "a-file"],
    );
    // checkpointPath: refused before the first step, not after the first epoch.
    let mut steps = 0;
    let config = TrainConfig {
        checkpoint_path: Some(file.join("run.ckpt")),
        ..recipe(1)
    };
    let r = fit(
        &clip,
        &coop(&clip),
        &data(),
        &config,
        &mut |_| steps += 1,
        &AtomicBool::new(false),
    );
    assert_err(r, "E_IO", &["cannot write", "a-file"]);
    assert_eq!(steps, 0);
    // A folder given as checkpointPath.
    let config = TrainConfig {
        checkpoint_path: Some(dir.path().to_path_buf()),
        ..recipe(1)
    };
    assert_err(
        train(&clip, &coop(&clip), &config),
        "E_IO",
        &["cannot write", "folder"],
    );
    // A missing folder is created (as saving always did), before training.
    let nested = dir.path().join("new").join("deeper").join("run.ckpt");
    let config = TrainConfig {
        checkpoint_path: Some(nested.clone()),
        ..recipe(1)
    };
    train(&clip, &coop(&clip), &config).unwrap();
    assert!(nested.is_file());
}

#[test]
fn momentum_of_the_wrong_shape_names_file_and_tensor() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let config = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..recipe(1)
    };
    train(&clip, &coop(&clip), &config).unwrap();
    let bad = dir.path().join("bad-momentum.ckpt");
    rewrite(&ck, &bad, |t, _| {
        let m = t["momentum.ctx"].flatten_all().unwrap();
        t.insert("momentum.ctx".into(), m);
    });
    let resume = TrainConfig {
        resume_from: Some(bad),
        checkpoint_path: None,
        epochs: 1,
        ..config
    };
    assert_err(
        train(&clip, &coop(&clip), &resume),
        "E_SHAPE_MISMATCH",
        &["`momentum.ctx`", "bad-momentum.ckpt"],
    );
}

#[test]
fn stale_temporary_files_of_the_same_target_are_cleaned_on_the_next_save() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("run.ckpt");
    // A writer killed with -9 (a process id that cannot be running: above Linux's pid_max), a
    // live one (pid 1), another target's, and our own leftover.
    let dead = dir.path().join(".run.ckpt.tmp-4294967");
    let live = dir.path().join(".run.ckpt.tmp-1");
    let other = dir.path().join(".other.ckpt.tmp-4294967");
    let own = dir
        .path()
        .join(format!(".run.ckpt.tmp-{}", std::process::id()));
    for f in [&dead, &live, &other, &own] {
        std::fs::write(f, b"partial").unwrap();
    }
    let config = TrainConfig {
        checkpoint_path: Some(target.clone()),
        ..recipe(1)
    };
    train(&clip, &coop(&clip), &config).unwrap();
    assert!(target.is_file());
    assert!(!dead.exists() && !own.exists());
    assert!(live.exists() && other.exists());
}

// ---- 7. pickles are never executed; header sizes are bounded before allocation ----

#[test]
fn pickles_are_refused_naming_safetensors() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    // torch.save's zip archive and a bare protocol-2 pickle (its opcodes would run on unpickling).
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl".to_vec();
    let pickle = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.".to_vec();
    for (name, bytes) in [
        ("model.pt", &zip),
        ("model.bin", &pickle),
        ("prompt.pth", &zip),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        assert_err(
            Clip::load(&p, &dev()),
            "E_UNSUPPORTED",
            &[name, "PyTorch pickle", "safetensors"],
        );
        assert_err(
            io::load(&p, &clip, Runtime::default()),
            "E_UNSUPPORTED",
            &[name, "PyTorch pickle", "safetensors"],
        );
        assert_err(
            checkpoint::load(&p, &dev()),
            "E_UNSUPPORTED",
            &["PyTorch pickle"],
        );
    }
}

/// A safetensors file: the 8-byte header length, the header, then `data`.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn header_sizes_are_bounded_before_allocation() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let huge = usize::MAX / 2;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Header length beyond the file.
        ("long-header", {
            let mut b = raw_safetensors("{}", b"");
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
        // Offsets beyond the data.
        (
            "offsets",
            raw_safetensors(
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,1099511627776]}}"#,
                &[0; 16],
            ),
        ),
        // A shape whose product overflows, and one far larger than the bytes.
        (
            "overflow",
            raw_safetensors(
                &format!(
                    r#"{{"x":{{"dtype":"F32","shape":[{huge},{huge},4],"data_offsets":[0,16]}}}}"#
                ),
                &[0; 16],
            ),
        ),
        (
            "big-shape",
            raw_safetensors(
                r#"{"x":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        ),
        (
            "truncated",
            raw_safetensors(
                r#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &[0; 8],
            ),
        ),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, bytes).unwrap();
        let started = Instant::now();
        let (code, msg) = err(promptclip_core::files::read_safetensors(&p, &dev()));
        assert_eq!(code, "E_INVALID_ARGUMENT", "{name}: {msg}");
        assert!(msg.contains("is not a safetensors file"), "{name}: {msg}");
        let (code, _) = err(Clip::load(&p, &dev()));
        assert!(
            code.starts_with("E_") && code != "E_INTERNAL",
            "{name}: {code}"
        );
        let (code, _) = err(io::load(&p, &clip, Runtime::default()));
        assert!(
            code.starts_with("E_") && code != "E_INTERNAL",
            "{name}: {code}"
        );
        assert!(started.elapsed().as_secs_f64() < 1.0, "{name}");
    }
}

#[test]
fn errors_keep_their_codes() {
    // The write error is E_IO even when the cause is a missing path.
    let e = Error::Write {
        path: "/x".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    assert_eq!(e.code(), "E_IO");
    assert!(e.to_string().starts_with("cannot write /x"));
}

// ---- cancellation reaches the one-time work before the first step ----

/// Cancelled before training: the up-front decoding (augmentation on), the center crops'
/// encoding (augmentation off) and the linear probe's features stop between batches. The proof:
/// an unreadable image in the second batch of 32 is never reached, so the call ends cancelled
/// rather than with that image's error (which it gives uncancelled).
#[test]
fn cancel_stops_the_encoding_before_the_first_step() {
    let clip = hf_clip();
    let (_, mut d) = colours(12, 5, 0..3); // 36 images: one full batch, then the rest
    d.sources
        .push(promptclip_core::preprocess::ImageSource::Path(
            "/nonexistent/last.png".into(),
        ));
    d.labels.push(0);
    let probe = methods::create(
        &clip,
        "linear-probe",
        &names(3),
        json!({}),
        Runtime::default(),
    )
    .unwrap();
    let l = coop(&clip);
    for (what, model, augment) in [
        ("coop, encoding", &l as &dyn Learner, false),
        ("coop, decoding", &l, true),
        ("linear probe", probe.as_ref(), false),
    ] {
        let config = TrainConfig {
            augment,
            ..recipe(1)
        };
        let run = |cancelled| {
            fit(
                &clip,
                model,
                &d,
                &config,
                &mut |_| {},
                &AtomicBool::new(cancelled),
            )
        };
        let (code, message) = err(run(false));
        assert!(message.contains("last.png"), "{what}: {code} {message}");
        assert_eq!(err(run(true)).0, "E_CANCELLED", "{what}");
    }
}
