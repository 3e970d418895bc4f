//! The training input pipeline: every training image's augmented features for an epoch,
//! computed one epoch ahead of the steps that use them.
//!
//! CLIP's image tower is frozen, so an augmented image's features do not depend on the learned
//! parameters: they can be computed before the steps that consume them, all of an epoch at once,
//! in large batches. A producer thread does this while the trainer runs the previous epoch's
//! steps. It decodes each image once (kept in memory within a budget), draws every crop from its
//! own (seed, epoch, image) stream as the per-step path did, augments on all cores, uploads 8-bit
//! crops (a quarter of f32's bytes) and encodes them. On a GPU it runs on a second stream, so
//! image encoding overlaps with the text side's many small kernels.
use super::augment::augment_crop;
use super::trainer::{derive_seed, TrainConfig};
use crate::clip::ImageEncoder;
use crate::preprocess::{decode, ImageSource};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Training images, decoded once and kept while their total stays within a byte budget; the rest
/// are decoded again whenever they are used.
pub struct DecodedImages<'a> {
    sources: &'a [ImageSource],
    cache: Vec<OnceLock<Arc<RgbImage>>>,
    kept: AtomicUsize,
    budget: usize,
}

impl<'a> DecodedImages<'a> {
    pub fn new(sources: &'a [ImageSource], budget_bytes: usize) -> Self {
        Self { sources, cache: (0..sources.len()).map(|_| OnceLock::new()).collect(), kept: AtomicUsize::new(0), budget: budget_bytes }
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn get(&self, i: usize) -> Result<Arc<RgbImage>> {
        if let Some(img) = self.cache[i].get() {
            return Ok(img.clone());
        }
        let img = Arc::new(decode(&self.sources[i])?);
        let bytes = img.as_raw().len();
        if self.kept.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.budget {
            let _ = self.cache[i].set(img.clone());
        } else {
            self.kept.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok(img)
    }
}

/// Augmented features (N, E) of every training image for `epoch`, on `target`. `halted` is
/// checked between batches (the trainer stopped, or the user cancelled).
pub fn epoch_features(encoder: &ImageEncoder, images: &DecodedImages<'_>, config: &TrainConfig, epoch: usize, target: &Device, halted: &dyn Fn() -> bool) -> Result<Tensor> {
    let size = encoder.image_config.crop as usize;
    let n = images.len();
    let batch = config.encode_batch_size.max(1);
    let mut parts = Vec::with_capacity(n.div_ceil(batch));
    for start in (0..n).step_by(batch) {
        if halted() {
            return Err(Error::Cancelled);
        }
        let idx: Vec<usize> = (start..n.min(start + batch)).collect();
        let crops: Vec<Result<RgbImage>> = idx
            .par_iter()
            .map(|&i| {
                let mut rng = Rng::new(derive_seed(config.seed, epoch as u64, i as u64));
                augment_crop(images.get(i)?.as_ref(), &encoder.image_config, &config.augment_config, &mut rng)
            })
            .collect();
        let mut data = Vec::with_capacity(idx.len() * size * size * 3);
        for (crop, &i) in crops.into_iter().zip(&idx) {
            data.extend_from_slice(crop.map_err(|e| Error::InvalidArgument(format!("training image {i} cannot be used: {e}")))?.as_raw());
        }
        // The encoder's device computes asynchronously: the next batch is augmented meanwhile.
        parts.push(encoder.encode_crops(Tensor::from_vec(data, (idx.len(), size, size, 3), &Device::Cpu)?)?);
    }
    // Through the host (a few MB): the read back completes before this returns, so the trainer's
    // stream never reads memory that the encoder's stream still writes or has already reused
    // (the two streams are not otherwise ordered).
    Ok(Tensor::cat(&parts, 0)?.to_device(&Device::Cpu)?.to_device(target)?)
}
