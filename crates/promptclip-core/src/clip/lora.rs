//! Low-rank updates of a tower's frozen attention projections (LoRA, Hu et al., ICLR 2022, as
//! CLIP-LoRA puts them in both of CLIP's towers): for a block's q, k, v or out projection
//!
//!   W' = W + s B A,   A (r, in), B (out, r), s = alpha / sqrt(r)   (CLIP-LoRA's loralib scaling)
//!
//! In training the update's input is dropped out (probability p) and the frozen product is not:
//!
//!   y = x W^T + b + s (drop(x) A^T) B^T
//!
//! The training pass keeps what the factors' gradients need, the dropout masks and u = drop(x) A^T
//! (N, r); the layer input x is recomputed from the block input the tape already holds. With
//! g = dy B (N, r):
//!
//!   dA = s g^T drop(x)     dB = s dy^T u     dx += s (g A) * mask / (1 - p)
//!
//! The frozen weights get no gradient. At inference `merged` folds s B A into copies of the
//! adapted weights once, so a learner predicts at the frozen model's speed; the model's own
//! weights are never changed (the official code merges in place and unmerges on every switch
//! back to training).
use super::nn::{EncoderLayer, StreamTape};
use crate::rng::{derive_seed, Rng};
use crate::Result;
use candle_core::{DType, Device, Module, Tensor};

/// The projections of a block's attention that an update can adapt, in this order everywhere
/// (loralib's `q_proj`, `k_proj`, `v_proj` and `proj`).
pub const PROJECTIONS: [&str; 4] = ["q", "k", "v", "o"];

/// The factors of one projection's update: A (r, in) and B (out, r).
#[derive(Debug, Clone)]
pub struct LowRank {
    pub a: Tensor,
    pub b: Tensor,
}

/// One block's updates, by projection (q, k, v, out); a block with none is frozen.
pub type BlockLora = [Option<LowRank>; 4];

/// The factors' gradients (dA, dB) of one block, by projection.
pub type BlockLoraGrads = [Option<(Tensor, Tensor)>; 4];

/// The updates of one tower.
#[derive(Debug, Clone)]
pub struct TowerLora {
    /// One per block of the tower.
    pub blocks: Vec<BlockLora>,
    /// s = alpha / sqrt(r).
    pub scale: f64,
    /// Dropout probability of the updates' input in training.
    pub dropout: f64,
    /// Seed of a training pass's dropout masks: every block, stream, projection and sequence
    /// draws its own from it, so that a pass is reproducible (a resumed run draws the same masks).
    pub seed: u64,
    /// The index of the pass's first sequence in its batch: a batch run in chunks draws, for each
    /// image, the masks the whole batch in one pass would.
    pub first_sequence: usize,
}

impl TowerLora {
    /// Block `block`'s updates in stream `stream` of a training pass (None: the block is frozen).
    pub fn pass(&self, block: usize, stream: u64) -> Option<BlockPass<'_>> {
        let factors = self.blocks.get(block)?;
        factors.iter().any(Option::is_some).then(|| BlockPass {
            factors,
            scale: self.scale,
            dropout: self.dropout,
            seed: derive_seed(self.seed, block as u64, stream),
            first_sequence: self.first_sequence,
        })
    }

    /// Empty gradients, one entry per block.
    pub fn no_grads(&self) -> Vec<BlockLoraGrads> {
        vec![Default::default(); self.blocks.len()]
    }
}

/// One block's updates in one stream of a training pass.
#[derive(Debug, Clone, Copy)]
pub struct BlockPass<'a> {
    pub factors: &'a BlockLora,
    pub scale: f64,
    pub dropout: f64,
    pub seed: u64,
    pub first_sequence: usize,
}

/// What one projection's update keeps for the backward pass.
#[derive(Debug)]
pub struct PathTape {
    /// 1 where the input was kept (u8, (N, in)); None without dropout.
    mask: Option<Tensor>,
    /// drop(x) A^T (N, r).
    u: Tensor,
}

/// A block's share of a stream's tape for its updates.
#[derive(Debug, Default)]
pub struct LoraTape {
    paths: [Option<PathTape>; 4],
    /// The out projection's input, the heads merged (B, T, d), when that projection is adapted.
    merged: Option<Tensor>,
}

/// A dropout mask for `sequences` of `len` rows of `cols` ((sequences len, cols), 1 where kept
/// with probability 1 - p), each sequence from its own stream of `seed` by its index in the batch.
fn keep_mask(
    (first, sequences, len): (usize, usize, usize),
    cols: usize,
    p: f64,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut keep = Vec::with_capacity(sequences * len * cols);
    for s in first..first + sequences {
        let mut rng = Rng::new(derive_seed(seed, s as u64, 0));
        keep.extend((0..len * cols).map(|_| u8::from(rng.uniform() >= p)));
    }
    Ok(Tensor::from_vec(keep, (sequences * len, cols), device)?)
}

/// x with the mask applied and the kept entries scaled by 1 / (1 - p), as torch's dropout.
fn dropped(x: &Tensor, mask: Option<&Tensor>, p: f64) -> Result<Tensor> {
    Ok(match mask {
        Some(m) => ((x * m.to_dtype(x.dtype())?)? * (1.0 / (1.0 - p)))?,
        None => x.clone(),
    })
}

/// The dtype the factors' gradients are summed in: f32 for half models (the sums run over every
/// token of the batch), else the model's.
fn grad_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

fn sum_into(acc: &mut Option<(Tensor, Tensor)>, g: (Tensor, Tensor)) -> Result<()> {
    *acc = Some(match acc.take() {
        None => g,
        Some((a, b)) => ((a + g.0)?, (b + g.1)?),
    });
    Ok(())
}

impl BlockPass<'_> {
    /// Projection `j`'s update of the input x (N, in) of sequences of `len` rows: s (drop(x) A^T)
    /// B^T (N, out), with its tape.
    fn forward(&self, j: usize, x: &Tensor, len: usize) -> Result<Option<(Tensor, PathTape)>> {
        let Some(f) = &self.factors[j] else {
            return Ok(None);
        };
        let (a, b) = (f.a.to_dtype(x.dtype())?, f.b.to_dtype(x.dtype())?);
        let mask = if self.dropout > 0.0 {
            let (n, cols) = x.dims2()?;
            let sequences = (self.first_sequence, n / len.max(1), len);
            let seed = derive_seed(self.seed, j as u64, 0);
            Some(keep_mask(sequences, cols, self.dropout, seed, x.device())?)
        } else {
            None
        };
        let u = dropped(x, mask.as_ref(), self.dropout)?.matmul(&a.t()?)?;
        let delta = (u.matmul(&b.t()?)? * self.scale)?;
        Ok(Some((delta, PathTape { mask, u })))
    }

    /// Backward through projection `j`'s update for its output gradient dy (N, out) and input x
    /// (N, in): the input's gradient and (dA, dB).
    fn backward(
        &self,
        j: usize,
        tape: &PathTape,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let f = self.factors[j].as_ref().ok_or_else(|| {
            crate::Error::Internal(format!("projection {} has no update", PROJECTIONS[j]))
        })?;
        let acc = grad_dtype(dy.dtype());
        let (a, b) = (f.a.to_dtype(acc)?, f.b.to_dtype(acc)?);
        let dy = dy.to_dtype(acc)?;
        let g = dy.matmul(&b)?;
        let xd = dropped(&x.to_dtype(acc)?, tape.mask.as_ref(), self.dropout)?;
        let da = (g.t()?.matmul(&xd)? * self.scale)?;
        let db = (dy.t()?.matmul(&tape.u.to_dtype(acc)?)? * self.scale)?;
        let dx = dropped(
            &(g.matmul(&a)? * self.scale)?,
            tape.mask.as_ref(),
            self.dropout,
        )?;
        Ok((dx.to_dtype(x.dtype())?, (da, db)))
    }

    fn adapts_qkv(&self) -> bool {
        self.factors[..3].iter().any(Option::is_some)
    }
}

/// (B, T, d) as (B T, d).
fn rows(x: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    Ok(x.reshape((b * t, d))?)
}

impl EncoderLayer {
    /// `qkv_train` with the block's updates of q, k and v (the tape's share for them), and the
    /// tape's empty share when the block has updates elsewhere only.
    pub fn qkv_train_lora(
        &self,
        x: &Tensor,
        lora: Option<BlockPass<'_>>,
    ) -> Result<(Tensor, Tensor, Tensor, Option<LoraTape>)> {
        let Some(lora) = lora.filter(BlockPass::adapts_qkv) else {
            let (q, k, v) = self.qkv_train(x)?;
            return Ok((q, k, v, lora.map(|_| LoraTape::default())));
        };
        let ln = self.ln_1.forward(x)?;
        let (b, t, d) = ln.dims3()?;
        let ln_rows = rows(&ln)?;
        let mut tape = LoraTape::default();
        let mut parts = Vec::with_capacity(3);
        for (j, path) in tape.paths.iter_mut().take(3).enumerate() {
            match lora.forward(j, &ln_rows, t)? {
                Some((delta, p)) => {
                    parts.push(delta);
                    *path = Some(p);
                }
                None => parts.push(Tensor::zeros((b * t, d), ln.dtype(), ln.device())?),
            }
        }
        // (B T, 3d): the updates of q | k | v, in the fused projection's column order.
        let delta = Tensor::cat(&parts, 1)?.reshape((b, t, 3 * d))?;
        let (q, k, v) = self
            .attn
            .split_qkv(&(self.attn.qkv_matmul(&ln)? + delta)?)?;
        Ok((q, k, v, Some(tape)))
    }

    /// `finish_train` with the block's update of the out projection, which it adds to the
    /// attention residual (the tape keeps the projection's input for its backward pass).
    pub fn finish_train_lora(
        &self,
        x: &Tensor,
        merged: &Tensor,
        lora: Option<BlockPass<'_>>,
        tape: &mut Option<LoraTape>,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (Some(lora), Some(t)) = (lora, tape.as_mut()) else {
            return Ok(self.finish_train(x, merged, true)?);
        };
        let Some((delta, p)) = lora.forward(3, &rows(merged)?, merged.dim(1)?)? else {
            return Ok(self.finish_train(x, merged, true)?);
        };
        t.paths[3] = Some(p);
        t.merged = Some(merged.clone());
        // mid = x + merged W_o^T + b_o + s (drop(merged) A^T) B^T
        let residual = (x + delta.reshape(x.shape())?)?;
        Ok(self.finish_train(&residual, merged, true)?)
    }

    /// `finish_backward` through the out projection's update too, its factors' gradients added
    /// to `grads`.
    pub fn finish_backward_lora(
        &self,
        tape: &StreamTape,
        dy: &Tensor,
        lora: Option<BlockPass<'_>>,
        grads: &mut BlockLoraGrads,
    ) -> Result<(Tensor, Tensor)> {
        let (d_mid, d_merged) = self.finish_backward(tape, dy)?;
        let (Some(lora), Some(lt)) = (lora, tape.lora.as_ref()) else {
            return Ok((d_mid, d_merged));
        };
        let (Some(p), Some(merged)) = (&lt.paths[3], &lt.merged) else {
            return Ok((d_mid, d_merged));
        };
        let (dx, g) = lora.backward(3, p, &rows(merged)?, &rows(&d_mid)?)?;
        sum_into(&mut grads[3], g)?;
        let d_merged = (d_merged + dx.reshape(merged.shape())?)?;
        Ok((d_mid, d_merged))
    }

    /// `input_backward` through the updates of q, k and v too, their factors' gradients added to
    /// `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn input_backward_lora(
        &self,
        tape: &StreamTape,
        d_mid: &Tensor,
        d_q: &Tensor,
        d_k: &Tensor,
        d_v: &Tensor,
        off: usize,
        lora: Option<BlockPass<'_>>,
        grads: &mut BlockLoraGrads,
    ) -> Result<Tensor> {
        let (Some(lora), Some(lt)) = (lora.filter(BlockPass::adapts_qkv), tape.lora.as_ref())
        else {
            return Ok(self.input_backward(tape, d_mid, d_q, d_k, d_v, off)?);
        };
        let d_qkv = self.attn.qkv_output_grad(d_q, d_k, d_v, off)?;
        let mut d_ln = self.attn.qkv_input_grad(&d_qkv)?;
        let ln_rows = rows(&self.ln_1.forward(&tape.x)?)?;
        let d_qkv = rows(&d_qkv)?;
        let d = ln_rows.dim(1)?;
        for (j, path) in lt.paths.iter().take(3).enumerate() {
            if let Some(p) = path {
                let dy = d_qkv.narrow(1, j * d, d)?.contiguous()?;
                let (dx, g) = lora.backward(j, p, &ln_rows, &dy)?;
                sum_into(&mut grads[j], g)?;
                d_ln = (d_ln + dx.reshape(tape.x.shape())?)?;
            }
        }
        Ok((d_mid + self.ln_1.backward(&tape.x, &d_ln)?)?)
    }

    /// This block with its updates folded into copies of the adapted weights (W + s B A): the
    /// same function at the frozen block's cost.
    pub fn merged(&self, factors: &BlockLora, scale: f64) -> Result<EncoderLayer> {
        let mut out = self.clone();
        let d = self.attn.out.out_features();
        if let Some(first) = factors[..3].iter().flatten().next() {
            let (dtype, device) = (update_dtype(first), first.a.device());
            // (in, 3d): the transposed updates of q | k | v, as the fused weight is kept.
            let parts = factors[..3]
                .iter()
                .map(|f| match f {
                    Some(f) => update_t(f, scale),
                    None => Ok(Tensor::zeros((d, d), dtype, device)?),
                })
                .collect::<Result<Vec<_>>>()?;
            out.attn.add_to_qkv(&Tensor::cat(&parts, 1)?)?;
        }
        if let Some(f) = &factors[3] {
            out.attn.out = out.attn.out.plus(&update_t(f, scale)?)?;
        }
        Ok(out)
    }
}

/// f32, or f64 for f64 factors: what an update is formed in before it is added to a weight.
fn update_dtype(f: &LowRank) -> DType {
    if f.a.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// (s B A)^T (in, out).
fn update_t(f: &LowRank, scale: f64) -> Result<Tensor> {
    let dtype = update_dtype(f);
    let (a, b) = (f.a.to_dtype(dtype)?, f.b.to_dtype(dtype)?);
    Ok((a.t()?.matmul(&b.t()?)? * scale)?)
}

/// A tower's blocks with `lora`'s updates folded in (`EncoderLayer::merged`), or why they do not
/// fit (`tower` names it).
pub fn merged_layers(
    layers: &[EncoderLayer],
    lora: &TowerLora,
    tower: &str,
) -> Result<Vec<EncoderLayer>> {
    check_blocks(layers.len(), lora, tower)?;
    layers
        .iter()
        .zip(&lora.blocks)
        .map(|(layer, f)| {
            if f.iter().any(Option::is_some) {
                layer.merged(f, lora.scale)
            } else {
                Ok(layer.clone())
            }
        })
        .collect()
}

/// Whether `lora` has one entry per block of a tower of `blocks`.
pub fn check_blocks(blocks: usize, lora: &TowerLora, tower: &str) -> Result<()> {
    if lora.blocks.len() != blocks {
        return Err(crate::Error::InvalidArgument(format!(
            "low-rank updates for {} {tower} blocks; this tower has {blocks}",
            lora.blocks.len()
        )));
    }
    Ok(())
}
