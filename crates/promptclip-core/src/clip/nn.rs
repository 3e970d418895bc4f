//! Transformer building blocks for CLIP, written so that gradients flow through every op.
//!
//! candle's fused `layer_norm` and `softmax_last_dim` have no backward pass and silently drop
//! gradients. Each block below therefore checks `Tensor::track_op()`: when the input carries a
//! gradient (prompt learning), it uses ops composed from differentiable primitives; when it does
//! not (frozen image tower, inference), it uses the fused kernels, which are faster.
use super::config::Activation;
use candle_core::{DType, Module, Result, Tensor, D};

/// y = x W^T + b, with W of shape (out, in) as PyTorch stores it.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        // Keep W^T contiguous once, so every forward is a plain (.., in) x (in, out) matmul.
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    pub fn out_features(&self) -> usize {
        self.weight_t.dim(1).unwrap_or(0)
    }

    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            weight_t: self.weight_t.to_device(device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device))
                .transpose()?,
        })
    }

    /// This layer with `delta_t` (in, out) added to W^T (in the higher of f32 and the weight's
    /// dtype, then back to the weight's): a low-rank update folded in (`lora`).
    pub fn plus(&self, delta_t: &Tensor) -> Result<Self> {
        let dtype = self.weight_t.dtype();
        let acc = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        Ok(Self {
            weight_t: (self.weight_t.to_dtype(acc)? + delta_t.to_dtype(acc)?)?.to_dtype(dtype)?,
            bias: self.bias.clone(),
        })
    }

    /// The input gradient for the output gradient `dy` (.., out): dy W. The weight is frozen, so
    /// its own gradient is never formed.
    pub fn backward_input(&self, dy: &Tensor) -> Result<Tensor> {
        let mut dims = dy.dims().to_vec();
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let dx = dy
            .reshape((rows, self.out_features()))?
            .matmul(&self.weight_t.t()?)?;
        if let Some(last) = dims.last_mut() {
            *last = self.weight_t.dim(0)?;
        }
        dx.reshape(dims)
    }
}

/// `x (rows, in) @ w_t (in, out)` for a frozen weight. candle's matmul backward always computes
/// the gradient of both operands; with CLIP frozen the weight gradient is thrown away, and it
/// costs as much as the forward matmul. This op's backward returns the input gradient only.
struct FrozenWeightMatmul;

/// (m, k) x (k, n) on any backend's storage.
fn matmul_2d<S: candle_core::backend::BackendStorage>(
    s1: &S,
    l1: &candle_core::Layout,
    s2: &S,
    l2: &candle_core::Layout,
) -> Result<(S, candle_core::Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let n = l2.shape().dims2()?.1;
    Ok((s1.matmul(s2, (1, m, n, k), l1, l2)?, (m, n).into()))
}

impl candle_core::CustomOp2 for FrozenWeightMatmul {
    fn name(&self) -> &'static str {
        "frozen-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        matmul_2d(s1, l1, s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CudaStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        matmul_2d(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w_t.t()?)?), None))
    }
}

impl Linear {
    /// x W^T without the bias, for inputs that track no gradient (leading dims flattened into
    /// one matmul).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let Some(&in_dim) = dims.last() else {
            return Err(candle_core::Error::Msg(
                "linear layer applied to a 0-d tensor".into(),
            ));
        };
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let last = dims.len() - 1;
        dims[last] = self.weight_t.dim(1)?;
        y.reshape(dims)
    }

    /// act(x W^T + b) + residual, the bias, activation and residual in one pass after the matmul
    /// (untracked inputs).
    pub fn forward_fused(
        &self,
        x: &Tensor,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let y = self.matmul(x)?;
        match &self.bias {
            Some(b) => crate::kernels::bias_act(&y, b, act, residual),
            None => {
                let y = match act {
                    Some(a) => crate::kernels::activation(&y, a)?,
                    None => y,
                };
                match residual {
                    Some(r) => y + r,
                    None => Ok(y),
                }
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return self.forward_fused(x, None, None);
        }
        // Flatten leading dims into one matmul instead of broadcasting W over the batch: this is
        // faster and keeps the backward pass from materialising a batched weight gradient.
        let mut dims = x.dims().to_vec();
        let Some(&in_dim) = dims.last() else {
            return Err(candle_core::Error::Msg(
                "linear layer applied to a 0-d tensor".into(),
            ));
        };
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = if x2.track_op() && !self.weight_t.track_op() {
            x2.contiguous()?
                .apply_op2(&self.weight_t, FrozenWeightMatmul)?
        } else {
            x2.matmul(&self.weight_t)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let last = dims.len() - 1;
        dims[last] = self.weight_t.dim(1)?;
        y.reshape(dims)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }
}

impl LayerNorm {
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self.bias.to_device(device)?,
            eps: self.eps,
        })
    }

    /// The input gradient for the output gradient `dy`, from the input `x` (statistics are
    /// recomputed, which costs less than keeping them).
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        crate::kernels::layer_norm_backward(x, &self.weight, dy, self.eps)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return crate::kernels::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        // Differentiable layer norm over the last dim. Half types are upcast to f32 as PyTorch
        // does; f32 and f64 stay as they are.
        let in_dtype = x.dtype();
        let x = match in_dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(in_dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dim; differentiable when the input tracks gradients.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    // The row max is a constant shift (softmax is invariant to it), so it needs no gradient.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    if !x.track_op() {
        return crate::kernels::activation(x, act);
    }
    match act {
        // x * sigmoid(1.702 x), from primitives so the backward pass exists.
        Activation::QuickGelu => {
            let sig = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
            x * sig
        }
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// Multi-head self-attention with a fused QKV projection (one matmul instead of three).
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    pub(crate) out: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(qkv: Linear, out: Linear, num_heads: usize) -> Self {
        let hidden = out.out_features();
        Self {
            qkv,
            out,
            num_heads,
            head_dim: hidden / num_heads,
        }
    }

    fn scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }

    /// The fused QKV projection of `x` (B, T, d) without its bias: (B, T, 3d).
    pub fn qkv_matmul(&self, x: &Tensor) -> Result<Tensor> {
        self.qkv.matmul(x)
    }

    /// Queries (pre-scaled), keys and values, each (B, H, T, hd), from the QKV projection's output
    /// without its bias (B, T, 3d) (no gradient tracking).
    pub fn split_qkv(&self, y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = y.dims3()?;
        if let Some(bias) = &self.qkv.bias {
            return crate::kernels::qkv_split(y, bias, self.num_heads, self.scale());
        }
        let qkv = y
            .reshape((b, t, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        Ok((
            (qkv.get(0)?.contiguous()? * self.scale())?,
            qkv.get(1)?.contiguous()?,
            qkv.get(2)?.contiguous()?,
        ))
    }

    /// The fused QKV weight with `delta_t` (d, 3d) added to its transpose (`lora`).
    pub fn add_to_qkv(&mut self, delta_t: &Tensor) -> Result<()> {
        self.qkv = self.qkv.plus(delta_t)?;
        Ok(())
    }

    /// Queries (pre-scaled), keys and values, each (B, H, T, hd).
    pub fn qkv_heads(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        if !x.track_op() {
            if let Some(bias) = &self.qkv.bias {
                return crate::kernels::qkv_split(
                    &self.qkv.matmul(x)?,
                    bias,
                    self.num_heads,
                    self.scale(),
                );
            }
        }
        let (b, t, _) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.num_heads, self.head_dim))?;
        // (3, B, H, T, hd)
        let qkv = qkv.permute((2, 0, 3, 1, 4))?;
        Ok((
            (qkv.get(0)?.contiguous()? * self.scale())?,
            qkv.get(1)?.contiguous()?,
            qkv.get(2)?.contiguous()?,
        ))
    }

    /// softmax(q k^T) v with the heads merged, (B, Tq, d), before the out projection, and the
    /// attention probabilities. `causal`: query i sees keys 0..=offset+i only. `valid_keys`:
    /// keys from there on are padding, never seen (untracked inputs only).
    pub fn core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: Option<usize>,
        valid_keys: Option<usize>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, tq, _) = q.dims4()?;
        let scores = q.matmul(&k.t()?)?;
        if !scores.track_op() {
            let probs = crate::kernels::attention_softmax(&scores, causal, valid_keys)?;
            let merged = crate::kernels::transpose12(&probs.matmul(v)?)?.reshape((
                b,
                tq,
                self.num_heads * self.head_dim,
            ))?;
            return Ok((merged, probs));
        }
        let scores = match causal {
            Some(offset) => scores.broadcast_add(&offset_causal_mask(
                tq,
                offset,
                scores.dtype(),
                scores.device(),
            )?)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        let merged =
            probs
                .matmul(v)?
                .transpose(1, 2)?
                .reshape((b, tq, self.num_heads * self.head_dim))?;
        Ok((merged, probs))
    }

    /// Whether `fused` runs for a block input like `x` (B, T, d): see
    /// `kernels::fused_attention_runs`.
    pub fn fuses(&self, x: &Tensor) -> bool {
        self.qkv.bias.is_some()
            && !x.track_op()
            && crate::kernels::fused_attention_runs(x, self.head_dim)
    }

    /// softmax(q k^T) v with the heads merged, (B, T, d), from the layer-normed input `x` (B, T,
    /// d) in one kernel after the QKV matmul (inference on a GPU, when `fuses`).
    pub fn fused(
        &self,
        x: &Tensor,
        causal: Option<usize>,
        valid_keys: Option<usize>,
    ) -> Result<Tensor> {
        let bias =
            self.qkv.bias.as_ref().ok_or_else(|| {
                candle_core::Error::Msg("fused attention needs the QKV bias".into())
            })?;
        crate::kernels::fused_attention(
            &self.qkv.matmul(x)?,
            bias,
            self.num_heads,
            self.scale(),
            causal,
            valid_keys,
        )
    }

    /// Attention over `x` (B, T, d), projected: (B, T, d).
    pub fn forward(&self, x: &Tensor, causal: Option<usize>) -> Result<Tensor> {
        let (q, k, v) = self.qkv_heads(x)?;
        self.out.forward(&self.core(&q, &k, &v, causal, None)?.0)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) act: Activation,
}

impl Mlp {
    pub fn new(fc1: Linear, fc2: Linear, act: Activation) -> Self {
        Self { fc1, fc2, act }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&activate(&self.fc1.forward(x)?, self.act)?)
    }
}

/// Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl EncoderLayer {
    /// A copy of the block's weights on another device.
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        let a = &self.attn;
        let m = &self.mlp;
        Ok(Self {
            ln_1: self.ln_1.to_device(device)?,
            attn: Attention {
                qkv: a.qkv.to_device(device)?,
                out: a.out.to_device(device)?,
                num_heads: a.num_heads,
                head_dim: a.head_dim,
            },
            ln_2: self.ln_2.to_device(device)?,
            mlp: Mlp {
                fc1: m.fc1.to_device(device)?,
                fc2: m.fc2.to_device(device)?,
                act: m.act,
            },
        })
    }

    /// `causal`, `valid_keys`: see `Attention::core` (the image tower pads its tokens to a
    /// multiple of 8; the text tower is causal).
    pub fn forward(
        &self,
        x: &Tensor,
        causal: Option<usize>,
        valid_keys: Option<usize>,
    ) -> Result<Tensor> {
        if !x.track_op() {
            let ln = self.ln_1.forward(x)?;
            let merged = if self.attn.fuses(&ln) {
                self.attn.fused(&ln, causal, valid_keys)?
            } else {
                let (q, k, v) = self.attn.qkv_heads(&ln)?;
                self.attn.core(&q, &k, &v, causal, valid_keys)?.0
            };
            return Ok(self.finish_train(x, &merged, false)?.0);
        }
        if valid_keys.is_some_and(|v| v < x.dim(1).unwrap_or(0)) {
            return Err(candle_core::Error::Msg(
                "padded tokens are for inference only".into(),
            ));
        }
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, causal)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }

    /// One block over sequences that share their first tokens. `prefix` (G, Tp, d) holds each
    /// group's shared tokens, `suffix` (N, Ts, d) the rest of each sequence, `group` (N,) the
    /// group of each sequence. Prefix tokens attend causally among themselves; suffix tokens
    /// attend to their group's prefix keys/values and causally within the suffix. Equal to
    /// running the full sequences, with the prefix's projections and MLP computed once per group
    /// instead of once per sequence.
    pub fn forward_shared(
        &self,
        prefix: &Tensor,
        suffix: &Tensor,
        group: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let tp = prefix.dim(1)?;
        let (qp, kp, vp) = self.attn.qkv_heads(&self.ln_1.forward(prefix)?)?;
        let (qs, ks, vs) = self.attn.qkv_heads(&self.ln_1.forward(suffix)?)?;
        let k_all = Tensor::cat(&[&kp.index_select(group, 0)?, &ks], 2)?;
        let v_all = Tensor::cat(&[&vp.index_select(group, 0)?, &vs], 2)?;
        let (ap, _) = self.attn.core(&qp, &kp, &vp, Some(0), None)?;
        let (as_, _) = self.attn.core(&qs, &k_all, &v_all, Some(tp), None)?;
        if !suffix.track_op() && !prefix.track_op() {
            return Ok((
                self.finish_train(prefix, &ap, false)?.0,
                self.finish_train(suffix, &as_, false)?.0,
            ));
        }
        let p = (prefix + self.attn.out.forward(&ap)?)?;
        let s = (suffix + self.attn.out.forward(&as_)?)?;
        let p = (&p + self.mlp.forward(&self.ln_2.forward(&p)?)?)?;
        let s = (&s + self.mlp.forward(&self.ln_2.forward(&s)?)?)?;
        Ok((p, s))
    }
}

// ---- The training pass: a forward that keeps what the backward needs, and a backward that
// computes input gradients only (CLIP is frozen, so no weight gradient is ever wanted). This is
// what prompt learning runs; it replaces candle's autograd through the text encoder, which
// records ~3x more ops and also forms the gradients of frozen biases. Tests check it against
// autograd (to 1e-10 in f64) and the PyTorch fixtures.

/// One stream of sequences through a block's training forward (see `EncoderLayer::qkv_train`).
#[derive(Debug)]
pub struct StreamTape {
    /// Block input, for ln_1's backward.
    pub x: Tensor,
    /// Queries (pre-scaled), keys and values, (B, H, T, hd).
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Attention probabilities (B, H, Tq, Tk).
    pub probs: Tensor,
    /// x + attention, for ln_2's backward.
    pub mid: Tensor,
    /// fc1's output before the activation.
    pub h: Tensor,
    /// What the block's low-rank updates keep, when it has any (`lora`).
    pub lora: Option<super::lora::LoraTape>,
}

impl Attention {
    /// Gradients of the pre-scaled queries, the keys and the values from that of `core`'s
    /// merged output (B, Tq, d).
    pub fn core_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        d_merged: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, tq, _) = d_merged.dims3()?;
        let d_out = crate::kernels::transpose12(&d_merged.reshape((
            b,
            tq,
            self.num_heads,
            self.head_dim,
        ))?)?;
        let d_probs = d_out.matmul(&v.t()?)?;
        let d_v = probs.t()?.matmul(&d_out)?;
        let d_scores = crate::kernels::softmax_backward(probs, &d_probs)?;
        let d_q = d_scores.matmul(k)?;
        let d_k = d_scores.t()?.matmul(q)?;
        Ok((d_q, d_k, d_v))
    }

    /// The gradient of the QKV projection's input from those of the pre-scaled queries (B, H, T,
    /// hd) and of keys and values whose positions off..off+T are this input's (B, H, Tk, hd).
    pub fn qkv_backward(
        &self,
        d_q: &Tensor,
        d_k: &Tensor,
        d_v: &Tensor,
        off: usize,
    ) -> Result<Tensor> {
        self.qkv_input_grad(&self.qkv_output_grad(d_q, d_k, d_v, off)?)
    }

    /// The gradient of the QKV projection's output (B, T, 3d), from those of `qkv_backward`.
    pub fn qkv_output_grad(
        &self,
        d_q: &Tensor,
        d_k: &Tensor,
        d_v: &Tensor,
        off: usize,
    ) -> Result<Tensor> {
        crate::kernels::qkv_merge(d_q, d_k, d_v, off, self.scale())
    }

    /// The QKV projection's input gradient for its output's (B, T, 3d).
    pub fn qkv_input_grad(&self, d_qkv: &Tensor) -> Result<Tensor> {
        self.qkv.backward_input(d_qkv)
    }
}

impl EncoderLayer {
    /// ln_1 and the QKV projection of a block input (no gradient tracking).
    pub fn qkv_train(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.attn.qkv_heads(&self.ln_1.forward(x)?)
    }

    /// The rest of the block after attention: out projection and residual, then the MLP and its
    /// residual, each bias, activation and residual fused after its matmul. Returns the block
    /// output, the residual stream after attention (`mid`) and, with `keep`, fc1's
    /// pre-activation (`h`) for the backward pass.
    pub fn finish_train(
        &self,
        x: &Tensor,
        merged: &Tensor,
        keep: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let mid = self.attn.out.forward_fused(merged, None, Some(x))?;
        let ln = self.ln_2.forward(&mid)?;
        let (a, h) = if keep {
            let h = self.mlp.fc1.forward_fused(&ln, None, None)?;
            (crate::kernels::activation(&h, self.mlp.act)?, Some(h))
        } else {
            (
                self.mlp.fc1.forward_fused(&ln, Some(self.mlp.act), None)?,
                None,
            )
        };
        let y = self.mlp.fc2.forward_fused(&a, None, Some(&mid))?;
        Ok((y, mid, h))
    }

    /// Backward through `finish_train`: the gradient of `mid` and of the merged attention output.
    pub fn finish_backward(&self, tape: &StreamTape, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let d_act = self.mlp.fc2.backward_input(dy)?;
        let d_h = crate::kernels::activation_backward(&tape.h, &d_act, self.mlp.act)?;
        let d_mid = (dy
            + self
                .ln_2
                .backward(&tape.mid, &self.mlp.fc1.backward_input(&d_h)?)?)?;
        let d_merged = self.attn.out.backward_input(&d_mid)?;
        Ok((d_mid, d_merged))
    }

    /// Backward through `qkv_train` and the attention residual: the block input's gradient.
    /// Keys and values hold this stream's positions at off..off+T.
    pub fn input_backward(
        &self,
        tape: &StreamTape,
        d_mid: &Tensor,
        d_q: &Tensor,
        d_k: &Tensor,
        d_v: &Tensor,
        off: usize,
    ) -> Result<Tensor> {
        let d_ln = self.attn.qkv_backward(d_q, d_k, d_v, off)?;
        d_mid + self.ln_1.backward(&tape.x, &d_ln)?
    }
}

/// x (B, T, D) with rows at..at + n of every sequence replaced by `p` (n, D), in x's dtype: how a
/// deep prompt takes the place of the previous block's outputs at its positions.
pub fn replace_rows(x: &Tensor, at: usize, p: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let n = p.dim(0)?;
    let p = p
        .to_dtype(x.dtype())?
        .unsqueeze(0)?
        .broadcast_as((b, n, d))?;
    let mut parts = vec![x.narrow(1, 0, at)?, p];
    if at + n < t {
        parts.push(x.narrow(1, at + n, t - at - n)?);
    }
    Tensor::cat(&parts, 1)
}

/// Rows at..at + n of every sequence of x (B, T, D), summed over the sequences: (n, D), a deep
/// prompt's gradient from that of its block's input.
pub fn prompt_rows_sum(x: &Tensor, at: usize, n: usize) -> Result<Tensor> {
    x.narrow(1, at, n)?.sum(0)
}

/// (T, offset + T) mask for T queries that follow `offset` earlier positions: every earlier
/// position is visible, and causal order holds among the T.
pub fn offset_causal_mask(
    t: usize,
    offset: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..offset + t).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, offset + t), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn linear_backward_skips_the_frozen_weight() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let lin = Linear::new(w.clone(), Some(b)).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap()).unwrap();
        let target = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev).unwrap();
        let grads = (lin.forward(x.as_tensor()).unwrap() * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // No gradient was computed for the weight...
        assert!(grads.get(&lin.weight_t).is_none());
        // ...and the input gradient is target @ W, as for a plain matmul.
        let expected = target
            .reshape((10, 3))
            .unwrap()
            .matmul(&w)
            .unwrap()
            .reshape((2, 5, 4))
            .unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        let diff = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        // The plain matmul path does store a (wasted) weight gradient: the op above is what skips it.
        let wt = w.t().unwrap().contiguous().unwrap();
        let g2 = x
            .as_tensor()
            .reshape((10, 4))
            .unwrap()
            .matmul(&wt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g2.get(&wt).is_some());
    }
}
