//! Training checkpoints: parameters, momentum buffers, the schedule position and the seed (from
//! which every epoch's shuffling and augmentation derive), in one safetensors file replaced
//! atomically at each save. Written at epoch ends, and by a cancelled run at the step boundary
//! where it stopped (format version 2 records the step; version 1 files, always at an epoch
//! boundary, still load). Version 3 adds the run's whole resolved recipe ([`RunConfig`]), so that
//! resuming with any option that would change the run is refused by name; version 1 and 2 files
//! still resume, checked on what they recorded (seed, epochs, batch size, learner, images).
use super::config::TrainConfig;
use super::optim::{LossScaler, Optimizer};
use crate::clip::Clip;
use crate::files::{read_safetensors, write_safetensors_atomic};
use crate::methods::{Learner, LearnerMeta};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const CHECKPOINT_FORMAT: &str = "promptclip.train-checkpoint";
/// The version written; every version up to it loads.
pub const CHECKPOINT_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format: String,
    pub format_version: u32,
    /// Epochs completed: training resumes at this epoch (the schedule position).
    pub epochs_done: usize,
    /// Steps of the next epoch (the one in progress) already done: 0 at an epoch boundary (every
    /// version 1 file), more when a cancelled run stopped mid-epoch.
    #[serde(default)]
    pub step_in_epoch: usize,
    /// The epoch in progress's running sums (loss x images, correct predictions, images seen),
    /// so that a resumed epoch reports the same mean loss and accuracy as an uninterrupted one.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    #[serde(default)]
    pub epoch_correct: usize,
    #[serde(default)]
    pub epoch_seen: usize,
    /// Mean loss and accuracy (%) of each completed epoch, so that a resumed run reports the whole
    /// curve, as an uninterrupted one does. Absent (empty) in files written before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epoch_loss_history: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epoch_accuracy_history: Vec<f32>,
    /// Training images used (after skipUnreadable): every epoch's order depends on their number.
    /// Absent in version 1 files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_images: Option<usize>,
    pub global_step: usize,
    /// Every epoch's shuffling and augmentation stream derives from (seed, epoch), so the seed
    /// and the epoch fully determine the random state of the remaining run.
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// The learner's description (method, options, classes): resuming requires equality.
    pub model: LearnerMeta,
    /// fp16 loss scaling's state, when training in fp16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
    /// The rest of the resolved recipe (version 3 on; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunConfig>,
}

/// Every training option besides seed, epochs and batch size that changes what a run computes:
/// the optimiser, the schedule and the augmentation. (Checkpointing, the encode batch size and
/// the decode cache only change how it is computed; skipUnreadable shows in the image count.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: super::schedule::ScheduleKind,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    pub augment: bool,
    pub augment_scale: (f64, f64),
    pub augment_ratio: (f64, f64),
    pub augment_flip_p: f64,
    /// Absent in files written before AdamW: SGD.
    #[serde(default)]
    pub optimizer: crate::methods::OptimizerKind,
    /// AdamW's eps and betas (absent for SGD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adamw: Option<(f64, (f64, f64))>,
    #[serde(default)]
    pub lr_per_step: bool,
    /// Absent in files written before `shuffle`: shuffled.
    #[serde(default = "shuffled")]
    pub shuffle: bool,
    /// The sha256 of the `initFrom` file (absent: the method's own initialisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// A run counted in steps: how many (absent: whole epochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// The cosine's end (absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_lr: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn shuffled() -> bool {
    true
}

impl RunConfig {
    pub fn of(c: &TrainConfig) -> Self {
        Self {
            lr: c.lr(),
            momentum: c.sgd.momentum,
            weight_decay: c.weight_decay(),
            schedule: c.schedule,
            warmup_epochs: c.warmup_epochs,
            warmup_lr: c.warmup_lr,
            augment: c.augment,
            augment_scale: c.augment_config.scale,
            augment_ratio: c.augment_config.ratio,
            augment_flip_p: c.augment_config.flip_p,
            optimizer: c.optimizer,
            adamw: (c.optimizer == crate::methods::OptimizerKind::Adamw)
                .then_some((c.adamw.eps, c.adamw.betas)),
            lr_per_step: c.lr_per_step,
            shuffle: c.shuffle,
            init_from: c.init_from.as_ref().map(|i| i.sha256.clone()),
            steps: c.steps,
            min_lr: c.min_lr,
        }
    }

    /// The options that differ, as (option name as callers write it, saved value, this run's).
    /// Numbers are compared to 1e-12 relative: JSON may not give back the last bit of an f64.
    pub fn differences(&self, now: &RunConfig) -> Vec<(&'static str, String, String)> {
        let same = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        let mut out = vec![];
        let mut num = |name, a: f64, b: f64| {
            if !same(a, b) {
                out.push((name, a.to_string(), b.to_string()));
            }
        };
        num("lr", self.lr, now.lr);
        num("momentum", self.momentum, now.momentum);
        num("weightDecay", self.weight_decay, now.weight_decay);
        num("warmupLr", self.warmup_lr, now.warmup_lr);
        num("minLr", self.min_lr, now.min_lr);
        num(
            "augment scale (min)",
            self.augment_scale.0,
            now.augment_scale.0,
        );
        num(
            "augment scale (max)",
            self.augment_scale.1,
            now.augment_scale.1,
        );
        num(
            "augment ratio (min)",
            self.augment_ratio.0,
            now.augment_ratio.0,
        );
        num(
            "augment ratio (max)",
            self.augment_ratio.1,
            now.augment_ratio.1,
        );
        num(
            "augment flip probability",
            self.augment_flip_p,
            now.augment_flip_p,
        );
        let mut other = |name, a: String, b: String| {
            if a != b {
                out.push((name, a, b));
            }
        };
        other(
            "schedule",
            format!("{:?}", self.schedule).to_lowercase(),
            format!("{:?}", now.schedule).to_lowercase(),
        );
        let steps = |s: Option<usize>| s.map_or("whole epochs".into(), |n| n.to_string());
        other("steps", steps(self.steps), steps(now.steps));
        other(
            "warmupEpochs",
            self.warmup_epochs.to_string(),
            now.warmup_epochs.to_string(),
        );
        other("augment", self.augment.to_string(), now.augment.to_string());
        other(
            "optimizer",
            format!("{:?}", self.optimizer),
            format!("{:?}", now.optimizer),
        );
        other(
            "AdamW eps and betas",
            format!("{:?}", self.adamw),
            format!("{:?}", now.adamw),
        );
        other(
            "lr per step",
            self.lr_per_step.to_string(),
            now.lr_per_step.to_string(),
        );
        other("shuffle", self.shuffle.to_string(), now.shuffle.to_string());
        let init = |i: &Option<String>| {
            i.as_ref()
                .map_or("the method's initialisation".into(), |h| {
                    format!("a file of sha256 {}", &h[..12])
                })
        };
        other("initFrom", init(&self.init_from), init(&now.init_from));
        out
    }
}

pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    params: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    run: &[(String, Tensor)],
) -> Result<()> {
    let mut named: Vec<(String, &Tensor)> = params
        .iter()
        .map(|(n, t)| (format!("param.{n}"), t))
        .collect();
    named.extend(run.iter().map(|(n, t)| (format!("run.{n}"), t)));
    // Already named by kind (`momentum.ctx`, `exp_avg.ctx`: `Optimizer::state`).
    named.extend(optimizer.iter().map(|(n, t)| (n.clone(), t)));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let mut md = HashMap::new();
    md.insert(
        "promptclip_checkpoint".into(),
        serde_json::to_string(meta).map_err(|e| Error::Internal(e.to_string()))?,
    );
    write_safetensors_atomic(path, &refs, md)
}

pub struct Loaded {
    pub meta: CheckpointMeta,
    pub params: HashMap<String, Tensor>,
    /// The optimiser's state by its names (`momentum.ctx`, `exp_avg.ctx`, ...).
    pub optimizer: HashMap<String, Tensor>,
    /// The learner's state across the run's epochs (`Learner::run_state`), by its names.
    pub run: HashMap<String, Tensor>,
}

pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let (tensors, md) = read_safetensors(path, device)?;
    let json = md.get("promptclip_checkpoint").ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not a promptclip training checkpoint",
            path.display()
        ))
    })?;
    let meta: CheckpointMeta = serde_json::from_str(json).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: unreadable checkpoint metadata: {e}",
            path.display()
        ))
    })?;
    if meta.format != CHECKPOINT_FORMAT {
        return Err(Error::InvalidArgument(format!(
            "{} is not a promptclip training checkpoint",
            path.display()
        )));
    }
    if meta.format_version == 0 || meta.format_version > CHECKPOINT_VERSION {
        return Err(Error::Unsupported(format!(
            "{}: checkpoint format version {} (this promptclip reads versions 1 to {CHECKPOINT_VERSION})",
            path.display(),
            meta.format_version
        )));
    }
    // The position must lie within the run it describes.
    let m = &meta;
    if m.epochs_done > m.epochs
        || (m.epochs_done == m.epochs && m.step_in_epoch > 0)
        || m.epoch_correct > m.epoch_seen
        || !m.epoch_loss_sum.is_finite()
    {
        return Err(Error::InvalidArgument(format!(
            "{}: damaged checkpoint metadata: {} of {} epochs done, step {} of the next, {} of {} images right, loss sum {}",
            path.display(),
            m.epochs_done,
            m.epochs,
            m.step_in_epoch,
            m.epoch_correct,
            m.epoch_seen,
            m.epoch_loss_sum
        )));
    }
    let curve = [&m.epoch_loss_history, &m.epoch_accuracy_history];
    if curve
        .iter()
        .any(|c| c.len() > m.epochs_done || c.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::InvalidArgument(format!(
            "{}: damaged checkpoint metadata: the loss and accuracy of {} and {} epochs for {} epochs done, or not finite",
            path.display(),
            m.epoch_loss_history.len(),
            m.epoch_accuracy_history.len(),
            m.epochs_done
        )));
    }
    crate::files::check_float_tensors(path, &tensors)?;
    if let Some(name) = crate::files::first_non_finite_tensor(&tensors)? {
        // A damaged file is bad input (exit 2), not a run that diverged.
        return Err(Error::InvalidArgument(format!(
            "{}: tensor `{name}` holds NaN or infinite values; the checkpoint is damaged (start afresh without resuming it)",
            path.display()
        )));
    }
    let mut params = HashMap::new();
    let mut optimizer = HashMap::new();
    let mut run = HashMap::new();
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("param.") {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("run.") {
            run.insert(n.to_string(), t);
        } else {
            optimizer.insert(name, t);
        }
    }
    Ok(Loaded {
        meta,
        params,
        optimizer,
        run,
    })
}

// ---------------------------------------------------------------------------------------------
// A run's checkpoints: resuming checks, what differs, where training stands, writing one.

/// The checkpoint at `path`, checked against this run's options (the learner is checked once it
/// is prepared: its state's shapes depend on the data).
pub(super) fn checkpoint_for(
    path: &std::path::Path,
    clip: &Clip,
    config: &TrainConfig,
) -> Result<Loaded> {
    let ck = load(path, &clip.device)?;
    let m = &ck.meta;
    // Every option that changes the run must be as it was, each named with both values.
    // A run counted in steps takes the epochs its steps need (compared as `steps`).
    let epochs = match config.steps {
        Some(_) => m.epochs,
        None => config.epochs,
    };
    let mut changed: Vec<(&str, String, String)> = [
        ("seed", m.seed.to_string(), config.seed.to_string()),
        ("epochs", m.epochs.to_string(), epochs.to_string()),
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

/// What differs between the learner a checkpoint was made with and this one, each named with
/// both values: the method, each option, the class list, the tensors' shapes (another CLIP's
/// checkpoint shows there: its widths differ).
pub(super) fn learner_differences(was: &LearnerMeta, now: &LearnerMeta) -> Vec<String> {
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
pub(super) struct Position {
    pub(super) epoch: usize,
    pub(super) step: usize,
    pub(super) global_step: usize,
    pub(super) loss_sum: f64,
    pub(super) correct: usize,
    pub(super) seen: usize,
}

/// Write a checkpoint of the state at `at`, with the completed epochs' curve.
#[allow(clippy::too_many_arguments)]
pub(super) fn save_checkpoint(
    path: &std::path::Path,
    model: &dyn Learner,
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
    save(
        path,
        &meta,
        &params,
        &optimizer.state(&names),
        &model.run_state(),
    )
}
