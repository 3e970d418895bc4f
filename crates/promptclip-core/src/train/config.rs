//! A run's settings: the training options as callers give them (every field optional, unknown
//! ones refused by name), resolved on top of the method's recipe and the model's augmentation
//! into the one `TrainConfig` the loop reads, each value checked by name.
use super::augment::AugmentConfig;
use super::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use super::schedule::{LrSchedule, ScheduleKind};
use crate::methods::{OptimizerKind, Recipe};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A run's resolved settings: what the loop reads (`TrainOptions::resolve` makes one).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Which optimiser steps: `sgd` or `adamw` (each with its own settings below).
    pub optimizer: OptimizerKind,
    pub sgd: SgdConfig,
    pub adamw: AdamWConfig,
    pub schedule: ScheduleKind,
    /// Anneal after every batch instead of every epoch.
    pub lr_per_step: bool,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    pub seed: u64,
    /// Random resized crop + flip; off means center-crop features computed once and reused.
    pub augment: bool,
    pub augment_config: AugmentConfig,
    /// Write a checkpoint here every `checkpoint_every` epochs (and after the last).
    pub checkpoint_path: Option<PathBuf>,
    pub checkpoint_every: usize,
    /// Continue from this checkpoint.
    pub resume_from: Option<PathBuf>,
    /// Images per forward pass of the image tower: a step's batch is encoded in chunks of at most
    /// this many.
    pub encode_batch_size: usize,
    /// Decoded training images are kept in memory up to this many bytes (8-bit RGB), so that
    /// each file is read and decoded once; the rest are decoded again every epoch.
    pub decoded_cache_bytes: usize,
    /// Drop training images that cannot be read (missing, corrupt) before training starts and
    /// report them in the summary, instead of failing the run.
    pub skip_unreadable: bool,
    /// A new epoch order every epoch (seeded); off: the data's own order every epoch, as Dassl's
    /// loader without shuffling (to compare a run step by step with the official code's).
    pub shuffle: bool,
    /// The trainable tensors start from this file (a learner file, or prompts under the official
    /// names) instead of the method's initialisation; resuming a checkpoint ignores it.
    pub init_from: Option<InitFrom>,
    /// The run's optimiser steps, when it is counted in steps instead of epochs: it takes as many
    /// epochs as they need and ends mid-epoch after the last, and a per-step cosine anneals over
    /// them (CLIP-LoRA's iterations).
    pub steps: Option<usize>,
    /// Steps per shot of the method's recipe (CLIP-LoRA: 500): `steps` for a run on `shots` per
    /// class, or on the training images per class when no protocol gives the shots.
    pub steps_per_shot: Option<usize>,
    /// Where the cosine ends (torch's `eta_min`).
    pub min_lr: f64,
}

/// A run's starting prompts: the file and the sha256 of its bytes, which checkpoints record (a
/// run resumed with other starting prompts would not be the run it continues).
#[derive(Debug, Clone, PartialEq)]
pub struct InitFrom {
    pub path: PathBuf,
    pub sha256: String,
}

impl InitFrom {
    pub fn of(path: PathBuf) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let digest = Sha256::digest(&bytes);
        Ok(Self {
            path,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

impl Default for TrainConfig {
    /// CoOp's recipe; see [`TrainConfig::for_recipe`].
    fn default() -> Self {
        Self::for_recipe(&Recipe::default())
    }
}

/// Training options as callers give them (JSON from Node): every field may be left out, and then
/// takes the method's recipe or the shared defaults. Unknown fields are refused by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainOptions {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
    pub schedule: Option<ScheduleKind>,
    pub warmup_epochs: Option<usize>,
    pub warmup_lr: Option<f64>,
    pub seed: Option<u64>,
    pub augment: Option<bool>,
    pub checkpoint_path: Option<PathBuf>,
    pub checkpoint_every: Option<usize>,
    pub resume_from: Option<PathBuf>,
    pub encode_batch_size: Option<usize>,
    pub skip_unreadable: Option<bool>,
    /// Shuffle the training images every epoch (default true).
    pub shuffle: Option<bool>,
    /// Start the trainable tensors from this file: a learner file, or safetensors under the
    /// official code's names (`methods::official`).
    pub init_from: Option<PathBuf>,
    /// The protocol's shots per class, for the method's recipe (CoOp: 50, 100 or 200 epochs).
    pub shots: Option<usize>,
    /// The dataset's catalog name, for the method's recipe (CoOp on ImageNet: 50 epochs).
    pub dataset: Option<String>,
    /// Optimiser steps instead of epochs (the run ends mid-epoch after the last): the default of
    /// a method whose recipe counts steps (CLIP-LoRA: 500 x shots).
    pub steps: Option<usize>,
    /// Where the cosine ends (default the recipe's: 0, CLIP-LoRA's 1e-6).
    pub min_lr: Option<f64>,
}

impl TrainOptions {
    /// What the method's recipe is chosen for.
    pub fn recipe_for(&self) -> crate::methods::catalogue::RecipeFor<'_> {
        crate::methods::catalogue::RecipeFor {
            shots: self.shots,
            dataset: self.dataset.as_deref(),
        }
    }

    /// Parse from JSON, naming the field of any error.
    pub fn from_json(options: serde_json::Value) -> Result<Self> {
        crate::methods::parse_options("train", options)
    }

    /// The config these options give on top of a method's recipe.
    pub fn resolve(self, recipe: &Recipe) -> Result<TrainConfig> {
        self.resolve_for_model(recipe, None)
    }

    /// The same, with the augmentation that the model's preprocessing asks for (`image`), where
    /// it asks for one: what a model's training images need is the model's to say.
    pub fn resolve_for_model(
        self,
        recipe: &Recipe,
        image: Option<&crate::preprocess::ImageConfig>,
    ) -> Result<TrainConfig> {
        let mut d = TrainConfig::for_recipe(recipe);
        if let Some(scale) = image.and_then(|i| i.train_crop_scale) {
            d.augment_config.scale = scale;
        }
        if let Some(p) = image.and_then(|i| i.train_flip_p) {
            d.augment_config.flip_p = p;
        }
        if let (OptimizerKind::Adamw, Some(m)) = (d.optimizer, self.momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum {m}: this method trains with AdamW, which has no momentum option (its betas are the recipe's)"
            )));
        }
        let config = TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            sgd: SgdConfig {
                lr: self.lr.unwrap_or(d.sgd.lr),
                momentum: self.momentum.unwrap_or(d.sgd.momentum),
                weight_decay: self.weight_decay.unwrap_or(d.sgd.weight_decay),
            },
            adamw: AdamWConfig {
                lr: self.lr.unwrap_or(d.adamw.lr),
                weight_decay: self.weight_decay.unwrap_or(d.adamw.weight_decay),
                ..d.adamw
            },
            schedule: self.schedule.unwrap_or(d.schedule),
            warmup_epochs: self.warmup_epochs.unwrap_or(d.warmup_epochs),
            warmup_lr: self.warmup_lr.unwrap_or(d.warmup_lr),
            seed: self.seed.unwrap_or(d.seed),
            augment: self.augment.unwrap_or(d.augment),
            checkpoint_path: self.checkpoint_path,
            checkpoint_every: self.checkpoint_every.unwrap_or(d.checkpoint_every),
            resume_from: self.resume_from,
            encode_batch_size: self.encode_batch_size.unwrap_or(d.encode_batch_size),
            skip_unreadable: self.skip_unreadable.unwrap_or(d.skip_unreadable),
            shuffle: self.shuffle.unwrap_or(d.shuffle),
            init_from: self.init_from.map(InitFrom::of).transpose()?,
            // Epochs asked for are whole epochs; otherwise a recipe in steps counts them from the
            // protocol's shots, or later from the data.
            steps: self.steps.or_else(|| {
                d.steps_per_shot
                    .filter(|_| self.epochs.is_none())
                    .zip(self.shots)
                    .map(|(s, shots)| s * shots)
            }),
            steps_per_shot: d.steps_per_shot.filter(|_| self.epochs.is_none()),
            min_lr: self.min_lr.unwrap_or(d.min_lr),
            ..d
        };
        config.validate()?;
        Ok(config)
    }
}

impl TrainConfig {
    /// A method's recipe (optimiser, lr, weight decay, warmup epochs, per-epoch or per-batch
    /// cosine) on the shared defaults: SGD momentum 0.9, AdamW betas (0.9, 0.999), warmup at 1e-5,
    /// random resized crop + flip, seed 1.
    pub fn for_recipe(recipe: &Recipe) -> Self {
        Self {
            epochs: recipe.epochs,
            batch_size: recipe.batch_size,
            optimizer: recipe.optimizer,
            sgd: SgdConfig {
                lr: recipe.lr,
                weight_decay: recipe.weight_decay,
                ..SgdConfig::default()
            },
            adamw: AdamWConfig {
                lr: recipe.lr,
                eps: recipe.eps,
                weight_decay: recipe.weight_decay,
                ..AdamWConfig::default()
            },
            schedule: ScheduleKind::Cosine,
            lr_per_step: recipe.lr_per_step,
            warmup_epochs: recipe.warmup_epochs,
            warmup_lr: 1e-5,
            seed: crate::rng::DEFAULT_SEED,
            augment: true,
            augment_config: AugmentConfig {
                scale: recipe.crop_scale.unwrap_or(AugmentConfig::default().scale),
                ..AugmentConfig::default()
            },
            checkpoint_path: None,
            checkpoint_every: 1,
            resume_from: None,
            encode_batch_size: 64,
            decoded_cache_bytes: 2 << 30,
            skip_unreadable: false,
            shuffle: true,
            init_from: None,
            steps: None,
            steps_per_shot: recipe.steps_per_shot,
            min_lr: recipe.min_lr,
        }
    }

    /// This run counted in steps where it is (`steps`, or `steps_per_shot` x the images per class
    /// of `n` images of `k` classes, rounded, at least 1).
    pub fn with_steps_for(&self, n: usize, k: usize) -> Self {
        let per_class = ((n as f64 / k.max(1) as f64).round() as usize).max(1);
        Self {
            steps: self
                .steps
                .or_else(|| self.steps_per_shot.map(|s| s * per_class)),
            steps_per_shot: None,
            ..self.clone()
        }
    }

    /// This run with the epochs its steps take at `steps_per_epoch` (unchanged without steps).
    pub fn with_epochs_for(&self, steps_per_epoch: usize) -> Self {
        Self {
            epochs: self
                .steps
                .map_or(self.epochs, |s| s.div_ceil(steps_per_epoch.max(1))),
            ..self.clone()
        }
    }

    /// The steps of epoch `epoch` (from 0) that run: all `steps_per_epoch`, but in the epoch where
    /// a run counted in steps ends, those up to its last.
    pub fn steps_in_epoch(&self, epoch: usize, steps_per_epoch: usize) -> usize {
        match self.steps {
            Some(total) => total
                .saturating_sub(epoch * steps_per_epoch)
                .min(steps_per_epoch),
            None => steps_per_epoch,
        }
    }

    /// Every option in range, each refused by name with its value. Numbers must be finite: NaN
    /// compares false with everything, so each range is written to fail for it.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let at_least_1 = [
            ("epochs", self.epochs),
            ("batchSize", self.batch_size),
            ("checkpointEvery", self.checkpoint_every),
            ("encodeBatchSize", self.encode_batch_size),
        ];
        if let Some((name, v)) = at_least_1.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be at least 1, got {v}"));
        }
        if !(self.lr() > 0.0 && self.lr().is_finite()) {
            return bad(format!("lr must be a positive number, got {}", self.lr()));
        }
        if self.steps == Some(0) {
            return bad("steps must be at least 1, got 0".into());
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr()) {
            return bad(format!(
                "minLr must be from 0 to lr ({}), got {}",
                self.lr(),
                self.min_lr
            ));
        }
        let (b1, b2) = self.adamw.betas;
        let adamw_ok = (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && self.adamw.eps.is_finite()
            && self.adamw.eps > 0.0;
        if self.optimizer == OptimizerKind::Adamw && !adamw_ok {
            return bad(format!(
                "AdamW needs betas in [0, 1) and a positive eps, got betas ({b1}, {b2}) and eps {}",
                self.adamw.eps
            ));
        }
        let numbers = [
            (
                "momentum",
                self.sgd.momentum,
                "in [0, 1)",
                (0.0..1.0).contains(&self.sgd.momentum),
            ),
            (
                "weightDecay",
                self.weight_decay(),
                "a finite non-negative number",
                self.weight_decay().is_finite() && self.weight_decay() >= 0.0,
            ),
            (
                "warmupLr",
                self.warmup_lr,
                "a finite non-negative number",
                self.warmup_lr.is_finite() && self.warmup_lr >= 0.0,
            ),
        ];
        if let Some((name, v, want, _)) = numbers.iter().find(|n| !n.3) {
            return bad(format!("{name} must be {want}, got {v}"));
        }
        let a = &self.augment_config;
        let ok = |(lo, hi): (f64, f64)| lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi;
        if !(ok(a.scale) && a.scale.1 <= 1.0 && ok(a.ratio) && (0.0..=1.0).contains(&a.flip_p)) {
            return bad(format!(
                "augmentation must have 0 < scale min <= max <= 1, 0 < ratio min <= max and flip probability in [0, 1], got scale {:?}, ratio {:?}, flip {}",
                a.scale, a.ratio, a.flip_p
            ));
        }
        Ok(())
    }

    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            kind: self.schedule,
            base_lr: self.lr(),
            max_epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            warmup_lr: self.warmup_lr,
            per_step: self.lr_per_step,
            total_steps: self.steps,
            min_lr: self.min_lr,
        }
    }

    /// The base learning rate of the optimiser that steps.
    pub fn lr(&self) -> f64 {
        match self.optimizer {
            OptimizerKind::Sgd => self.sgd.lr,
            OptimizerKind::Adamw => self.adamw.lr,
        }
    }

    pub fn weight_decay(&self) -> f64 {
        match self.optimizer {
            OptimizerKind::Sgd => self.sgd.weight_decay,
            OptimizerKind::Adamw => self.adamw.weight_decay,
        }
    }

    /// A fresh optimiser of this run for `n_params` parameters.
    pub fn new_optimizer(&self, n_params: usize) -> Optimizer {
        match self.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(self.sgd, n_params)),
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(self.adamw, n_params)),
        }
    }
}
