//! A run's data: the labelled training images, which of them can be read (skipUnreadable), their
//! center-crop features encoded once, and what a method's preparation asks of them through
//! `FitData` (augmented passes, the validation split), each computed once on request.
use super::config::TrainConfig;
use super::pipeline::{augmented_crops, DecodedImages};
use crate::clip::Clip;
use crate::methods::FitData;
use crate::preprocess::ImageSource;
use crate::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// Images with their class indices (into the learner's class list).
#[derive(Debug, Clone)]
pub struct LabelledImages {
    pub sources: Vec<ImageSource>,
    pub labels: Vec<usize>,
}

impl LabelledImages {
    pub fn validate(&self, num_classes: usize) -> Result<()> {
        if self.sources.is_empty() {
            return Err(Error::InvalidArgument("the dataset is empty".into()));
        }
        if self.sources.len() != self.labels.len() {
            return Err(Error::InvalidArgument(format!(
                "{} images but {} labels",
                self.sources.len(),
                self.labels.len()
            )));
        }
        if let Some((i, l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= num_classes)
        {
            return Err(Error::InvalidArgument(format!(
                "labels[{i}] = {l} is out of range for {num_classes} classes"
            )));
        }
        Ok(())
    }
}

/// A training image left out by `skip_unreadable`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedImage {
    /// Its index in the dataset as given.
    pub index: usize,
    /// Why, as the error's code and message (E_FILE_NOT_FOUND, E_IMAGE_DECODE, ...).
    pub code: &'static str,
    pub message: String,
}

impl LabelledImages {
    /// The images `keep` (ascending input indices), borrowed when that is all of them.
    pub(super) fn subset(&self, keep: &[usize]) -> Cow<'_, LabelledImages> {
        if keep.len() == self.sources.len() {
            return Cow::Borrowed(self);
        }
        Cow::Owned(LabelledImages {
            sources: keep.iter().map(|&i| self.sources[i].clone()).collect(),
            labels: keep.iter().map(|&i| self.labels[i]).collect(),
        })
    }
}

/// The indices of the training images to use, given those that cannot be read: all others when
/// skipping (the failures go to `skipped`), else the first failure is the error, naming the image.
pub(super) fn usable(
    data: &LabelledImages,
    failures: Vec<(usize, Error)>,
    skip: bool,
    skipped: &mut Vec<SkippedImage>,
) -> Result<Vec<usize>> {
    let n = data.sources.len();
    if !skip {
        if let Some((index, e)) = failures.into_iter().next() {
            return Err(Error::UnusableImage {
                what: "training image".into(),
                index,
                source: Box::new(e),
            });
        }
        return Ok((0..n).collect());
    }
    if failures.len() == n {
        let (index, e) = failures.into_iter().next().expect("a non-empty dataset");
        return Err(Error::InvalidArgument(format!(
            "none of the {n} training images can be read (skipUnreadable); training image {index}: {e}"
        )));
    }
    let mut bad = vec![false; n];
    for (index, e) in failures {
        bad[index] = true;
        skipped.push(SkippedImage {
            index,
            code: e.code(),
            message: e.to_string(),
        });
    }
    Ok((0..n).filter(|&i| !bad[i]).collect())
}

/// `Err(Cancelled)` once `cancel` is set: the one-time work before the first step (decoding,
/// encoding) checks it between batches, as the steps do.
pub(super) fn cancelled_if(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::cancelled())
    } else {
        Ok(())
    }
}

/// Center-crop features of the usable training images (each decoded once), and their indices.
/// Cancelling stops the encoding between batches: on a large set it is most of a short run.
pub(super) fn center_crop_features(
    clip: &Clip,
    data: &LabelledImages,
    config: &TrainConfig,
    skipped: &mut Vec<SkippedImage>,
    cancel: &AtomicBool,
) -> Result<(Tensor, Vec<usize>)> {
    let enc = crate::features::encode_with_progress(
        clip,
        &data.sources,
        crate::features::BATCH_SIZE,
        &mut |_, _| cancelled_if(cancel),
    )?;
    let keep = usable(data, enc.failures, config.skip_unreadable, skipped)?;
    debug_assert_eq!(keep, enc.indices);
    let features = enc
        .features
        .ok_or_else(|| Error::Internal("no features of readable images".into()))?;
    Ok((features, keep))
}

/// The run's data as a method's `prepare` and `finish` see it ([`FitData`]): what the trainer
/// already has (the center-crop features, the decoded images), and the rest computed on request.
pub(super) struct RunData<'a> {
    pub(super) clip: &'a Clip,
    pub(super) data: &'a LabelledImages,
    pub(super) features: Option<Tensor>,
    pub(super) images: Option<DecodedImages>,
    pub(super) validation: Option<&'a LabelledImages>,
    pub(super) validation_features: Option<Tensor>,
    pub(super) config: &'a TrainConfig,
    pub(super) cancel: &'a AtomicBool,
}

/// The random streams of augmented passes for a method's preparation (Tip-Adapter's cache): far
/// from every training epoch's, so that the passes and the epochs never share crops.
const PREPARE_PASS_STREAM: usize = 1 << 40;

impl FitData for RunData<'_> {
    fn labels(&self) -> &[usize] {
        &self.data.labels
    }

    fn features(&mut self) -> Result<Tensor> {
        if let Some(f) = &self.features {
            return Ok(f.clone());
        }
        let cancel = self.cancel;
        let enc = crate::features::encode_with_progress(
            self.clip,
            &self.data.sources,
            crate::features::BATCH_SIZE,
            &mut |_, _| cancelled_if(cancel),
        )?;
        // The images were all read once already (the decode cache's probe).
        if let Some((index, e)) = enc.failures.into_iter().next() {
            return Err(Error::UnusableImage {
                what: "training image".into(),
                index,
                source: Box::new(e),
            });
        }
        let f = enc
            .features
            .ok_or_else(|| Error::Internal("no features of readable images".into()))?;
        self.features = Some(f.clone());
        Ok(f)
    }

    fn augmented_features(&mut self, passes: usize, crop_scale: (f64, f64)) -> Result<Tensor> {
        if passes == 0 {
            return Err(Error::InvalidArgument(
                "the augmented passes must be at least 1".into(),
            ));
        }
        let images = self.images.get_or_insert_with(|| {
            DecodedImages::new(self.data.sources.clone(), self.config.decoded_cache_bytes)
        });
        let mut config = self.config.clone();
        config.augment_config.scale = crop_scale;
        config.validate()?;
        let encoder = self.clip.image_encoder(&self.clip.device)?;
        let all: Vec<usize> = (0..images.len()).collect();
        let mut out = Vec::with_capacity(passes);
        for pass in 0..passes {
            let mut parts = vec![];
            for chunk in all.chunks(config.encode_batch_size) {
                cancelled_if(self.cancel)?;
                let crops = augmented_crops(
                    images,
                    &self.clip.image_config,
                    &config.augment_config,
                    config.seed,
                    PREPARE_PASS_STREAM + pass,
                    chunk,
                )?;
                parts.push(encoder.encode_crops(crops)?);
            }
            out.push(Tensor::cat(&parts, 0)?);
        }
        Ok(Tensor::stack(&out, 0)?)
    }

    fn validation(&mut self) -> Result<Option<(Tensor, Vec<usize>)>> {
        let Some(v) = self.validation else {
            return Ok(None);
        };
        if self.validation_features.is_none() {
            cancelled_if(self.cancel)?;
            self.validation_features = Some(crate::features::encode_all(
                self.clip,
                &v.sources,
                "validation image",
            )?);
        }
        Ok(self
            .validation_features
            .clone()
            .map(|f| (f, v.labels.clone())))
    }

    fn check_cancelled(&self) -> Result<()> {
        cancelled_if(self.cancel)
    }
}
