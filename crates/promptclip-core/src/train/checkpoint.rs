//! Training checkpoints: parameters, momentum buffers, the schedule position and the seed (from
//! which every epoch's shuffling and augmentation derive), in one safetensors file replaced
//! atomically at each save. Written at epoch ends, and by a cancelled run at the step boundary
//! where it stopped (format version 2 records the step; version 1 files, always at an epoch
//! boundary, still load).
use crate::files::{read_safetensors, write_safetensors_atomic};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const CHECKPOINT_FORMAT: &str = "promptclip.train-checkpoint";
/// The version written; every version up to it loads.
pub const CHECKPOINT_VERSION: u32 = 2;

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
    pub model: crate::methods::LearnerMeta,
    /// fp16 loss scaling's state, when training in fp16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<super::optim::LossScaler>,
}

pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    params: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
) -> Result<()> {
    let mut named: Vec<(String, &Tensor)> = params
        .iter()
        .map(|(n, t)| (format!("param.{n}"), t))
        .collect();
    named.extend(momentum.iter().map(|(n, t)| (format!("momentum.{n}"), t)));
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
    pub momentum: HashMap<String, Tensor>,
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
    let mut params = HashMap::new();
    let mut momentum = HashMap::new();
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("param.") {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("momentum.") {
            momentum.insert(n.to_string(), t);
        }
    }
    Ok(Loaded {
        meta,
        params,
        momentum,
    })
}
