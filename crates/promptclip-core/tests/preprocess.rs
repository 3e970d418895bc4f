//! Image preprocessing against transformers' CLIPImageProcessor (scripts/make_image_fixtures.py).
mod common;
use candle_core::{DType, Device};
use common::{fixtures, load_reference};
use promptclip_core::preprocess::{
    decode, preprocess, preprocess_batch, resize_and_crop, ImageConfig, ImageSource,
};
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct Entry {
    file: String,
}

fn manifest() -> Vec<Entry> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("images/manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn matches_clip_image_processor() {
    let cfg = ImageConfig::clip(224);
    let r = load_reference("images/reference.safetensors");
    let entries = manifest();
    assert!(entries.len() >= 8);
    let (mut max_all, mut sum_all, mut n_all) = (0f32, 0f64, 0usize);
    for e in &entries {
        let src = ImageSource::Path(fixtures().join("images").join(&e.file));
        let ours = resize_and_crop(&decode(&src).unwrap(), &cfg).unwrap();
        let reference = r[&format!("crop.{}", e.file)]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Compare in normalised units, as the model sees them (per-channel std).
        let (mut max, mut sum) = (0f32, 0f64);
        for (i, (a, b)) in ours.as_raw().iter().zip(&reference).enumerate() {
            let d = (*a as f32 - b).abs() / 255.0 / cfg.std[i % 3];
            max = max.max(d);
            sum += d as f64;
        }
        let mean = sum / reference.len() as f64;
        println!(
            "{:<28} max {max:.4} mean {mean:.5} (normalised units)",
            e.file
        );
        assert!(mean < 0.01, "{}: mean abs diff {mean}", e.file);
        max_all = max_all.max(max);
        sum_all += sum;
        n_all += reference.len();
    }
    println!(
        "all images: max {max_all:.4} mean {:.5}",
        sum_all / n_all as f64
    );
    // The full float pipeline (rescale + normalise, CHW) for the images stored as float.
    for e in &entries {
        if let Some(px) = r.get(&format!("pixel_values.{}", e.file)) {
            let ours = preprocess(
                &ImageSource::Path(fixtures().join("images").join(&e.file)),
                &cfg,
            )
            .unwrap();
            let crop = r[&format!("crop.{}", e.file)]
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let px = px.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(px.len(), ours.len());
            // Normalising the reference crop with our code reproduces transformers' floats.
            let crop_img =
                image::RgbImage::from_raw(224, 224, crop.iter().map(|x| *x as u8).collect())
                    .unwrap();
            let mut norm = Vec::new();
            promptclip_core::preprocess::normalize_into(&crop_img, &cfg, &mut norm);
            let max = norm
                .iter()
                .zip(&px)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(max < 1e-6, "{}: normalisation differs by {max}", e.file);
        }
    }
}

#[test]
fn bytes_and_paths_agree_and_bad_inputs_are_named() {
    let cfg = ImageConfig::clip(32);
    let file = &manifest()[0].file;
    let path = fixtures().join("images").join(file);
    let bytes: Arc<[u8]> = std::fs::read(&path).unwrap().into();
    let srcs = vec![
        ImageSource::Path(path.clone()),
        ImageSource::Bytes {
            name: "upload-1".into(),
            data: bytes,
        },
        ImageSource::Bytes {
            name: "corrupt-upload".into(),
            data: Arc::from(&b"\x89PNG\r\n\x1a\nnot really"[..]),
        },
        ImageSource::Path(fixtures().join("images/missing.png")),
    ];
    let out = preprocess_batch(&srcs, &cfg);
    assert_eq!(out[0].as_ref().unwrap(), out[1].as_ref().unwrap());
    let e2 = out[2].as_ref().unwrap_err();
    assert_eq!(e2.code(), "E_IMAGE_DECODE");
    assert!(e2.to_string().contains("corrupt-upload"), "{e2}");
    let e3 = out[3].as_ref().unwrap_err();
    assert_eq!(e3.code(), "E_FILE_NOT_FOUND");
    assert!(e3.to_string().contains("missing.png"), "{e3}");
    let _ = Device::Cpu;
}
