//! The GPU benchmark, promptclip's side (bench/torch_official_gpu.py is PyTorch's):
//!
//!   promptclip-bench gpu <work-dir> [cuda:0]
//!
//! (It also runs on "cpu", without peak memory: BENCH_QUICK=1 shrinks every workload, to try
//! the two scripts here before spending GPU time.)
//! Writes a random ViT-B/16 (OpenAI names) and the shared inputs (pixels, labels, initial context
//! and Meta-Net, class names) into <work-dir> when they are missing, so that the PyTorch script
//! runs the same math on the same numbers. Then, for fp16 (CLIP weights in fp16, learned
//! parameters and optimiser in fp32) and fp32, it times image encoding, the CoOp step and the
//! CoCoOp step at the workloads, with the peak memory of each, and the loss trajectory of
//! a few steps for the agreement check. One JSON line per measurement.
use crate::class_names;
use promptclip_core::clip::random::{write_random_openai_clip, RandomClipSpec};
use promptclip_core::methods::{
    CocoopConfig, CocoopLearner, CoopConfig, CoopContext, Learner, Runtime, StepOutput,
};
use promptclip_core::tensor::{DType, Device, Tensor};
use promptclip_core::train::optim::{all_finite, LossScaler, Sgd, SgdConfig};
use promptclip_core::Clip;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

const MAX_BATCH: usize = 32;

fn sync(dev: &Device) {
    dev.synchronize().expect("synchronize");
}

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Median milliseconds of `reps` runs after `warmup` runs, the GPU drained around each run.
fn time_ms(dev: &Device, warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(dev);
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(dev);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(feature = "cuda")]
fn peak_mib(dev: &Device, f: impl FnOnce()) -> f64 {
    if !dev.is_cuda() {
        f();
        return f64::NAN;
    }
    promptclip_core::device::cuda::reset_peak_memory(dev).expect("reset peak");
    f();
    sync(dev);
    promptclip_core::device::cuda::peak_memory(dev).expect("peak") as f64 / (1 << 20) as f64
}

#[cfg(not(feature = "cuda"))]
fn peak_mib(_dev: &Device, f: impl FnOnce()) -> f64 {
    f();
    f64::NAN
}

/// The inputs both implementations read: pixels (32, 3, 224, 224), labels, CoOp's initial
/// context (M = 16, std 0.02) and CoCoOp's Meta-Net, as our own initialisers make them.
fn write_inputs(path: &Path, clip: &Clip) {
    let cpu = Device::Cpu;
    let mut rng = promptclip_core::rng::Rng::new(5);
    let pixels = Tensor::from_vec(
        rng.normal_vec(MAX_BATCH * 3 * 224 * 224, 1.0),
        (MAX_BATCH, 3, 224, 224),
        &cpu,
    )
    .unwrap();
    let labels = Tensor::from_vec(
        (0..MAX_BATCH as u32)
            .map(|i| (i * 7) % 50)
            .collect::<Vec<_>>(),
        MAX_BATCH,
        &cpu,
    )
    .unwrap();
    let coop = CoopContext::new(
        clip,
        &class_names(2),
        CoopConfig {
            n_ctx: Some(16),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let cocoop = CocoopLearner::new(
        clip,
        &class_names(2),
        CocoopConfig::default(),
        Runtime::default(),
    )
    .unwrap();
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("pixels".into(), pixels),
        ("labels".into(), labels),
        ("coop_ctx".into(), coop.ctx.as_tensor().clone()),
    ];
    for (name, v) in cocoop.meta.named() {
        tensors.push((format!("cocoop.{name}"), v.as_tensor().clone()));
    }
    tensors.push(("cocoop.ctx".into(), cocoop.context.ctx.as_tensor().clone()));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let md = HashMap::from([(
        "class_names_1000".to_string(),
        serde_json::to_string(&class_names(1000)).unwrap(),
    )]);
    promptclip_core::files::write_safetensors_atomic(path, &refs, md).unwrap();
}

struct Inputs {
    pixels: Tensor,
    labels: Tensor,
    tensors: HashMap<String, Tensor>,
}

impl Inputs {
    fn pixels(&self, b: usize) -> Tensor {
        self.pixels.narrow(0, 0, b).unwrap()
    }
    fn labels(&self, b: usize, k: usize) -> Tensor {
        let l: Vec<u32> = self
            .labels
            .narrow(0, 0, b)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|&x| x % k as u32)
            .collect();
        Tensor::from_vec(l, b, self.labels.device()).unwrap()
    }
}

fn coop_learner(clip: &Clip, inputs: &Inputs, k: usize) -> CoopContext {
    let l = CoopContext::new(
        clip,
        &class_names(k),
        CoopConfig {
            n_ctx: Some(16),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    l.ctx.set(&inputs.tensors["coop_ctx"]).unwrap();
    l
}

fn cocoop_learner(clip: &Clip, inputs: &Inputs, k: usize) -> CocoopLearner {
    // A budget large enough that the chunking never splits the batches measured here.
    let l = CocoopLearner::new(
        clip,
        &class_names(k),
        CocoopConfig::default(),
        Runtime {
            memory_budget_mb: 48 << 10,
        },
    )
    .unwrap();
    for (name, v) in l.meta.named() {
        v.set(&inputs.tensors[&format!("cocoop.{name}")]).unwrap();
    }
    l
}

/// One training step as the official trainers run it: images through the frozen encoder, the
/// learner's loss and gradients, SGD; in fp16 with the trainer's loss scaling, whose state it
/// keeps across steps as the trainer does.
struct Step {
    sgd: Sgd,
    scaler: Option<LossScaler>,
}

impl Step {
    fn new(clip: &Clip, n_vars: usize) -> Self {
        Self {
            sgd: Sgd::new(SgdConfig::default(), n_vars),
            scaler: (clip.dtype == DType::F16).then(LossScaler::default),
        }
    }

    /// One step; returns its loss.
    fn run<M: Learner>(
        &mut self,
        clip: &Clip,
        learner: &M,
        pixels: &Tensor,
        labels: &Tensor,
    ) -> f32 {
        let feats = clip
            .encode_image(&pixels.to_dtype(clip.dtype).unwrap())
            .unwrap();
        let (loss, grads) = loop {
            let scale = self.scaler.map_or(1.0, |s| s.scale);
            let StepOutput { loss, grads, .. } = learner
                .loss_and_grads_scaled(clip, &feats, labels, scale)
                .unwrap();
            match self.scaler.as_mut() {
                Some(s) if !all_finite(&grads).unwrap() => assert!(s.backoff()),
                Some(s) => {
                    s.good_step();
                    break (loss, grads);
                }
                None => break (loss, grads),
            }
        };
        let vars: Vec<_> = learner.vars().into_iter().map(|(_, v)| v).collect();
        self.sgd.step(&vars, &grads, 0.002).unwrap();
        loss
    }
}

/// The random ViT-B/16 and the shared inputs in `work`, written when missing. Returns the
/// checkpoint's path.
fn prepare(work: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let ckpt = work.join("vit-b16.safetensors");
    if !ckpt.exists() {
        write_random_openai_clip(&ckpt, &RandomClipSpec::VIT_B_16, DType::F32, 0).unwrap();
    }
    let inputs_path = work.join("inputs.safetensors");
    if !inputs_path.exists() {
        write_inputs(&inputs_path, &Clip::load(&ckpt, &Device::Cpu).unwrap());
    }
    ckpt
}

pub fn run(work: &Path, device: &str) {
    let dev = promptclip_core::device::device_from_name(device).expect("device");
    let ckpt = prepare(work);
    let (tensors, _) =
        promptclip_core::files::read_safetensors(&work.join("inputs.safetensors"), &dev).unwrap();
    let inputs = Inputs {
        pixels: tensors["pixels"].clone(),
        labels: tensors["labels"].clone(),
        tensors,
    };
    let print = |v: serde_json::Value| println!("{v}");

    // (Half precision on the CPU is only a slow emulation: the CPU dry run does fp32 alone.)
    let precs: &[(&str, DType)] = if dev.is_cuda() {
        &[("fp16", DType::F16), ("fp32", DType::F32)]
    } else {
        &[("fp32", DType::F32)]
    };
    for &(prec, dtype) in precs {
        let clip = Clip::load_with_dtype(&ckpt, &dev, dtype).unwrap();
        let base = serde_json::json!({"impl": "promptclip", "prec": prec, "device": device});
        let with = |mut v: serde_json::Value, extra: serde_json::Value| {
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };

        // Image encoding, batch 100 (the official test batch).
        let (warm, reps) = if quick() { (1, 1) } else { (3, 20) };
        let px100 = Tensor::cat(&(0..4).map(|_| inputs.pixels(25)).collect::<Vec<_>>(), 0)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let ms = time_ms(&dev, warm, reps, || {
            clip.encode_image(&px100).unwrap();
        });
        let mib = peak_mib(&dev, || {
            clip.encode_image(&px100).unwrap();
        });
        print(with(
            base.clone(),
            serde_json::json!({"what": "image_encode", "batch": 100, "ms": ms, "per_second": 100.0 / ms * 1e3, "peak_mib": mib}),
        ));

        // CoOp steps: K = 100 and 1000, batch 32, M = 16.
        for k in if quick() { vec![10] } else { vec![100, 1000] } {
            let learner = coop_learner(&clip, &inputs, k);
            let mut step = Step::new(&clip, 1);
            let (px, lb) = (inputs.pixels(32), inputs.labels(32, k));
            let ms = time_ms(&dev, warm, reps, || {
                step.run(&clip, &learner, &px, &lb);
            });
            let mib = peak_mib(&dev, || {
                step.run(&clip, &learner, &px, &lb);
            });
            print(with(
                base.clone(),
                serde_json::json!({"what": format!("coop_step_k{k}"), "classes": k, "batch": 32, "n_ctx": 16, "ms": ms, "per_second": 32.0 / ms * 1e3, "peak_mib": mib}),
            ));
        }

        // CoCoOp steps: K = 50 at batch 1, 8, 32; K = 500 at batch 1 and 8.
        let cocoop_sizes = if quick() {
            vec![(5, 2)]
        } else {
            vec![(50, 1), (50, 8), (50, 32), (500, 1), (500, 8)]
        };
        for (k, b) in cocoop_sizes {
            let learner = cocoop_learner(&clip, &inputs, k);
            let mut step = Step::new(&clip, 5);
            let (px, lb) = (inputs.pixels(b), inputs.labels(b, k));
            let reps = if quick() {
                1
            } else if b * k >= 4000 {
                5
            } else {
                10
            };
            let ms = time_ms(&dev, warm.min(2), reps, || {
                step.run(&clip, &learner, &px, &lb);
            });
            let mib = peak_mib(&dev, || {
                step.run(&clip, &learner, &px, &lb);
            });
            print(with(
                base.clone(),
                serde_json::json!({"what": format!("cocoop_step_k{k}_b{b}"), "classes": k, "batch": b, "ms": ms, "ms_per_image": ms / b as f64, "per_second": b as f64 / ms * 1e3, "peak_mib": mib}),
            ));
        }

        // Agreement: the same steps from the same start as bench/torch_official_gpu.py.
        let learner = coop_learner(&clip, &inputs, 100);
        let mut step = Step::new(&clip, 1);
        let (px, lb) = (inputs.pixels(32), inputs.labels(32, 100));
        let losses: Vec<f32> = (0..if quick() { 2 } else { 10 })
            .map(|_| step.run(&clip, &learner, &px, &lb))
            .collect();
        print(with(
            base.clone(),
            serde_json::json!({"what": "coop_losses_k100", "losses": losses}),
        ));
        let learner = cocoop_learner(&clip, &inputs, 50);
        let mut step = Step::new(&clip, 5);
        let (px, lb) = (inputs.pixels(8), inputs.labels(8, 50));
        let losses: Vec<f32> = (0..if quick() { 2 } else { 5 })
            .map(|_| step.run(&clip, &learner, &px, &lb))
            .collect();
        print(with(
            base.clone(),
            serde_json::json!({"what": "cocoop_losses_k50_b8", "losses": losses}),
        ));
    }
}

/// One workload between cuProfilerStart and cuProfilerStop, after warm-up, for
/// `ncu --profile-from-start off` (scripts/gpu.sh profile): "image", "coop" or "cocoop".
#[cfg(feature = "cuda")]
pub fn profile(work: &Path, what: &str) {
    let dev = promptclip_core::device::device_from_name("cuda").expect("device");
    let ckpt = prepare(work);
    let (tensors, _) =
        promptclip_core::files::read_safetensors(&work.join("inputs.safetensors"), &dev).unwrap();
    let inputs = Inputs {
        pixels: tensors["pixels"].clone(),
        labels: tensors["labels"].clone(),
        tensors,
    };
    let clip = Clip::load_with_dtype(&ckpt, &dev, DType::F16).unwrap();
    let mut run: Box<dyn FnMut()> = match what {
        "image" => {
            let px = Tensor::cat(&(0..4).map(|_| inputs.pixels(25)).collect::<Vec<_>>(), 0)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap();
            Box::new(move || {
                clip.encode_image(&px).unwrap();
            })
        }
        "coop" | "coop100" => {
            let k = if what == "coop" { 1000 } else { 100 };
            let learner = coop_learner(&clip, &inputs, k);
            let mut step = Step::new(&clip, 1);
            let (px, lb) = (inputs.pixels(32), inputs.labels(32, k));
            Box::new(move || {
                step.run(&clip, &learner, &px, &lb);
            })
        }
        _ => {
            let learner = cocoop_learner(&clip, &inputs, 50);
            let mut step = Step::new(&clip, 5);
            let (px, lb) = (inputs.pixels(32), inputs.labels(32, 50));
            Box::new(move || {
                step.run(&clip, &learner, &px, &lb);
            })
        }
    };
    for _ in 0..3 {
        run();
    }
    sync(&dev);
    let t = Instant::now();
    run();
    sync(&dev);
    eprintln!(
        "{what}: {:.2} ms wall (unprofiled)",
        t.elapsed().as_secs_f64() * 1e3
    );
    use promptclip_core::tensor::cuda_sys as sys;
    // SAFETY: plain driver calls; the profiler brackets exactly one run.
    unsafe { sys::cuProfilerStart() };
    run();
    sync(&dev);
    unsafe { sys::cuProfilerStop() };
}

/// The whole job, as the issue times the official code: CoOp on 16 shots x 100 classes of 500x375
/// JPEGs, random resized crop and flip, batch 32, for `epochs` epochs, JPEG decoding included;
/// then evaluation (decode, center crop, encode, classify) over the same files.
///
///   promptclip-bench e2e <work-dir> [cuda:0] [epochs]
pub fn e2e(work: &Path, device: &str, epochs: usize) {
    use promptclip_core::preprocess::ImageSource;
    use promptclip_core::train::{fit, LabelledImages, TrainConfig};
    let dev = promptclip_core::device::device_from_name(device).expect("device");
    let ckpt = prepare(work);
    let (k, shots) = if quick() { (4, 4) } else { (100, 16) };
    let files = jpeg_dataset(&work.join(format!("jpeg-{k}x{shots}")), k, shots);
    let data = LabelledImages {
        sources: files
            .iter()
            .map(|(p, _)| ImageSource::Path(p.clone()))
            .collect(),
        labels: files.iter().map(|(_, l)| *l).collect(),
    };
    let dtype = if dev.is_cuda() {
        DType::F16
    } else {
        DType::F32
    };
    let clip = Clip::load_with_dtype(&ckpt, &dev, dtype).unwrap();
    let learner = CoopContext::new(
        &clip,
        &class_names(k),
        CoopConfig {
            n_ctx: Some(16),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let config = TrainConfig {
        epochs,
        encode_batch_size: 128,
        ..TrainConfig::default()
    };
    let started = Instant::now();
    let mut first_epoch_s = None;
    let summary = fit(
        &clip,
        &learner,
        &data,
        &config,
        &mut |p| {
            // Epochs count from 1.
            if p.epoch == 1 && p.step == p.steps_per_epoch {
                first_epoch_s = Some(started.elapsed().as_secs_f64());
            }
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    let total = started.elapsed().as_secs_f64();
    let first = first_epoch_s.unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({"impl": "promptclip", "what": "e2e_coop", "prec": crate::gpu::prec_name(dtype), "device": device, "images": data.sources.len(), "classes": k, "epochs": epochs,
            "seconds": total, "first_epoch_seconds": first, "seconds_per_epoch": (total - first) / (epochs.max(2) - 1) as f64,
            "first_epoch_loss": summary.epoch_loss.first(), "last_epoch_loss": summary.epoch_loss.last()})
    );
    // Evaluation, batch 100 (the official test batch).
    let t = Instant::now();
    let preds = promptclip_core::methods::predict(
        &clip,
        &learner,
        &data.sources,
        None,
        100,
        &mut |_, _| {},
    )
    .unwrap();
    let s = t.elapsed().as_secs_f64();
    assert_eq!(preds.indices.len(), data.sources.len());
    println!(
        "{}",
        serde_json::json!({"impl": "promptclip", "what": "e2e_evaluate", "prec": crate::gpu::prec_name(dtype), "device": device, "images": data.sources.len(), "seconds": s, "per_second": data.sources.len() as f64 / s})
    );
}

fn prec_name(dtype: DType) -> &'static str {
    if dtype == DType::F16 {
        "fp16"
    } else {
        "fp32"
    }
}

/// `k` classes x `shots` synthetic 500x375 JPEGs (quality 90) in `dir`, written once: a class
/// colour, a gradient, a few shapes and noise, so that decoding costs what a photo's does.
/// Returns (path, label) pairs, also listed in `dir/files.txt` for the PyTorch side.
fn jpeg_dataset(dir: &Path, k: usize, shots: usize) -> Vec<(std::path::PathBuf, usize)> {
    use rayon::prelude::*;
    std::fs::create_dir_all(dir).unwrap();
    let items: Vec<(std::path::PathBuf, usize)> = (0..k * shots)
        .map(|i| {
            (
                dir.join(format!("{:03}_{:02}.jpg", i / shots, i % shots)),
                i / shots,
            )
        })
        .collect();
    items.par_iter().enumerate().for_each(|(i, (path, label))| {
        if path.exists() {
            return;
        }
        let mut rng = promptclip_core::rng::Rng::new(1000 + i as u64);
        let base = [
            (label * 37 % 256) as f64,
            (label * 91 % 256) as f64,
            (label * 151 % 256) as f64,
        ];
        let shapes: Vec<(f64, f64, f64, [f64; 3])> = (0..6)
            .map(|_| {
                (
                    rng.uniform() * 500.0,
                    rng.uniform() * 375.0,
                    20.0 + rng.uniform() * 80.0,
                    [
                        rng.uniform() * 255.0,
                        rng.uniform() * 255.0,
                        rng.uniform() * 255.0,
                    ],
                )
            })
            .collect();
        let noise = rng.normal_vec(500 * 375, 12.0);
        let img = image::RgbImage::from_fn(500, 375, |x, y| {
            let (xf, yf) = (x as f64, y as f64);
            let mut c = [
                base[0] * (0.5 + xf / 1000.0),
                base[1] * (0.5 + yf / 750.0),
                base[2],
            ];
            for (cx, cy, r, col) in &shapes {
                if (xf - cx).powi(2) + (yf - cy).powi(2) < r * r {
                    c = *col;
                }
            }
            let n = noise[(y * 500 + x) as usize] as f64;
            image::Rgb(c.map(|v| (v + n).clamp(0.0, 255.0) as u8))
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    });
    let list: String = items
        .iter()
        .map(|(p, l)| format!("{}\t{l}\n", p.display()))
        .collect();
    std::fs::write(dir.join("files.txt"), list).unwrap();
    items
}
