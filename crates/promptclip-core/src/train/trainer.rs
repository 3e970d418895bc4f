//! The training loop every method shares: the Dassl recipe of CoOp and its successors (SGD with
//! momentum and weight decay, constant warmup then cosine per epoch, random resized crop + flip),
//! seeded end to end, with atomic checkpoints that resume to the same result as an uninterrupted
//! run. Methods fitted on fixed features (the linear probe) take their own path.
use super::augment::AugmentConfig;
use super::checkpoint::{self, CheckpointMeta, RunConfig, CHECKPOINT_FORMAT, CHECKPOINT_VERSION};
use super::optim::{all_finite, AdamW, AdamWConfig, LossScaler, Optimizer, Sgd, SgdConfig};
use super::pipeline::{augmented_crops, DecodedImages};
use super::schedule::{LrSchedule, ScheduleKind};
use crate::clip::Clip;
use crate::methods::catalogue::{Fitting, Takes};
use crate::methods::io::first_non_finite;
use crate::methods::{Batch, FitData, FrozenTower, Method, OptimizerKind, Recipe, StepOutput};
use crate::preprocess::ImageSource;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
    /// The protocol's shots per class, for the method's recipe (CoOp: 50, 100 or 200 epochs).
    pub shots: Option<usize>,
    /// The dataset's catalog name, for the method's recipe (CoOp on ImageNet: 50 epochs).
    pub dataset: Option<String>,
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
                ..d.sgd
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
            seed: 1,
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
                "dampening",
                self.sgd.dampening,
                "in [0, 1]",
                (0.0..=1.0).contains(&self.sgd.dampening),
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

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The epoch this step belongs to, 1-based (1..=epochs).
    pub epoch: usize,
    pub epochs: usize,
    /// Step within the epoch, 1-based.
    pub step: usize,
    pub steps_per_epoch: usize,
    pub global_step: usize,
    /// This batch's loss.
    pub loss: f32,
    /// Mean loss and accuracy (percent, as every accuracy here) over the epoch so far.
    pub epoch_loss: f32,
    pub epoch_accuracy: f32,
    pub lr: f64,
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

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub epochs: usize,
    /// Epochs already done when this run started (0 for a fresh run, k after resuming from a
    /// checkpoint written after epoch k).
    pub start_epoch: usize,
    /// Steps of epoch `start_epoch` (0-based) already done when this run started: more than 0
    /// only when resumed from a cancelled run's mid-epoch checkpoint.
    pub start_step: usize,
    /// Training images left out because they could not be read (`skip_unreadable`).
    pub skipped: Vec<SkippedImage>,
    pub global_step: usize,
    /// Mean loss and accuracy (percent) of each epoch run.
    pub epoch_loss: Vec<f32>,
    pub epoch_accuracy: Vec<f32>,
    pub seconds: f64,
    /// What a method's preparation and closing search report (the linear probe's C search,
    /// Tip-Adapter's alpha and beta).
    pub details: Option<serde_json::Value>,
    /// Their one-line accounts, in order.
    pub fitted: Vec<String>,
}

/// Independent random stream per (seed, a, b): order of work across threads never matters.
pub fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// Train `model` on `data`. `on_progress` is called after every step; `cancel` stops training
/// (with `Error::Cancelled`) at the next step boundary, after writing a checkpoint there when
/// `checkpoint_path` is set, from which `resume_from` continues at that very step.
pub fn fit(
    clip: &Clip,
    model: &dyn Method,
    data: &LabelledImages,
    config: &TrainConfig,
    on_progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    fit_with_validation(clip, model, data, None, config, on_progress, cancel)
}

/// `fit`, with a validation split for methods that choose something on one (the linear probe's
/// C, Tip-Adapter's alpha and beta); methods that use none never read it.
///
/// The learner's life: its `prepare` sees the training (and validation) data and may allocate
/// state; then, when its catalogue entry says it trains by SGD, the epochs (checkpointed and
/// resumable); then its `finish`.
pub fn fit_with_validation(
    clip: &Clip,
    model: &dyn Method,
    data: &LabelledImages,
    validation: Option<&LabelledImages>,
    config: &TrainConfig,
    on_progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    config.validate()?;
    let k = model.class_names().len();
    data.validate(k)?;
    if let Some(v) = validation {
        v.validate(k)
            .map_err(|e| Error::InvalidArgument(format!("validation set: {e}")))?;
    }
    let started = Instant::now();
    let trains = model.fitting() == Fitting::Sgd;
    // A method that runs the image encoder itself gets pixels: no features are cached for it.
    let takes_images = model.takes() == Takes::Images;
    // Before any work: a checkpoint that cannot be written, or one that cannot be resumed with
    // these options, would otherwise fail the run only after the images are read.
    let resumed = match (&config.resume_from, trains) {
        (Some(path), true) => Some((checkpoint_for(path, clip, config)?, path.clone())),
        _ => None,
    };
    if let (Some(path), true) = (&config.checkpoint_path, trains) {
        crate::files::check_writable(path)?;
    }

    // The usable training images. With augmentation every image is decoded once up front into
    // the decode cache (DecodedImages::probe), and the input pipeline's producer thread makes
    // each step's augmented crops ahead of the step (train/pipeline.rs); without it every epoch
    // sees the same center crops, encoded once. Either is where unreadable images show.
    let mut skipped = vec![];
    let augment = trains && config.augment;
    let (fixed, images, data) = if augment || (trains && takes_images) {
        let images = DecodedImages::new(data.sources.clone(), config.decoded_cache_bytes);
        let failures = images.probe(cancel);
        cancelled_if(cancel)?;
        let keep = usable(data, failures, config.skip_unreadable, &mut skipped)?;
        let images = if skipped.is_empty() {
            images
        } else {
            images.retain(&keep)
        };
        (None, Some(images), data.subset(&keep))
    } else {
        let (features, keep) = center_crop_features(clip, data, config, &mut skipped, cancel)?;
        (Some(features), None, data.subset(&keep))
    };
    let mut fit_data = RunData {
        clip,
        data: data.as_ref(),
        features: fixed,
        images,
        validation,
        validation_features: None,
        config,
        cancel,
    };
    let prepared = model.prepare(clip, &mut fit_data)?;
    cancelled_if(cancel)?;
    if let Some(name) = first_non_finite(&model.vars())? {
        return Err(Error::NonFiniteParams(format!(
            "the fit left parameter `{name}` non-finite"
        )));
    }
    let mut summary = if trains {
        train_epochs(clip, model, &fit_data, config, resumed, on_progress, cancel)?
    } else {
        TrainSummary {
            epochs: 0,
            start_epoch: 0,
            start_step: 0,
            skipped: vec![],
            global_step: 0,
            epoch_loss: vec![],
            epoch_accuracy: vec![],
            seconds: 0.0,
            details: None,
            fitted: vec![],
        }
    };
    let finished = model.finish(clip, &mut fit_data)?;
    for report in [&prepared, &finished].into_iter().flatten() {
        summary.fitted.push(report.summary.clone());
        if !trains {
            summary.epoch_loss.extend(report.loss);
            summary.epoch_accuracy.extend(report.accuracy);
        }
        summary.details = Some(match summary.details.take() {
            Some(serde_json::Value::Object(mut a)) => {
                if let serde_json::Value::Object(b) = &report.details {
                    a.extend(b.clone());
                }
                serde_json::Value::Object(a)
            }
            _ => report.details.clone(),
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.skipped = skipped;
    Ok(summary)
}

/// The checkpoint at `path`, checked against this run's options (the learner is checked once it
/// is prepared: its state's shapes depend on the data).
fn checkpoint_for(
    path: &std::path::Path,
    clip: &Clip,
    config: &TrainConfig,
) -> Result<checkpoint::Loaded> {
    let ck = checkpoint::load(path, &clip.device)?;
    let m = &ck.meta;
    // Every option that changes the run must be as it was, each named with both values.
    let mut changed: Vec<(&str, String, String)> = [
        ("seed", m.seed.to_string(), config.seed.to_string()),
        ("epochs", m.epochs.to_string(), config.epochs.to_string()),
        (
            "batchSize",
            m.batch_size.to_string(),
            config.batch_size.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .collect();
    if let Some(run) = &m.run {
        changed.extend(run.differences(&RunConfig::of(config)));
    }
    if !changed.is_empty() {
        let list: Vec<String> = changed
            .iter()
            .map(|(name, was, now)| format!("{name} was {was}, this run has {now}"))
            .collect();
        return Err(Error::InvalidArgument(format!(
            "{}: cannot resume, the run would change: {} (resume with the options the checkpoint was made with)",
            path.display(),
            list.join("; ")
        )));
    }
    Ok(ck)
}

/// The SGD epochs of a prepared learner, from a checkpoint when resuming.
fn train_epochs(
    clip: &Clip,
    model: &dyn Method,
    fit_data: &RunData<'_>,
    config: &TrainConfig,
    resumed: Option<(checkpoint::Loaded, PathBuf)>,
    on_progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    let vars = model.vars();
    let mut optimizer = config.new_optimizer(vars.len());
    // fp16 weights: loss scaling, as the official `amp` path (bf16 has fp32's range).
    let mut scaler = (clip.dtype == DType::F16).then(LossScaler::default);
    let mut start = Position::default();
    // Each completed epoch's mean loss and accuracy, from the checkpoint when resuming.
    let mut history: (Vec<f32>, Vec<f32>) = (vec![], vec![]);
    let data = fit_data.data;
    if let Some((ck, path)) = resumed {
        let m = &ck.meta;
        let now = model.meta();
        if m.model != now {
            return Err(Error::InvalidArgument(format!(
                "{}: cannot resume, the checkpoint was made with a different learner: {} (resume with the learner the checkpoint was made with)",
                path.display(),
                learner_differences(&m.model, &now).join("; ")
            )));
        }
        if let Some(n) = m.num_images {
            if n != data.sources.len() {
                return Err(Error::InvalidArgument(format!(
                    "{}: cannot resume, the checkpoint was made with {n} training images, this run has {}",
                    path.display(),
                    data.sources.len()
                )));
            }
        }
        for (name, var) in &vars {
            let p = ck.params.get(name).ok_or_else(|| Error::MissingTensor {
                name: format!("param.{name}"),
                path: path.clone(),
            })?;
            if p.dims() != var.dims() {
                return Err(Error::ShapeMismatch {
                    name: format!("param.{name}"),
                    path: path.clone(),
                    expected: var.dims().to_vec(),
                    actual: p.dims().to_vec(),
                });
            }
            var.set(&p.to_dtype(var.dtype())?)?;
        }
        optimizer.restore(&vars, &ck.optimizer, m.global_step, &path)?;
        start = Position {
            epoch: m.epochs_done,
            step: m.step_in_epoch,
            global_step: m.global_step,
            loss_sum: m.epoch_loss_sum,
            correct: m.epoch_correct,
            seen: m.epoch_seen,
        };
        history = (
            m.epoch_loss_history.clone(),
            m.epoch_accuracy_history.clone(),
        );
        if scaler.is_some() {
            scaler = Some(m.loss_scaler.unwrap_or_default());
        }
    }
    let (bs, steps_per_epoch) = step_shape(data.sources.len(), config.batch_size);
    if start.step >= steps_per_epoch {
        return Err(Error::InvalidArgument(format!(
            "cannot resume at step {} of an epoch of {steps_per_epoch} steps",
            start.step + 1
        )));
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Tensor>>(PREFETCH_BATCHES);
        if let (Some(images), true) = (&fit_data.images, config.augment) {
            let (image_config, stop) = (&clip.image_config, &stop);
            scope.spawn(move || {
                for epoch in start.epoch..config.epochs {
                    let order = epoch_order(config.seed, epoch, images.len());
                    // Each crop's random stream derives from (seed, epoch, image), not from the
                    // step: a run resumed mid-epoch starts at its step with the same crops.
                    let first = if epoch == start.epoch { start.step } else { 0 };
                    for step in first..steps_per_epoch {
                        if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                            return;
                        }
                        let crops = augmented_crops(
                            images,
                            image_config,
                            config,
                            epoch,
                            &order[step * bs..(step + 1) * bs],
                        );
                        let failed = crops.is_err();
                        if tx.send(crops).is_err() || failed {
                            return;
                        }
                    }
                }
            });
        }
        let encoder = clip.image_encoder(&clip.device)?;
        let mut batch_for = |idx: &[usize]| -> Result<Batch<'_>> {
            if !config.augment && fit_data.features.is_none() {
                // Pixels without augmentation (a method that takes images): the center crops.
                let sources: Vec<_> = idx.iter().map(|&i| data.sources[i].clone()).collect();
                let p = crate::features::preprocess_chunk(clip, &sources)?;
                if let Some((j, e)) = p.failures.into_iter().next() {
                    return Err(Error::UnusableImage {
                        what: "training image".into(),
                        index: idx[j],
                        source: Box::new(e),
                    });
                }
                let pixels = p
                    .pixels
                    .ok_or_else(|| Error::Internal("an empty training batch".into()))?;
                return Batch::of_pixels(
                    pixels,
                    FrozenTower::Encoder(&encoder),
                    config.encode_batch_size,
                );
            }
            match &fit_data.features {
                Some(f) => Batch::of_features(f.index_select(
                    &Tensor::from_vec(
                        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        idx.len(),
                        &clip.device,
                    )?,
                    0,
                )?),
                None => {
                    // The producer walks the same batches in the same order.
                    // The producer stops early only when cancelled (or after an error it sent).
                    let stopped = || {
                        if cancel.load(Ordering::Relaxed) {
                            Error::cancelled()
                        } else {
                            Error::Internal("the training input pipeline stopped".into())
                        }
                    };
                    let crops = rx.recv().map_err(|_| stopped())??;
                    Batch::of_pixels(
                        encoder.pixels_of_crops(crops)?,
                        FrozenTower::Encoder(&encoder),
                        config.encode_batch_size,
                    )
                }
            }
        };
        let summary = run_epochs(
            clip,
            model,
            data,
            config,
            &mut optimizer,
            &mut scaler,
            start,
            history,
            &mut batch_for,
            on_progress,
            cancel,
        );
        // A producer still at work stops at its next batch.
        stop.store(true, Ordering::Relaxed);
        summary
    })
}

/// The run's data as a method's `prepare` and `finish` see it ([`FitData`]): what the trainer
/// already has (the center-crop features, the decoded images), and the rest computed on request.
struct RunData<'a> {
    clip: &'a Clip,
    data: &'a LabelledImages,
    features: Option<Tensor>,
    images: Option<DecodedImages>,
    validation: Option<&'a LabelledImages>,
    validation_features: Option<Tensor>,
    config: &'a TrainConfig,
    cancel: &'a AtomicBool,
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
                    &config,
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

impl LabelledImages {
    /// The images `keep` (ascending input indices), borrowed when that is all of them.
    fn subset(&self, keep: &[usize]) -> Cow<'_, LabelledImages> {
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
fn usable(
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
fn cancelled_if(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::cancelled())
    } else {
        Ok(())
    }
}

/// Center-crop features of the usable training images (each decoded once), and their indices.
/// Cancelling stops the encoding between batches: on a large set it is most of a short run.
fn center_crop_features(
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

/// Batches the input pipeline keeps ready ahead of the steps.
const PREFETCH_BATCHES: usize = 8;

/// The batch size and steps per epoch for `n` images: as Dassl's train loader, the last
/// incomplete batch is dropped when there is more than one batch.
fn step_shape(n: usize, batch_size: usize) -> (usize, usize) {
    (
        batch_size.min(n),
        if n >= batch_size { n / batch_size } else { 1 },
    )
}

/// Epoch `epoch`'s order of the `n` training images.
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(derive_seed(seed, epoch as u64, u64::MAX)).shuffle(&mut order);
    order
}

/// What differs between the learner a checkpoint was made with and this one, each named with
/// both values: the method, each option, the class list, the tensors' shapes (another CLIP's
/// checkpoint shows there: its widths differ).
fn learner_differences(
    was: &crate::methods::LearnerMeta,
    now: &crate::methods::LearnerMeta,
) -> Vec<String> {
    let mut out = vec![];
    if was.method != now.method {
        out.push(format!(
            "method was {}, this run has {}",
            was.method, now.method
        ));
    }
    let empty = serde_json::Map::new();
    let (a, b) = (
        was.options.as_object().unwrap_or(&empty),
        now.options.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        if a.get(k) != b.get(k) {
            out.push(format!(
                "{k} was {}, this run has {}",
                show(a.get(k)),
                show(b.get(k))
            ));
        }
    }
    if was.class_names != now.class_names {
        let first = was
            .class_names
            .iter()
            .zip(&now.class_names)
            .position(|(x, y)| x != y);
        out.push(match first {
            Some(i) => format!(
                "class {i} was {:?}, this run has {:?}",
                was.class_names[i], now.class_names[i]
            ),
            None => format!(
                "the classes were {}, this run has {}",
                was.class_names.len(),
                now.class_names.len()
            ),
        });
    }
    if was.params != now.params && out.is_empty() {
        let shapes = |p: &[(String, Vec<usize>)]| {
            p.iter()
                .map(|(n, s)| format!("{n} {s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "the learned tensors were {}, this run has {} (a checkpoint of another CLIP?)",
            shapes(&was.params),
            shapes(&now.params)
        ));
    }
    if out.is_empty() {
        out.push("its description differs".into());
    }
    out
}

/// Where training stands between two steps: `step` steps of epoch `epoch` (both 0-based) done,
/// with that epoch's running sums so far. What a checkpoint records and a resumed run starts at.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    epoch: usize,
    step: usize,
    global_step: usize,
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

/// Write a checkpoint of the state at `at`, with the completed epochs' curve.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    path: &std::path::Path,
    model: &dyn Method,
    config: &TrainConfig,
    num_images: usize,
    optimizer: &Optimizer,
    scaler: &Option<LossScaler>,
    at: Position,
    history: (&[f32], &[f32]),
) -> Result<()> {
    let vars = model.vars();
    let meta = CheckpointMeta {
        format: CHECKPOINT_FORMAT.into(),
        format_version: CHECKPOINT_VERSION,
        epochs_done: at.epoch,
        step_in_epoch: at.step,
        epoch_loss_sum: at.loss_sum,
        epoch_correct: at.correct,
        epoch_seen: at.seen,
        epoch_loss_history: history.0.to_vec(),
        epoch_accuracy_history: history.1.to_vec(),
        num_images: Some(num_images),
        global_step: at.global_step,
        seed: config.seed,
        epochs: config.epochs,
        batch_size: config.batch_size,
        model: model.meta(),
        loss_scaler: *scaler,
        run: Some(RunConfig::of(config)),
    };
    let params: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    checkpoint::save(path, &meta, &params, &optimizer.state(&names))
}

/// The epochs from `start` on, each step's batch from `batch_for` given the step's images,
/// called in step order.
#[allow(clippy::too_many_arguments)]
fn run_epochs<'b>(
    clip: &Clip,
    model: &dyn Method,
    data: &LabelledImages,
    config: &TrainConfig,
    optimizer: &mut Optimizer,
    scaler: &mut Option<LossScaler>,
    start: Position,
    history: (Vec<f32>, Vec<f32>),
    batch_for: &mut dyn FnMut(&[usize]) -> Result<Batch<'b>>,
    on_progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    let vars = model.vars();
    let n = data.sources.len();
    let (bs, steps_per_epoch) = step_shape(n, config.batch_size);
    let schedule = config.lr_schedule();
    let labels_all: Vec<u32> = data.labels.iter().map(|&l| l as u32).collect();
    let mut global_step = start.global_step;
    let mut summary = TrainSummary {
        epochs: config.epochs,
        start_epoch: start.epoch,
        start_step: start.step,
        skipped: vec![],
        global_step,
        // The epochs done before a resume are part of the run's curve (only those of the
        // checkpoint's recipe: `resume` has checked it).
        epoch_loss: history.0.into_iter().take(start.epoch).collect(),
        epoch_accuracy: history.1.into_iter().take(start.epoch).collect(),
        seconds: 0.0,
        details: None,
        fitted: vec![],
    };
    for epoch in start.epoch..config.epochs {
        let order = epoch_order(config.seed, epoch, n);
        let resumed = epoch == start.epoch;
        let (first, mut loss_sum, mut correct, mut seen) = if resumed {
            (start.step, start.loss_sum, start.correct, start.seen)
        } else {
            (0, 0f64, 0usize, 0usize)
        };
        for step in first..steps_per_epoch {
            // Cancelled: stop here, between two steps, with a checkpoint of exactly this state
            // when the run has a checkpoint path.
            let cancelled = || -> Error {
                let Some(path) = &config.checkpoint_path else {
                    return Error::cancelled();
                };
                let at = Position {
                    epoch,
                    step,
                    global_step,
                    loss_sum,
                    correct,
                    seen,
                };
                let history = (&summary.epoch_loss[..], &summary.epoch_accuracy[..]);
                match save_checkpoint(path, model, config, n, optimizer, scaler, at, history) {
                    Ok(()) => Error::Cancelled {
                        checkpoint: Some(path.clone()),
                    },
                    Err(e) => e,
                }
            };
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            let lr = schedule.lr_at(epoch, step, steps_per_epoch);
            let idx = &order[step * bs..(step + 1) * bs];
            let batch = match batch_for(idx) {
                Err(Error::Cancelled { .. }) => return Err(cancelled()),
                r => r?,
            };
            let labels = Tensor::from_vec(
                idx.iter().map(|&i| labels_all[i]).collect::<Vec<_>>(),
                idx.len(),
                &clip.device,
            )?;
            let (loss_value, logits, gs) = loop {
                let grad_scale = scaler.as_ref().map_or(1.0, |s| s.scale);
                let StepOutput {
                    loss: loss_value,
                    logits,
                    grads: gs,
                } = model.batch_loss_and_grads(clip, &batch, &labels, grad_scale)?;
                if !loss_value.is_finite() {
                    let hint = if clip.dtype == DType::F32 {
                        String::new()
                    } else {
                        format!(
                            " (training in {:?}: try fp32 or a lower learning rate)",
                            clip.dtype
                        )
                    };
                    return Err(Error::NonFiniteLoss {
                        value: loss_value,
                        epoch: epoch + 1,
                        step: step + 1,
                        hint,
                    });
                }
                // fp16 loss scaling: gradients that overflowed are computed again at half the scale.
                match scaler.as_mut() {
                    Some(s) if !all_finite(&gs)? => {
                        if !s.backoff() {
                            return Err(Error::NonFiniteLoss {
                                value: f32::INFINITY,
                                epoch: epoch + 1,
                                step: step + 1,
                                hint: " (the gradients overflow in fp16 at any loss scale: try bf16 or fp32)".into(),
                            });
                        }
                    }
                    Some(s) => {
                        s.good_step();
                        break (loss_value, logits, gs);
                    }
                    None => break (loss_value, logits, gs),
                }
            };
            let params: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
            optimizer.step(&params, &gs, lr)?;
            // A finite loss can still come with an update that overflows (a huge learning rate):
            // stop before the parameters are used, saved or checkpointed.
            if let Some(name) = first_non_finite(&vars)? {
                return Err(Error::NonFiniteParams(format!(
                    "training stopped: parameter `{name}` became NaN or infinite at epoch {}, step {} (lr {lr:e}: try a lower learning rate)",
                    epoch + 1,
                    step + 1
                )));
            }

            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += pred
                .iter()
                .zip(idx)
                .filter(|(p, &i)| **p == labels_all[i])
                .count();
            seen += idx.len();
            loss_sum += loss_value as f64 * idx.len() as f64;
            global_step += 1;
            on_progress(&Progress {
                epoch: epoch + 1,
                epochs: config.epochs,
                step: step + 1,
                steps_per_epoch,
                global_step,
                loss: loss_value,
                epoch_loss: (loss_sum / seen as f64) as f32,
                epoch_accuracy: 100.0 * correct as f32 / seen as f32,
                lr,
            });
        }
        summary.epoch_loss.push((loss_sum / seen as f64) as f32);
        summary
            .epoch_accuracy
            .push(100.0 * correct as f32 / seen as f32);
        if let Some(path) = &config.checkpoint_path {
            if (epoch + 1) % config.checkpoint_every == 0 || epoch + 1 == config.epochs {
                let at = Position {
                    epoch: epoch + 1,
                    global_step,
                    ..Position::default()
                };
                let history = (&summary.epoch_loss[..], &summary.epoch_accuracy[..]);
                save_checkpoint(path, model, config, n, optimizer, scaler, at, history)?;
            }
        }
    }
    summary.global_step = global_step;
    Ok(summary)
}
