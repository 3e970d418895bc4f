//! The seam for methods that run the image encoder themselves (`Takes::Images`): the trainer
//! caches no features for them and hands each step the batch's pixels (the center crops without
//! augmentation, the augmented crops with it), and prediction scores images through the same
//! batch. Shown with a learner written here, outside the registry: a linear map of each image's
//! mean colour, reading `batch.pixels()` only.
mod common;
use candle_core::{DType, Tensor, Var, D};
use common::{colours, dev};
use promptclip_core::methods::catalogue::{Fitting, Takes};
use promptclip_core::methods::{self, Batch, Learner, LearnerMeta, Scorer, StepOutput};
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::{Clip, Error, Result};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

#[derive(Debug)]
struct MeanColour {
    names: Vec<String>,
    /// (K, 3)
    w: Var,
    /// The pixels of every training step, in order.
    seen: Mutex<Vec<Tensor>>,
}

fn mean_colour(pixels: &Tensor) -> Result<Tensor> {
    Ok(pixels
        .to_dtype(DType::F32)?
        .mean(D::Minus1)?
        .mean(D::Minus1)?) // (B, 3)
}

struct MeanColourScorer<'a>(&'a MeanColour, &'a Mutex<Vec<Tensor>>);

impl Scorer for MeanColourScorer<'_> {
    fn logits(&self, _features: &Tensor) -> Result<Tensor> {
        Err(Error::Internal(
            "this learner scores pixels, not features".into(),
        ))
    }
    fn batch_logits(&self, batch: &Batch<'_>) -> Result<Tensor> {
        let pixels = batch.pixels()?;
        self.1.lock().unwrap().push(pixels.clone());
        Ok(mean_colour(pixels)?.matmul(&self.0.w.as_tensor().t()?)?)
    }
}

impl Learner for MeanColour {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: "mean-colour".into(),
            class_names: self.names.clone(),
            options: serde_json::json!({}),
            params: vec![("w".into(), self.w.dims().to_vec())],
        }
    }
    fn vars(&self) -> Vec<(String, Var)> {
        vec![("w".into(), self.w.clone())]
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn takes(&self) -> Takes {
        Takes::Images
    }
    fn fitting(&self) -> Fitting {
        Fitting::Sgd
    }
    fn logits(&self, _clip: &Clip, _features: &Tensor) -> Result<Tensor> {
        Err(Error::Internal(
            "this learner scores pixels, not features".into(),
        ))
    }
    fn batch_loss_and_grads(
        &self,
        _clip: &Clip,
        batch: &Batch<'_>,
        labels: &Tensor,
        _grad_scale: f64,
    ) -> Result<StepOutput> {
        let pixels = batch.pixels()?;
        self.seen.lock().unwrap().push(pixels.clone());
        let logits = (mean_colour(pixels)?.matmul(&self.w.as_tensor().t()?)? * 10.0)?;
        let loss = promptclip_core::loss::cross_entropy(&logits, labels)?;
        let grads = loss.backward()?;
        Ok(StepOutput {
            loss: loss.to_scalar::<f32>()?,
            logits: logits.detach(),
            grads: vec![grads.get(self.w.as_tensor()).expect("a gradient").clone()],
        })
    }
    fn scorer<'a>(
        &'a self,
        _clip: &'a Clip,
        _class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        Ok(Box::new(MeanColourScorer(self, &self.seen)))
    }
}

/// Each row of `rows` (B, ...) as bits, sorted: the batch's images whatever their order.
fn sorted_rows(rows: &Tensor) -> Vec<Vec<u32>> {
    let n = rows.dim(0).unwrap();
    let mut v: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            rows.get(i)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_method_that_takes_images_is_trained_and_scored_on_pixels() {
    let clip = Clip::load(&common::fixtures().join("tiny-clip-hf"), &dev()).unwrap();
    let (names, data) = colours(3, 7, 0..3);
    let n = data.sources.len();
    let learner = MeanColour {
        names,
        w: Var::zeros((3, 3), DType::F32, &dev()).unwrap(),
        seen: Mutex::new(vec![]),
    };
    let center = promptclip_core::features::preprocess_chunk(&clip, &data.sources)
        .unwrap()
        .pixels
        .unwrap();

    // Without augmentation: every step's pixels are center crops, one batch of all the images
    // per epoch here, in the epoch's order.
    let config = TrainConfig {
        epochs: 3,
        batch_size: n,
        augment: false,
        ..TrainConfig::default()
    };
    let cancel = AtomicBool::new(false);
    let s = fit(&clip, &learner, &data, &config, &mut |_| {}, &cancel).unwrap();
    let seen = std::mem::take(&mut *learner.seen.lock().unwrap());
    assert_eq!(seen.len(), 3);
    for pixels in &seen {
        assert_eq!(pixels.dims(), center.dims());
        assert_eq!(sorted_rows(pixels), sorted_rows(&center));
    }
    assert!(s.epoch_loss[2] < s.epoch_loss[0], "{:?}", s.epoch_loss);

    // With augmentation: augmented crops of the same size, not the center crops.
    let config = TrainConfig {
        augment: true,
        ..config
    };
    fit(&clip, &learner, &data, &config, &mut |_| {}, &cancel).unwrap();
    let seen = std::mem::take(&mut *learner.seen.lock().unwrap());
    assert_eq!(seen[0].dims(), center.dims());
    assert_ne!(sorted_rows(&seen[0]), sorted_rows(&center));

    // Prediction scores the images' pixels through the same batch.
    let p = methods::predict(&clip, &learner, &data.sources, None, 64, &mut |_, _| {}).unwrap();
    assert_eq!(p.indices.len(), n);
    let seen = learner.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(sorted_rows(&seen[0]), sorted_rows(&center));
}
