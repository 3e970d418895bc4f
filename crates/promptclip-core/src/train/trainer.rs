//! The training loop every method shares: a learner prepared on the run's data (`data.rs`), then,
//! for the methods that train, the epochs of its recipe (`config.rs`: SGD or AdamW, warmup, cosine
//! per epoch or per batch, random resized crop + flip), seeded end to end, with atomic checkpoints
//! (`checkpoint.rs`) that resume to the same result as an uninterrupted run; then its closing
//! choice on validation.
use super::checkpoint::{checkpoint_for, learner_differences, save_checkpoint, Loaded, Position};
use super::config::TrainConfig;
use super::data::{
    cancelled_if, center_crop_features, usable, LabelledImages, RunData, SkippedImage,
};
use super::optim::{all_finite, LossScaler, Optimizer};
use super::pipeline::{augmented_crops, center_crops, DecodedImages};
use crate::clip::Clip;
use crate::methods::catalogue::{Fitting, Takes};
use crate::methods::io::first_non_finite;
use crate::methods::{Batch, FrozenTower, Learner, StepOutput};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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

pub use crate::rng::derive_seed;

/// Train `model` on `data`. `on_progress` is called after every step; `cancel` stops training
/// (with `Error::Cancelled`) at the next step boundary, after writing a checkpoint there when
/// `checkpoint_path` is set, from which `resume_from` continues at that very step.
pub fn fit(
    clip: &Clip,
    model: &dyn Learner,
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
    model: &dyn Learner,
    data: &LabelledImages,
    validation: Option<&LabelledImages>,
    config: &TrainConfig,
    on_progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<TrainSummary> {
    config.validate()?;
    let k = model.class_names().len();
    data.validate(k)?;
    // A recipe counted in steps per shot counts them from the images per class here.
    let config = &config.with_steps_for(data.sources.len(), k);
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
    match (&config.init_from, trains) {
        (Some(_), false) => {
            return Err(Error::InvalidArgument(format!(
                "initFrom: {} is fitted in one go, not trained from starting values",
                model.meta().method
            )))
        }
        // A resumed run continues from its checkpoint's tensors instead.
        (Some(init), true) if resumed.is_none() => {
            crate::methods::official::init_from(&init.path, model, &clip.device)?;
        }
        _ => {}
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

/// The SGD epochs of a prepared learner, from a checkpoint when resuming.
fn train_epochs(
    clip: &Clip,
    model: &dyn Learner,
    fit_data: &RunData<'_>,
    config: &TrainConfig,
    resumed: Option<(Loaded, PathBuf)>,
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
        model.start_run(Some((&ck.run, m.epochs_done)))?;
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
    } else {
        model.start_run(None)?;
    }
    let (bs, steps_per_epoch) = step_shape(data.sources.len(), config.batch_size);
    let config = &config.with_epochs_for(steps_per_epoch);
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
                    let order = epoch_order(config, epoch, images.len());
                    // Each crop's random stream derives from (seed, epoch, image), not from the
                    // step: a run resumed mid-epoch starts at its step with the same crops.
                    let first = if epoch == start.epoch { start.step } else { 0 };
                    for step in first..config.steps_in_epoch(epoch, steps_per_epoch) {
                        if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                            return;
                        }
                        let crops = augmented_crops(
                            images,
                            image_config,
                            &config.augment_config,
                            config.seed,
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
            if let (false, None, Some(images)) =
                (config.augment, &fit_data.features, &fit_data.images)
            {
                // Pixels without augmentation (a method that takes images): the center crops,
                // from the decode cache.
                let crops = center_crops(images, &clip.image_config, idx)?;
                return Batch::of_pixels(
                    encoder.pixels_of_crops(crops)?,
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

/// Epoch `epoch`'s order of the `n` training images (their own order without shuffling).
fn epoch_order(config: &TrainConfig, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if config.shuffle {
        Rng::new(derive_seed(config.seed, epoch as u64, u64::MAX)).shuffle(&mut order);
    }
    order
}

/// The epochs from `start` on, each step's batch from `batch_for` given the step's images,
/// called in step order.
#[allow(clippy::too_many_arguments)]
fn run_epochs<'b>(
    clip: &Clip,
    model: &dyn Learner,
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
        let order = epoch_order(config, epoch, n);
        let resumed = epoch == start.epoch;
        let (first, mut loss_sum, mut correct, mut seen) = if resumed {
            (start.step, start.loss_sum, start.correct, start.seen)
        } else {
            (0, 0f64, 0usize, 0usize)
        };
        for step in first..config.steps_in_epoch(epoch, steps_per_epoch) {
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
            }
            .with_step_seed(derive_seed(config.seed, epoch as u64, step as u64));
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
        model.epoch_end(epoch, config.epochs)?;
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
