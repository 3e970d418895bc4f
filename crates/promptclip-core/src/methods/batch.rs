//! A batch of images as a learner's forward sees it: the model's input pixels, and their frozen
//! image features computed from them on first use. A method reads what its forward takes
//! (`catalogue::Takes`): the feature methods read `features()`, and a method that runs the image
//! encoder with its own prompts or weights reads `pixels()`. The trainer hands feature methods
//! batches of features it cached once per run (augmentation off), which have no pixels.
use crate::clip::{Clip, ImageEncoder};
use crate::{Error, Result};
use candle_core::Tensor;
use std::sync::OnceLock;

/// The frozen image tower that encodes a batch's pixels.
#[derive(Clone, Copy)]
pub enum FrozenTower<'a> {
    Clip(&'a Clip),
    /// The training pipeline's encoder (on the training device).
    Encoder(&'a ImageEncoder),
}

impl FrozenTower<'_> {
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        match self {
            Self::Clip(c) => c.encode_image(pixels),
            Self::Encoder(e) => e.encode_pixels(pixels),
        }
    }
}

pub struct Batch<'a> {
    len: usize,
    /// (B, 3, S, S) in the model's dtype, the tower that encodes them, and the images per forward
    /// pass of that tower.
    pixels: Option<(Tensor, FrozenTower<'a>, usize)>,
    /// (B, E), unnormalised.
    features: OnceLock<Tensor>,
    /// The seed of the step's random layers (CLIP-LoRA's dropout): the trainer's, from the run's
    /// seed and the step, so that a resumed run draws what the uninterrupted one did.
    step_seed: u64,
}

impl<'a> Batch<'a> {
    /// A batch of frozen features (B, E) only.
    pub fn of_features(features: Tensor) -> Result<Batch<'static>> {
        let len = features.dims().first().copied().unwrap_or(0);
        Ok(Batch {
            len,
            pixels: None,
            features: OnceLock::from(features),
            step_seed: 0,
        })
    }

    /// A batch of pixels (B, 3, S, S), encoded by `tower` in forward passes of at most `chunk`
    /// images when its features are asked for.
    pub fn of_pixels(pixels: Tensor, tower: FrozenTower<'a>, chunk: usize) -> Result<Self> {
        let len = pixels.dims().first().copied().unwrap_or(0);
        Ok(Self {
            len,
            pixels: Some((pixels, tower, chunk.max(1))),
            features: OnceLock::new(),
            step_seed: 0,
        })
    }

    /// This batch with its step's seed (see `step_seed`).
    pub fn with_step_seed(self, seed: u64) -> Self {
        Self {
            step_seed: seed,
            ..self
        }
    }

    /// The seed of this step's random layers (0 outside training).
    pub fn step_seed(&self) -> u64 {
        self.step_seed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The model's input pixels (B, 3, S, S), for methods that run the image encoder themselves.
    pub fn pixels(&self) -> Result<&Tensor> {
        self.pixels.as_ref().map(|(p, _, _)| p).ok_or_else(|| {
            Error::Internal(
                "this batch holds cached image features only: a method that takes images must say so in its catalogue entry".into(),
            )
        })
    }

    /// The frozen image encoder's features (B, E), unnormalised: computed once, on first use.
    pub fn features(&self) -> Result<Tensor> {
        if let Some(f) = self.features.get() {
            return Ok(f.clone());
        }
        let (pixels, tower, chunk) = self
            .pixels
            .as_ref()
            .ok_or_else(|| Error::Internal("an empty batch".into()))?;
        let parts = (0..self.len)
            .step_by(*chunk)
            .map(|i| tower.encode(&pixels.narrow(0, i, (*chunk).min(self.len - i))?))
            .collect::<Result<Vec<_>>>()?;
        let f = if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(self.features.get_or_init(|| f).clone())
    }
}
