#![allow(dead_code)]
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The fixtures folder. PROMPTCLIP_FIXTURES overrides the source tree's, so that test binaries
/// built here can run on another machine (scripts/gpu.sh carries them to the GPU machine).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("PROMPTCLIP_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// The device the model tests run on: PROMPTCLIP_TEST_DEVICE ("cpu" when unset; "cuda" in
/// scripts/gpu.sh, so that the same fixture tests prove the CUDA path).
pub fn dev() -> Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| {
        let name = std::env::var("PROMPTCLIP_TEST_DEVICE").unwrap_or_default();
        promptclip_core::device::device_from_name(&name).expect("PROMPTCLIP_TEST_DEVICE")
    })
    .clone()
}

pub fn load_reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &dev()).expect("reference fixture")
}

/// max |a - b| / max |b|: relative error measured against the reference's scale.
/// Computed in f64, so that f64 results are compared at their own precision.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    (a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale) as f32
}

/// Six colour classes of small synthetic photos; the first three are "base", the rest "new".
pub fn colours(
    per_class: usize,
    seed: u64,
    classes: std::ops::Range<usize>,
) -> (Vec<String>, promptclip_core::train::LabelledImages) {
    let names = ["red", "green", "blue", "yellow", "purple", "orange"];
    let rgb = [
        [220u8, 40, 40],
        [40, 200, 60],
        [40, 70, 220],
        [230, 220, 40],
        [150, 40, 200],
        [250, 140, 20],
    ];
    let mut rng = promptclip_core::rng::Rng::new(seed);
    let (mut sources, mut labels) = (vec![], vec![]);
    for i in 0..per_class {
        for (j, c) in classes.clone().enumerate() {
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                image::Rgb(rgb[c].map(|v| {
                    (v as i32 + ((x + y) % 16) as i32 - 8 + rng.below(30) as i32 - 15).clamp(0, 255)
                        as u8
                }))
            });
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            sources.push(promptclip_core::preprocess::ImageSource::Bytes {
                name: format!("{}-{i}.png", names[c]),
                data: std::sync::Arc::from(png),
            });
            labels.push(j);
        }
    }
    (
        classes.map(|c| names[c].to_string()).collect(),
        promptclip_core::train::LabelledImages { sources, labels },
    )
}

/// Batch `k` of `b` images of a fixture's `pixels` and `labels` (the prompt-in-encoder fixtures
/// take their batches in turn), scored by the frozen tower of `clip`.
pub fn pixel_batch<'a>(
    clip: &'a promptclip_core::Clip,
    t: &HashMap<String, Tensor>,
    k: usize,
    b: usize,
) -> (promptclip_core::methods::Batch<'a>, Tensor) {
    let pixels = t["pixels"].narrow(0, k * b, b).unwrap();
    let labels = t["labels"]
        .narrow(0, k * b, b)
        .unwrap()
        .to_dtype(candle_core::DType::U32)
        .unwrap();
    (
        promptclip_core::methods::Batch::of_pixels(
            pixels,
            promptclip_core::methods::FrozenTower::Clip(clip),
            b,
        )
        .unwrap(),
        labels,
    )
}
