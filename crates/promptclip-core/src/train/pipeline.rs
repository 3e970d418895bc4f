//! The training input pipeline: every step's augmented crops, made ahead of the step that uses
//! them.
//!
//! A producer thread walks the batches in the order the trainer takes them. It decodes each image
//! once (kept in memory within a budget), draws every crop from its own (seed, epoch, image)
//! stream, augments a batch on all cores and hands its 8-bit crops (a quarter of f32's bytes)
//! over a bounded channel. The trainer thread encodes each batch on the training device just
//! before its step, so one thread issues all GPU work, on one stream.
//!
//! An earlier design encoded a whole epoch ahead in the producer, on a second CUDA stream. On an
//! H100 (`promptclip-bench e2e`, 50 steps an epoch) the two threads launching kernels slowed
//! each other more than the overlap gained: 649 ms an epoch, 188 ms more than its steps alone
//! with their images (50 x 9.2 ms). This design: 561 ms, 108 ms more than 50 x 9.1 ms.
use super::augment::{augment_crop, AugmentConfig};
use crate::preprocess::{decode, resize_and_crop, ImageConfig, ImageSource};
use crate::rng::{derive_seed, Rng};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Training images, decoded once and kept while their total stays within a byte budget; the rest
/// are decoded again whenever they are used.
pub struct DecodedImages {
    sources: Vec<ImageSource>,
    cache: Vec<OnceLock<Arc<RgbImage>>>,
    kept: AtomicUsize,
    budget: usize,
}

impl DecodedImages {
    pub fn new(sources: Vec<ImageSource>, budget_bytes: usize) -> Self {
        Self {
            cache: (0..sources.len()).map(|_| OnceLock::new()).collect(),
            sources,
            kept: AtomicUsize::new(0),
            budget: budget_bytes,
        }
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

    /// Decode every image once, on all cores, before training starts, and return those that
    /// cannot be used (input order). A full decode, not a header probe: a file whose header
    /// reads but whose body is corrupt would otherwise fail mid-training. It costs nothing extra
    /// while the images fit the cache budget (they are kept, and the first epoch reuses them);
    /// only images beyond the budget are decoded twice.
    /// Once `cancel` is set the images not yet decoded are passed over (the caller then stops).
    pub fn probe(&self, cancel: &AtomicBool) -> Vec<(usize, Error)> {
        let results: Vec<Option<Error>> = (0..self.len())
            .into_par_iter()
            .map(|i| {
                if cancel.load(Ordering::Relaxed) {
                    None
                } else {
                    self.get(i).err()
                }
            })
            .collect();
        results
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| (i, e)))
            .collect()
    }

    /// Only the images `keep` (input indices, ascending), renumbered from 0, with what was
    /// already decoded of them.
    pub fn retain(self, keep: &[usize]) -> Self {
        let mut cache: Vec<Option<OnceLock<Arc<RgbImage>>>> =
            self.cache.into_iter().map(Some).collect();
        Self {
            sources: keep.iter().map(|&i| self.sources[i].clone()).collect(),
            cache: keep
                .iter()
                .map(|&i| cache[i].take().unwrap_or_default())
                .collect(),
            kept: self.kept,
            budget: self.budget,
        }
    }
}

/// The 8-bit crops (B, S, S, 3) of the images `idx` for `epoch` of a run seeded `seed`, augmented
/// on all cores; errors name the image that failed.
pub fn augmented_crops(
    images: &DecodedImages,
    image_config: &ImageConfig,
    augment: &AugmentConfig,
    seed: u64,
    epoch: usize,
    idx: &[usize],
) -> Result<Tensor> {
    crops_of(image_config, idx, |i| {
        let mut rng = Rng::new(derive_seed(seed, epoch as u64, i as u64));
        augment_crop(images.get(i)?.as_ref(), image_config, augment, &mut rng)
    })
}

/// The model's center crops (B, S, S, 3) of the images `idx` (its preprocessing without the
/// normalisation), from the decode cache, on all cores.
pub fn center_crops(
    images: &DecodedImages,
    image_config: &ImageConfig,
    idx: &[usize],
) -> Result<Tensor> {
    crops_of(image_config, idx, |i| {
        resize_and_crop(images.get(i)?.as_ref(), image_config)
    })
}

/// `crop(i)` of each image of `idx`, made on all cores, as one (B, S, S, 3) tensor; an error
/// names the image it came from.
fn crops_of(
    image_config: &ImageConfig,
    idx: &[usize],
    crop: impl Fn(usize) -> Result<RgbImage> + Sync,
) -> Result<Tensor> {
    let size = image_config.crop as usize;
    let crops: Vec<Result<RgbImage>> = idx.par_iter().map(|&i| crop(i)).collect();
    let mut data = Vec::with_capacity(idx.len() * size * size * 3);
    for (crop, &i) in crops.into_iter().zip(idx) {
        data.extend_from_slice(
            crop.map_err(|e| Error::UnusableImage {
                what: "training image".into(),
                index: i,
                source: Box::new(e),
            })?
            .as_raw(),
        );
    }
    Ok(Tensor::from_vec(
        data,
        (idx.len(), size, size, 3),
        &Device::Cpu,
    )?)
}
