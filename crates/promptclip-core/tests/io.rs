//! Reading images and running long work: BMP and GIF next to PNG, per-batch progress of encoding
//! (and stopping it from the callback), unreadable training images (failing by name, or skipped),
//! and cancellation that checkpoints mid-epoch and resumes to the uninterrupted result.
mod common;
use common::{colours, dev, fixtures};
use promptclip_core::features::{encode, encode_with_progress};
use promptclip_core::methods::coop::{CoopConfig, CoopContext};
use promptclip_core::methods::Learner;
use promptclip_core::preprocess::{preprocess, ImageConfig, ImageSource};
use promptclip_core::train::checkpoint;
use promptclip_core::train::optim::SgdConfig;
use promptclip_core::train::{fit, LabelledImages, TrainConfig, TrainSummary};
use promptclip_core::{Clip, Error};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

/// A few flat colours in blocks: every format stores it exactly (GIF's palette included).
fn palette_image() -> image::RgbaImage {
    let colours = [
        [200u8, 30, 40],
        [20, 160, 90],
        [30, 60, 210],
        [240, 230, 20],
    ];
    image::RgbaImage::from_fn(53, 41, |x, y| {
        let [r, g, b] = colours[((x / 9 + y / 7) % 4) as usize];
        image::Rgba([r, g, b, 255])
    })
}

fn encoded(img: &image::RgbaImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cursor = std::io::Cursor::new(&mut out);
    match format {
        image::ImageFormat::Gif => {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut cursor);
            enc.encode_frame(image::Frame::new(img.clone())).unwrap();
        }
        // BMP and PNG of the RGB pixels (no alpha to drop).
        f => image::DynamicImage::ImageRgba8(img.clone())
            .to_rgb8()
            .write_to(&mut cursor, f)
            .unwrap(),
    }
    out
}

#[test]
fn bmp_and_gif_read_as_the_same_pixels_as_png() {
    let img = palette_image();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ImageConfig::clip(32);
    let mut sources = vec![];
    for (format, ext) in [
        (image::ImageFormat::Png, "png"),
        (image::ImageFormat::Bmp, "bmp"),
        (image::ImageFormat::Gif, "gif"),
    ] {
        let bytes = encoded(&img, format);
        let path = dir.path().join(format!("same.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        sources.push(ImageSource::Path(path));
        sources.push(ImageSource::Bytes {
            name: format!("same ({ext} bytes)"),
            data: Arc::from(bytes),
        });
    }
    let png = preprocess(&sources[0], &cfg).unwrap();
    for s in &sources[1..] {
        let x = preprocess(s, &cfg).unwrap_or_else(|e| panic!("{}: {e}", s.name()));
        assert!(
            x == png,
            "{}: preprocessed pixels differ from the PNG's",
            s.name()
        );
    }
    // And through the model: equal embeddings.
    let clip = hf_clip();
    let enc = encode(&clip, &sources, 4).unwrap();
    assert!(enc.failures.is_empty());
    let rows = enc.features.unwrap().to_vec2::<f32>().unwrap();
    assert!(rows.iter().all(|r| r == &rows[0]));

    // A GIF's first frame is the image.
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let other = image::RgbaImage::from_pixel(53, 41, image::Rgba([0, 0, 0, 255]));
        enc.encode_frames([image::Frame::new(img.clone()), image::Frame::new(other)])
            .unwrap();
    }
    let first = ImageSource::Bytes {
        name: "two frames".into(),
        data: Arc::from(gif),
    };
    assert!(preprocess(&first, &cfg).unwrap() == png);
}

#[test]
fn corrupt_and_unsupported_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ImageConfig::clip(32);
    let mut truncated = encoded(&palette_image(), image::ImageFormat::Gif);
    truncated.truncate(truncated.len() / 2);
    let mut bmp = encoded(&palette_image(), image::ImageFormat::Bmp);
    bmp.truncate(40);
    for (name, bytes) in [
        ("truncated.gif", truncated),
        ("header-only.bmp", bmp),
        ("notes.txt.png", b"not an image at all".to_vec()),
        // TIFF is not among the formats.
        ("scan.tiff", b"II*\0\x08\0\0\0\0\0".to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = preprocess(&ImageSource::Path(path.clone()), &cfg).unwrap_err();
        assert_eq!(err.code(), "E_IMAGE_DECODE", "{name}: {err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn encoding_reports_progress_per_batch_and_stops_when_asked() {
    let clip = hf_clip();
    let (_, data) = colours(3, 1, 0..3); // 9 images
    let mut seen = vec![];
    let with = encode_with_progress(&clip, &data.sources, 4, &mut |done, total| {
        seen.push((done, total));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![(4, 9), (8, 9), (9, 9)]);
    let without = encode(&clip, &data.sources, 4).unwrap();
    assert_eq!(
        with.features.unwrap().to_vec2::<f32>().unwrap(),
        without.features.unwrap().to_vec2::<f32>().unwrap()
    );
    // An error from the callback stops the work after that batch and is the call's.
    let mut calls = 0;
    let err = encode_with_progress(&clip, &data.sources, 4, &mut |_, _| {
        calls += 1;
        Err(Error::cancelled())
    })
    .err()
    .unwrap();
    assert!(matches!(err, Error::Cancelled { checkpoint: None }));
    assert_eq!(calls, 1);
}

fn coop(clip: &Clip, names: &[String]) -> CoopContext {
    CoopContext::new(
        clip,
        names,
        CoopConfig {
            n_ctx: Some(2),
            ..CoopConfig::default()
        },
    )
    .unwrap()
}

fn recipe(epochs: usize, augment: bool) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        seed: 3,
        augment,
        ..TrainConfig::default()
    }
}

fn params(l: &CoopContext) -> Vec<Vec<f32>> {
    l.vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn train(
    clip: &Clip,
    learner: &CoopContext,
    data: &LabelledImages,
    config: &TrainConfig,
) -> promptclip_core::Result<TrainSummary> {
    train_any(clip, learner, data, config)
}

fn train_any(
    clip: &Clip,
    learner: &dyn Learner,
    data: &LabelledImages,
    config: &TrainConfig,
) -> promptclip_core::Result<TrainSummary> {
    fit(
        clip,
        learner,
        data,
        config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
}

#[test]
fn unreadable_training_images_fail_by_name_or_are_skipped() {
    let clip = hf_clip();
    let (names, clean) = colours(3, 2, 0..3); // 9 images: two steps of 4
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff garbage").unwrap();
    let mut data = clean.clone();
    data.sources.insert(2, ImageSource::Path(missing.clone()));
    data.labels.insert(2, 0);
    data.sources.insert(6, ImageSource::Path(corrupt.clone()));
    data.labels.insert(6, 1);

    for augment in [false, true] {
        let err = train(&clip, &coop(&clip, &names), &data, &recipe(1, augment)).unwrap_err();
        assert_eq!(err.code(), "E_FILE_NOT_FOUND", "augment {augment}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("training image 2"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        // Skipped: the summary names both, and training equals training on the readable ones.
        let skipping = TrainConfig {
            skip_unreadable: true,
            ..recipe(2, augment)
        };
        let a = coop(&clip, &names);
        let s = train(&clip, &a, &data, &skipping).unwrap();
        let skipped: Vec<(usize, &str)> = s.skipped.iter().map(|f| (f.index, f.code)).collect();
        assert_eq!(
            skipped,
            vec![(2, "E_FILE_NOT_FOUND"), (6, "E_IMAGE_DECODE")],
            "augment {augment}"
        );
        assert!(s.skipped[1]
            .message
            .contains(&corrupt.display().to_string()));
        let b = coop(&clip, &names);
        let clean_run = train(&clip, &b, &clean, &recipe(2, augment)).unwrap();
        assert!(clean_run.skipped.is_empty());
        assert_eq!(params(&a), params(&b), "augment {augment}");
        assert_eq!(s.epoch_loss, clean_run.epoch_loss);
    }

    // The linear probe, fitted on features, skips the same way.
    let probe = |d: &LabelledImages, skip: bool| {
        let l = promptclip_core::methods::create(
            &clip,
            "linear-probe",
            &names,
            serde_json::json!({ "c": 1.0 }),
            Default::default(),
        )
        .unwrap();
        let config = TrainConfig {
            skip_unreadable: skip,
            ..recipe(1, false)
        };
        let r = train_any(&clip, l.as_ref(), d, &config);
        (
            r,
            l.vars()[0]
                .1
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        )
    };
    let err = probe(&data, false).0.unwrap_err();
    assert_eq!(err.code(), "E_FILE_NOT_FOUND", "{err}");
    let (skipping, a) = probe(&data, true);
    assert_eq!(skipping.unwrap().skipped.len(), 2);
    let (_, b) = probe(&clean, false);
    assert_eq!(a, b);

    // Nothing readable: a clear error even when skipping.
    let none = LabelledImages {
        sources: vec![ImageSource::Path(missing)],
        labels: vec![0],
    };
    let skipping = TrainConfig {
        skip_unreadable: true,
        ..recipe(1, false)
    };
    let err = train(&clip, &coop(&clip, &names), &none, &skipping).unwrap_err();
    assert!(
        err.to_string().contains("none of the 1 training images"),
        "{err}"
    );
}

/// Cancel after `steps` steps (from the progress callback), then resume from the checkpoint.
fn interrupt_and_resume(
    clip: &Clip,
    names: &[String],
    data: &LabelledImages,
    config: &TrainConfig,
    steps: usize,
) -> (CoopContext, TrainSummary, Error) {
    let interrupted = coop(clip, names);
    let cancel = AtomicBool::new(false);
    let err = fit(
        clip,
        &interrupted,
        data,
        config,
        &mut |p| {
            if p.global_step == steps {
                cancel.store(true, Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    let resumed = coop(clip, names);
    let summary = train(
        clip,
        &resumed,
        data,
        &TrainConfig {
            resume_from: config.checkpoint_path.clone(),
            ..config.clone()
        },
    )
    .unwrap();
    (resumed, summary, err)
}

#[test]
fn cancelling_mid_epoch_checkpoints_and_resumes_to_the_same_result() {
    let clip = hf_clip();
    let (names, data) = colours(4, 3, 0..3); // 12 images: three steps of 4 an epoch
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    for augment in [true, false] {
        let config = TrainConfig {
            checkpoint_path: Some(ck.clone()),
            // No epoch-end checkpoint before the cancellation: it alone must carry the state.
            checkpoint_every: 10,
            ..recipe(3, augment)
        };
        let full = coop(&clip, &names);
        let full_summary = train(&clip, &full, &data, &recipe(3, augment)).unwrap();
        // Stop after step 2 of epoch 2 (global step 5).
        let (resumed, summary, err) = interrupt_and_resume(&clip, &names, &data, &config, 5);
        assert!(
            matches!(&err, Error::Cancelled { checkpoint: Some(p) } if p == &ck),
            "{err}"
        );
        assert_eq!(err.code(), "E_CANCELLED");
        assert!(err.to_string().contains(&ck.display().to_string()), "{err}");
        assert_eq!((summary.start_epoch, summary.start_step), (1, 2));
        assert_eq!(summary.global_step, full_summary.global_step);
        assert_eq!(params(&resumed), params(&full), "augment {augment}");
        // The resumed run reports the whole curve: the epoch done before the interruption (from
        // the checkpoint) and the resumed epoch with its steps before it.
        assert_eq!(
            summary.epoch_loss, full_summary.epoch_loss,
            "augment {augment}"
        );
        assert_eq!(summary.epoch_accuracy, full_summary.epoch_accuracy);
        std::fs::remove_file(&ck).unwrap();
    }
}

/// Rewrite a checkpoint's metadata as format version 1 wrote it (no step, no running sums).
fn as_version_1(path: &Path) -> PathBuf {
    let (tensors, mut md) = promptclip_core::files::read_safetensors(path, &dev()).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&md["promptclip_checkpoint"]).unwrap();
    let m = meta.as_object_mut().unwrap();
    for k in [
        "step_in_epoch",
        "epoch_loss_sum",
        "epoch_correct",
        "epoch_seen",
        "num_images",
    ] {
        assert!(m.remove(k).is_some(), "{k}");
    }
    // Kept from a later version on, and only when an epoch is done.
    m.remove("epoch_loss_history");
    m.remove("epoch_accuracy_history");
    m.insert("format_version".into(), 1.into());
    md.insert("promptclip_checkpoint".into(), meta.to_string());
    let out = path.with_extension("v1");
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    promptclip_core::files::write_safetensors_atomic(&out, &refs, md).unwrap();
    out
}

#[test]
fn version_1_checkpoints_still_resume() {
    let clip = hf_clip();
    let (names, data) = colours(4, 4, 0..3);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let config = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..recipe(2, true)
    };
    let full = coop(&clip, &names);
    train(&clip, &full, &data, &recipe(2, true)).unwrap();
    // Cancel right after the first epoch (3 steps), so that the checkpoint sits at an epoch
    // boundary, as every version 1 file did; resume from its version-1 form.
    let interrupted = coop(&clip, &names);
    let cancel = AtomicBool::new(false);
    fit(
        &clip,
        &interrupted,
        &data,
        &config,
        &mut |p| {
            if p.global_step == 3 {
                cancel.store(true, Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert_eq!(checkpoint::load(&ck, &dev()).unwrap().meta.step_in_epoch, 0);
    let v1 = as_version_1(&ck);
    assert_eq!(
        checkpoint::load(&v1, &dev()).unwrap().meta.format_version,
        1
    );
    let resumed = coop(&clip, &names);
    let s = train(
        &clip,
        &resumed,
        &data,
        &TrainConfig {
            resume_from: Some(v1),
            ..config.clone()
        },
    )
    .unwrap();
    assert_eq!((s.start_epoch, s.start_step), (1, 0));
    assert_eq!(params(&resumed), params(&full));
}

#[test]
fn a_checkpoint_holding_nan_is_bad_input_naming_the_tensor() {
    let clip = hf_clip();
    let (names, data) = colours(4, 2, 0..3);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.ckpt");
    let config = TrainConfig {
        checkpoint_path: Some(ck.clone()),
        ..recipe(1, false)
    };
    train(&clip, &coop(&clip, &names), &data, &config).unwrap();
    let (mut tensors, md) = promptclip_core::files::read_safetensors(&ck, &dev()).unwrap();
    let name = tensors
        .keys()
        .find(|n| n.starts_with("param."))
        .unwrap()
        .clone();
    let t = &tensors[&name];
    let nan = candle_core::Tensor::full(f32::NAN, t.dims(), &dev()).unwrap();
    tensors.insert(name.clone(), nan);
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    promptclip_core::files::write_safetensors_atomic(&ck, &refs, md).unwrap();
    let Err(err) = checkpoint::load(&ck, &dev()) else {
        panic!("a checkpoint holding NaN loaded")
    };
    // A damaged file (exit 2 on the command line), not a diverged run.
    assert_eq!(err.code(), "E_INVALID_ARGUMENT", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("`{name}`")) && msg.contains("damaged"),
        "{msg}"
    );
}
