//! promptclip encoding throughput at real CLIP shapes with random weights.
//!
//!   promptclip-bench encode <checkpoint.safetensors> [ViT-B/16] [images-dir]
//!
//! Writes the checkpoint first when it does not exist. Prints one JSON line per measurement;
//! bench/run.sh runs the PyTorch counterpart on the same machine and prints the ratios.
use promptclip_core::clip::random::{write_random_openai_clip, RandomClipSpec};
use promptclip_core::preprocess::{preprocess_batch, ImageConfig, ImageSource};
use promptclip_core::tensor::{DType, Device, Tensor};
use promptclip_core::Clip;
use std::path::Path;
use std::time::Instant;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args[1] != "encode" {
        eprintln!("usage: promptclip-bench encode <checkpoint.safetensors> [ViT-B/16] [images-dir]");
        std::process::exit(2);
    }
    let path = Path::new(&args[2]);
    let arch = args.get(3).map(String::as_str).unwrap_or("ViT-B/16");
    let spec = RandomClipSpec::by_name(arch).expect("arch: ViT-B/32, ViT-B/16 or ViT-L/14");
    if !path.exists() {
        write_random_openai_clip(path, &spec, DType::F32, 0).expect("write random checkpoint");
    }
    let clip = Clip::load(path, &Device::Cpu).expect("load");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let batch = 8;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, spec.image_size, spec.image_size), &Device::Cpu).unwrap();
    let s = time(3, || clip.encode_image(&pixels).unwrap());
    println!("{}", serde_json::json!({"impl": "promptclip", "what": "image_encode", "arch": arch, "batch": batch, "threads": threads, "seconds": s, "per_second": batch as f64 / s}));

    let classes = ["dog", "cat", "airplane", "golden retriever", "sea turtle", "espresso machine", "tabby cat", "fire truck"];
    let prompts: Vec<String> = (0..256).map(|i| format!("a photo of a {}.", classes[i % classes.len()])).collect();
    let s = time(3, || clip.encode_texts(&prompts).unwrap());
    println!("{}", serde_json::json!({"impl": "promptclip", "what": "text_encode", "arch": arch, "batch": prompts.len(), "threads": threads, "seconds": s, "per_second": prompts.len() as f64 / s}));

    if let Some(dir) = args.get(4) {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png" | "webp"))).collect();
        files.sort();
        let srcs: Vec<ImageSource> = files.iter().cycle().take(64).cloned().map(ImageSource::Path).collect();
        let cfg = ImageConfig::clip(224);
        let s = time(3, || preprocess_batch(&srcs, &cfg));
        println!("{}", serde_json::json!({"impl": "promptclip", "what": "preprocess", "batch": srcs.len(), "threads": threads, "seconds": s, "per_second": srcs.len() as f64 / s}));
    }
}
