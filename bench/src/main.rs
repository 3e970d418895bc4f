//! promptclip encoding throughput at real CLIP shapes with random weights.
//!
//!   promptclip-bench encode <checkpoint.safetensors> [ViT-B/16|RN50|...] [images-dir]
//!   promptclip-bench features <checkpoint.safetensors> <arch> <out-prefix>
//!   promptclip-bench tip-adapter <checkpoint.safetensors> <images-dir>   (ViT-B/16; see adapters.rs)
//!   promptclip-bench deep-prompts <checkpoint.safetensors> <maple|promptsrc> <batch>   (ViT-B/16)
//!   promptclip-bench sgemm   (candle's best fp32 matrix-multiply rate here; see machine.rs)
//!   promptclip-bench clip-lora|clip-lora-predict <checkpoint.safetensors> <batch>   (ViT-B/16;
//!   see clip_lora.rs)
//!
//! Writes the checkpoint first when it does not exist. Prints one JSON line per measurement;
//! bench/run.sh runs the PyTorch counterpart on the same machine and prints the ratios.
//! `features` writes a fixed batch of pixels and their image features (tensor `x` in
//! `<out-prefix>.pixels.safetensors` and `<out-prefix>.features.safetensors`), which
//! bench/torch_encode.py checks the PyTorch model against.
use promptclip_core::clip::random::{write_random_openai_clip, RandomClipSpec};
use promptclip_core::preprocess::{preprocess_batch, ImageConfig, ImageSource};
use promptclip_core::tensor::{DType, Device, Tensor};
use promptclip_core::Clip;
use std::path::Path;
use std::time::Instant;

/// The random CLIP of `spec` at `path`, written first when the file does not exist.
fn random_clip(path: &Path, spec: &RandomClipSpec) -> Clip {
    if !path.exists() {
        write_random_openai_clip(path, spec, DType::F32, 0).expect("write random checkpoint");
    }
    Clip::load(path, &Device::Cpu).expect("load")
}

/// The cores the measurements run on.
fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Median seconds of `reps` runs after one warm-up.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Distinct class names: two words for the first 100 (the same list as
/// bench/torch_coop_step.py), then a third word in front, up to 1000.
pub fn class_names(k: usize) -> Vec<String> {
    let adj = [
        "red", "small", "wild", "old", "striped", "golden", "wooden", "spotted", "tiny", "giant",
    ];
    let noun = [
        "dog", "car", "bird", "chair", "flower", "boat", "house", "fish", "lamp", "tree",
    ];
    let place = [
        "",
        "sea ",
        "mountain ",
        "desert ",
        "city ",
        "forest ",
        "river ",
        "snow ",
        "garden ",
        "toy ",
    ];
    (0..k)
        .map(|i| {
            format!(
                "{}{} {}",
                place[(i / 100) % 10],
                adj[i % 10],
                noun[(i / 10) % 10]
            )
        })
        .collect()
}

/// Median seconds of a CoOp training step: with fresh image features (`encode_images`: the
/// official step, images through the frozen encoder) or with cached features.
fn coop_step(
    clip: &Clip,
    k: usize,
    batch: usize,
    m: usize,
    encode_images: bool,
    reps: usize,
) -> f64 {
    use promptclip_core::methods::{CoopConfig, CoopContext, Learner};
    use promptclip_core::train::optim::{Sgd, SgdConfig};
    let learner = CoopContext::new(
        clip,
        &class_names(k),
        CoopConfig {
            n_ctx: Some(m),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    let mut sgd = Sgd::new(SgdConfig::default(), 1);
    let s = clip.config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &Device::Cpu).unwrap();
    let cached = clip.encode_image(&pixels).unwrap();
    let labels = Tensor::from_vec(
        (0..batch as u32).map(|i| i % k as u32).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )
    .unwrap();
    time(reps, || {
        // The trainer's path: the text encoder's own backward pass.
        let feats = if encode_images {
            clip.encode_image(&pixels).unwrap()
        } else {
            cached.clone()
        };
        let grads = learner.loss_and_grads(clip, &feats, &labels).unwrap().grads;
        sgd.step(std::slice::from_ref(&learner.ctx), &grads, 0.002)
            .unwrap();
    })
}

/// Peak resident memory of this process (Linux VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One CoCoOp training step as the official code runs it (images through the frozen encoder,
/// K prompts per image, backward to context and Meta-Net, SGD), batched here.
fn cocoop_step(clip: &Clip, k: usize, batch: usize, reps: usize) -> f64 {
    use promptclip_core::methods::{CocoopConfig, CocoopLearner, Learner, Runtime};
    use promptclip_core::train::optim::{Sgd, SgdConfig};
    let learner = CocoopLearner::new(
        clip,
        &class_names(k),
        CocoopConfig::default(),
        Runtime::default(),
    )
    .unwrap();
    let vars: Vec<_> = learner.vars().into_iter().map(|(_, v)| v).collect();
    let mut sgd = Sgd::new(SgdConfig::default(), vars.len());
    let s = clip.config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec(
        (0..batch as u32).map(|i| i % k as u32).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )
    .unwrap();
    time(reps, || {
        let feats = clip.encode_image(&pixels).unwrap();
        let grads = learner.loss_and_grads(clip, &feats, &labels).unwrap().grads;
        sgd.step(&vars, &grads, 0.002).unwrap();
    })
}

/// The same allocator as the addon's (see the workspace Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adapters;
mod clip_lora;
mod deep_prompts;
mod gpu;
mod machine;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    #[cfg(feature = "cuda")]
    if args.len() >= 4 && args[1] == "profile" {
        gpu::profile(Path::new(&args[2]), &args[3]);
        return;
    }
    if args.len() >= 3 && args[1] == "e2e" {
        let epochs = args.get(4).and_then(|e| e.parse().ok()).unwrap_or(200);
        gpu::e2e(
            Path::new(&args[2]),
            args.get(3).map(String::as_str).unwrap_or("cuda:0"),
            epochs,
        );
        return;
    }
    if args.len() >= 3 && args[1] == "gpu" {
        gpu::run(
            Path::new(&args[2]),
            args.get(3).map(String::as_str).unwrap_or("cuda:0"),
        );
        return;
    }
    if args.len() >= 4 && args[1] == "cocoop-step" {
        let path = Path::new(&args[2]);
        let batch: usize = args[3].parse().expect("batch size");
        let spec = RandomClipSpec::VIT_B_16;
        let clip = random_clip(path, &spec);
        let k = 50;
        let s = cocoop_step(&clip, k, batch, if batch == 1 { 3 } else { 1 });
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": format!("cocoop_step_b{batch}"), "arch": "ViT-B/16", "classes": k, "batch": batch, "seconds": s, "seconds_per_image": s / batch as f64, "per_second": batch as f64 / s, "peak_rss_mib": peak_rss_mib()})
        );
        return;
    }
    if args.len() >= 5 && args[1] == "deep-prompts" {
        let clip = random_clip(Path::new(&args[2]), &RandomClipSpec::VIT_B_16);
        let method = args[3].as_str();
        let batch: usize = args[4].parse().expect("batch size");
        let k = 100;
        let s = deep_prompts::step(&clip, method, k, batch, if batch > 8 { 1 } else { 2 });
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": format!("{method}_step_b{batch}"), "arch": "ViT-B/16", "classes": k, "batch": batch, "threads": threads(), "seconds": s, "per_second": batch as f64 / s, "peak_rss_mib": peak_rss_mib()})
        );
        return;
    }
    if args.len() >= 4 && (args[1] == "clip-lora" || args[1] == "clip-lora-predict") {
        let batch: usize = args[3].parse().expect("batch size");
        if args[1] == "clip-lora" {
            clip_lora::step(Path::new(&args[2]), batch);
        } else {
            clip_lora::predict(Path::new(&args[2]), batch);
        }
        return;
    }
    if args.len() >= 4 && args[1] == "tip-adapter" {
        let path = Path::new(&args[2]);
        let spec = RandomClipSpec::VIT_B_16;
        let clip = random_clip(path, &spec);
        let threads = threads();
        let (shots, k, epochs) = (16, 100, 20);
        let s = adapters::tip_adapter_f_fit(&clip, shots, k, epochs);
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": "tip_adapter_f_fit", "arch": "ViT-B/16", "shots": shots, "classes": k, "epochs": epochs, "threads": threads, "seconds": s, "per_second": 1.0 / s})
        );
        let (n, passes) = (32, 10);
        let s = adapters::tip_adapter_cache(&clip, Path::new(&args[3]), n, passes);
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": "tip_adapter_cache", "arch": "ViT-B/16", "images": n, "passes": passes, "threads": threads, "seconds": s, "per_second": 1.0 / s, "image_passes_per_second": (n * passes) as f64 / s})
        );
        return;
    }
    if args.len() >= 3 && args[1] == "coop-step" {
        let path = Path::new(&args[2]);
        let arch = args.get(3).map(String::as_str).unwrap_or("ViT-B/16");
        let spec = RandomClipSpec::by_name(arch).expect("arch");
        let clip = random_clip(path, &spec);
        let threads = threads();
        let (k, batch, m) = (100, 32, 16);
        for (what, encode) in [("coop_step_cached_features", false), ("coop_step", true)] {
            let s = coop_step(&clip, k, batch, m, encode, if encode { 2 } else { 3 });
            println!(
                "{}",
                serde_json::json!({"impl": "promptclip", "what": what, "arch": arch, "classes": k, "batch": batch, "n_ctx": m, "threads": threads, "seconds": s, "per_second": 1.0 / s})
            );
        }
        return;
    }
    if args.len() >= 5 && args[1] == "features" {
        let path = Path::new(&args[2]);
        let spec = RandomClipSpec::by_name(&args[3]).expect("arch");
        let clip = random_clip(path, &spec);
        let (batch, s) = (2, spec.image_size);
        let mut rng = promptclip_core::rng::Rng::new(1);
        let pixels = Tensor::from_vec(
            rng.normal_vec(batch * 3 * s * s, 1.0),
            (batch, 3, s, s),
            &Device::Cpu,
        )
        .unwrap();
        let feats = clip.encode_image(&pixels).unwrap();
        let out = &args[4];
        pixels
            .save_safetensors("x", format!("{out}.pixels.safetensors"))
            .unwrap();
        feats
            .save_safetensors("x", format!("{out}.features.safetensors"))
            .unwrap();
        return;
    }
    if args.len() >= 2 && args[1] == "sgemm" {
        machine::sgemm(threads());
        return;
    }
    if args.len() < 3 || args[1] != "encode" {
        eprintln!("usage: promptclip-bench encode|coop-step|cocoop-step <checkpoint.safetensors> [ViT-B/16|RN50|...] [images-dir]\n       promptclip-bench tip-adapter <checkpoint.safetensors> <images-dir>\n       promptclip-bench features <checkpoint.safetensors> <arch> <out-prefix>\n       promptclip-bench gpu|e2e <work-dir> [cuda:N] [epochs]");
        std::process::exit(2);
    }
    let path = Path::new(&args[2]);
    let arch = args.get(3).map(String::as_str).unwrap_or("ViT-B/16");
    let spec =
        RandomClipSpec::by_name(arch).expect("arch: ViT-B/32, ViT-B/16, ViT-L/14, RN50 or RN101");
    let clip = random_clip(path, &spec);
    let threads = threads();

    let batch = 8;
    let pixels = Tensor::randn(
        0f32,
        1.0,
        (batch, 3, spec.image_size, spec.image_size),
        &Device::Cpu,
    )
    .unwrap();
    let s = time(3, || clip.encode_image(&pixels).unwrap());
    // A ViT's arithmetic per image, so that the rate reads against the machine's sgemm's.
    let gflop = clip
        .has_vit()
        .then(|| machine::vit_image_flops(&clip.config.vision_config) / 1e9);
    println!(
        "{}",
        serde_json::json!({"impl": "promptclip", "what": "image_encode", "arch": arch, "batch": batch, "threads": threads, "seconds": s, "per_second": batch as f64 / s, "gflop_per_image": gflop, "gflops": gflop.map(|g| g * batch as f64 / s)})
    );

    let classes = [
        "dog",
        "cat",
        "airplane",
        "golden retriever",
        "sea turtle",
        "espresso machine",
        "tabby cat",
        "fire truck",
    ];
    let prompts: Vec<String> = (0..256)
        .map(|i| format!("a photo of a {}.", classes[i % classes.len()]))
        .collect();
    let s = time(3, || clip.encode_texts(&prompts).unwrap());
    println!(
        "{}",
        serde_json::json!({"impl": "promptclip", "what": "text_encode", "arch": arch, "batch": prompts.len(), "threads": threads, "seconds": s, "per_second": prompts.len() as f64 / s})
    );

    if let Some(dir) = args.get(4) {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("jpg" | "png" | "webp")
                )
            })
            .collect();
        files.sort();
        let srcs: Vec<ImageSource> = files
            .iter()
            .cycle()
            .take(64)
            .cloned()
            .map(ImageSource::Path)
            .collect();
        let cfg = ImageConfig::clip(224);
        let s = time(3, || preprocess_batch(&srcs, &cfg));
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": "preprocess", "batch": srcs.len(), "threads": threads, "seconds": s, "per_second": srcs.len() as f64 / s})
        );
    }
}
