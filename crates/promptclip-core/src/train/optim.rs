//! The optimisers of the methods' recipes, exactly as PyTorch's: SGD as `torch.optim.SGD` with
//! momentum and weight decay (its dampening 0 and no Nesterov, as every recipe here), which
//! candle's own SGD lacks, and AdamW as
//! `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments). Their state (momentum
//! buffers, moments) is exposed by name for checkpoints.
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The CoOp recipe: lr 0.002 (`Recipe`'s), momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        Self {
            lr: crate::methods::Recipe::default().lr,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }
}

pub struct Sgd {
    pub config: SgdConfig,
    /// One momentum buffer per parameter, created at the first step (as PyTorch does).
    pub buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(config: SgdConfig, n_params: usize) -> Self {
        Self {
            config,
            buffers: vec![None; n_params],
        }
    }

    /// One update with learning rate `lr` (the schedule's value for this epoch):
    ///   d = g + wd * p;  b = mu * b + d  (b = d at the first step);  p = p - lr * b
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let mut d = g.to_dtype(p.dtype())?;
            if c.weight_decay != 0.0 {
                d = (d + (p.as_tensor() * c.weight_decay)?)?;
            }
            if c.momentum != 0.0 {
                let buf = match self.buffers[i].take() {
                    None => d.clone(),
                    Some(b) => ((b * c.momentum)? + &d)?,
                };
                d = buf.clone();
                self.buffers[i] = Some(buf);
            }
            p.set(&(p.as_tensor() - (d * lr)?)?.detach())?;
        }
        Ok(())
    }
}

/// `torch.optim.AdamW`'s settings; lr and weight decay come from the recipe.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (t), the bias corrections' exponent.
    pub steps: usize,
    /// First and second moments per parameter, created at the first step.
    pub exp_avg: Vec<Option<Tensor>>,
    pub exp_avg_sq: Vec<Option<Tensor>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, n_params: usize) -> Self {
        Self {
            config,
            steps: 0,
            exp_avg: vec![None; n_params],
            exp_avg_sq: vec![None; n_params],
        }
    }

    /// One update with learning rate `lr`, in torch's order (its single-tensor path):
    ///   t += 1;  p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;
    ///   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        let c = self.config;
        let (b1, b2) = c.betas;
        self.steps += 1;
        let t = self.steps as i32;
        let (bc1, bc2_sqrt) = (1.0 - b1.powi(t), (1.0 - b2.powi(t)).sqrt());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let g = g.to_dtype(p.dtype())?;
            let mut w = p.as_tensor().clone();
            if c.weight_decay != 0.0 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            let m = match self.exp_avg[i].take() {
                None => (&g * (1.0 - b1))?,
                Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
            };
            let g2 = g.sqr()?;
            let v = match self.exp_avg_sq[i].take() {
                None => (g2 * (1.0 - b2))?,
                Some(v) => ((v * b2)? + (g2 * (1.0 - b2))?)?,
            };
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            p.set(&(w - update)?.detach())?;
            self.exp_avg[i] = Some(m);
            self.exp_avg_sq[i] = Some(v);
        }
        Ok(())
    }
}

/// The optimiser a run trains with, and its state by name for checkpoints.
pub enum Optimizer {
    Sgd(Sgd),
    AdamW(AdamW),
}

impl Optimizer {
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        match self {
            Self::Sgd(o) => o.step(params, grads, lr),
            Self::AdamW(o) => o.step(params, grads, lr),
        }
    }

    /// The state tensors, named `<kind>.<parameter>` (`momentum.ctx`, `exp_avg.ctx`, ...).
    pub fn state(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let named = |kind: &str, ts: &[Option<Tensor>]| -> Vec<(String, Tensor)> {
            names
                .iter()
                .zip(ts)
                .filter_map(|(n, t)| t.clone().map(|t| (format!("{kind}.{n}"), t)))
                .collect()
        };
        match self {
            Self::Sgd(o) => named("momentum", &o.buffers),
            Self::AdamW(o) => {
                let mut out = named("exp_avg", &o.exp_avg);
                out.extend(named("exp_avg_sq", &o.exp_avg_sq));
                out
            }
        }
    }

    /// Restore the state written by [`Optimizer::state`] for `vars`, after `steps` steps; each
    /// tensor must have its parameter's shape (`what` names the file in errors).
    pub fn restore(
        &mut self,
        vars: &[(String, Var)],
        state: &HashMap<String, Tensor>,
        steps: usize,
        what: &std::path::Path,
    ) -> Result<()> {
        let take = |kind: &str, name: &str, var: &Var| -> Result<Option<Tensor>> {
            let key = format!("{kind}.{name}");
            match state.get(&key) {
                Some(b) if b.dims() != var.dims() => Err(Error::ShapeMismatch {
                    name: key,
                    path: what.to_path_buf(),
                    expected: var.dims().to_vec(),
                    actual: b.dims().to_vec(),
                }),
                Some(b) => Ok(Some(b.to_dtype(var.dtype())?)),
                None => Ok(None),
            }
        };
        for (i, (name, var)) in vars.iter().enumerate() {
            match self {
                Self::Sgd(o) => o.buffers[i] = take("momentum", name, var)?,
                Self::AdamW(o) => {
                    o.exp_avg[i] = take("exp_avg", name, var)?;
                    o.exp_avg_sq[i] = take("exp_avg_sq", name, var)?;
                }
            }
        }
        if let Self::AdamW(o) = self {
            // AdamW steps every batch: its step count is the run's.
            o.steps = steps;
        }
        Ok(())
    }
}

/// Dynamic loss scaling for fp16 training, as PyTorch's GradScaler (the official code's `amp`
/// path): the loss is multiplied by `scale` before its backward pass, so that small gradients do
/// not flush to zero in fp16, and the parameter gradients are divided by it again in fp32. When
/// the gradients overflow, the scale is halved; after `growth_interval` good steps in a row it
/// doubles. Unlike GradScaler, the trainer then computes the same step again at the
/// lower scale instead of skipping it, so no step is lost to an overflow.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: usize,
    pub growth_interval: usize,
}

impl Default for LossScaler {
    /// GradScaler's defaults: 2^16, doubling after 2000 good steps.
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// Gradients overflowed at this scale: halve it. False once it has fallen below 2^-24, where
    /// scaling cannot help (the loss itself is the problem).
    pub fn backoff(&mut self) -> bool {
        self.scale *= 0.5;
        self.good_steps = 0;
        self.scale >= 2f64.powi(-24)
    }

    /// A step with finite gradients: count it, and double the scale after enough of them.
    pub fn good_step(&mut self) {
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
    }
}

/// Whether every element of every tensor is finite.
pub fn all_finite(grads: &[Tensor]) -> Result<bool> {
    for g in grads {
        if !crate::clip::is_finite(g)? {
            return Ok(false);
        }
    }
    Ok(true)
}
