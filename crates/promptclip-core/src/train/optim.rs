//! SGD exactly as `torch.optim.SGD` (momentum, dampening, weight decay, Nesterov), which candle's
//! own SGD lacks. Momentum buffers are exposed for checkpoints.
use crate::Result;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// The CoOp recipe: lr 0.002 (`Recipe`'s), momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        Self {
            lr: crate::methods::Recipe::default().lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            dampening: 0.0,
            nesterov: false,
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
    ///   d = g + wd * p;  b = mu * b + (1 - dampening) * d  (b = d at the first step);
    ///   d = nesterov ? d + mu * b : b;  p = p - lr * d
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
                    Some(b) => ((b * c.momentum)? + (&d * (1.0 - c.dampening))?)?,
                };
                d = if c.nesterov {
                    (d + (&buf * c.momentum)?)?
                } else {
                    buf.clone()
                };
                self.buffers[i] = Some(buf);
            }
            p.set(&(p.as_tensor() - (d * lr)?)?.detach())?;
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
