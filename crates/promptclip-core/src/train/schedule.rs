//! Learning-rate schedules as Dassl builds them for CoOp/CoCoOp: stepped once per epoch,
//! `warmup_epochs` at a constant `warmup_lr`, then cosine annealing over `max_epochs`
//! (Dassl's ConstantWarmupScheduler wrapping CosineAnnealingLR(T_max = max_epochs)). Some
//! recipes step the cosine after every batch instead (Tip-Adapter-F: CosineAnnealingLR with
//! T_max = epochs x batches, stepped per batch).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub max_epochs: usize,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    /// Anneal per batch (T_max = max_epochs x steps per epoch) instead of per epoch.
    pub per_step: bool,
    /// T_max of the per-batch cosine when the run is counted in steps (CLIP-LoRA's iterations).
    pub total_steps: Option<usize>,
    /// Where the cosine ends (torch's `eta_min`).
    pub min_lr: f64,
}

impl LrSchedule {
    /// Learning rate of step `step` (0-based) of `epoch`, in epochs of `steps_per_epoch` steps.
    pub fn lr_at(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        if !self.per_step || epoch < self.warmup_epochs {
            return self.lr(epoch);
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let s = steps_per_epoch.max(1);
                let t = ((epoch - self.warmup_epochs) * s + step) as f64;
                let t_max = self.total_steps.unwrap_or(self.max_epochs.max(1) * s) as f64;
                self.cosine(t, t_max)
            }
        }
    }

    /// Learning rate used during `epoch` (0-based).
    ///
    /// With one warmup epoch, epoch 0 uses `warmup_lr`, epoch 1 the base rate, and epoch e >= 1
    /// uses base * (1 + cos(pi * (e - 1) / max_epochs)) / 2: the cosine successor starts when
    /// warmup ends and, as in Dassl, never quite reaches zero.
    /// eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2, as torch's closed form (with
    /// eta_min 0, bit for bit Dassl's base (1 + cos) / 2).
    fn cosine(&self, t: f64, t_max: f64) -> f64 {
        let c = (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t / t_max).cos());
        self.min_lr + c / 2.0
    }

    pub fn lr(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return self.warmup_lr;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let t = (epoch - self.warmup_epochs) as f64;
                self.cosine(t, self.max_epochs.max(1) as f64)
            }
        }
    }
}
