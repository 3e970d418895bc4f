//! A block's training pass with low-rank updates (`lora`): the fused QKV projection and the out
//! projection with their updates added, their backward passes with the factors' gradients, and the
//! blocks with the updates folded into copies of their weights. At inference the merge makes a
//! learner predict at the frozen model's speed; the model's own weights are never changed (the
//! official code merges in place and unmerges on every switch back to training).
use super::lora::{
    check_blocks, sum_into, BlockLora, BlockLoraGrads, BlockPass, LoraTape, LowRank, TowerLora,
};
use super::nn::{EncoderLayer, StreamTape};
use crate::Result;
use candle_core::{DType, Module, Tensor};

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
