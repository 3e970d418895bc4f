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
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias })
    }

    pub fn out_features(&self) -> usize {
        self.weight_t.dim(1).unwrap_or(0)
    }
}

/// `x (rows, in) @ w_t (in, out)` for a frozen weight. candle's matmul backward always computes
/// the gradient of both operands; with CLIP frozen the weight gradient is thrown away, and it
/// costs as much as the forward matmul. This op's backward returns the input gradient only.
struct FrozenWeightMatmul;

/// (m, k) x (k, n) on any backend's storage.
fn matmul_2d<S: candle_core::backend::BackendStorage>(s1: &S, l1: &candle_core::Layout, s2: &S, l2: &candle_core::Layout) -> Result<(S, candle_core::Shape)> {
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

    fn bwd(&self, _x: &Tensor, w_t: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w_t.t()?)?), None))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Flatten leading dims into one matmul instead of broadcasting W over the batch: this is
        // faster and keeps the backward pass from materialising a batched weight gradient.
        let mut dims = x.dims().to_vec();
        let Some(&in_dim) = dims.last() else {
            return Err(candle_core::Error::Msg("linear layer applied to a 0-d tensor".into()));
        };
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = if x2.track_op() && !self.weight_t.track_op() {
            x2.contiguous()?.apply_op2(&self.weight_t, FrozenWeightMatmul)?
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

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (The fused kernel has no f64 version; f64 is used for finite-difference checks.)
        if !x.track_op() && x.dtype() != DType::F64 {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32);
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
    out: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(qkv: Linear, out: Linear, num_heads: usize) -> Self {
        let hidden = out.out_features();
        Self { qkv, out, num_heads, head_dim: hidden / num_heads }
    }

    /// Queries (pre-scaled), keys and values, each (B, H, T, hd).
    pub fn qkv_heads(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let qkv = self.qkv.forward(x)?.reshape((b, t, 3, self.num_heads, self.head_dim))?;
        // (3, B, H, T, hd)
        let qkv = qkv.permute((2, 0, 3, 1, 4))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        Ok(((qkv.get(0)?.contiguous()? * scale)?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?))
    }

    /// softmax(q k^T + mask) v, heads merged and projected: (B, Tq, d). `mask` is (Tq, Tk).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, tq, _) = q.dims4()?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        let ctx = probs.matmul(v)?.transpose(1, 2)?.reshape((b, tq, self.num_heads * self.head_dim))?;
        self.out.forward(&ctx)
    }

    /// `mask`: optional additive (T, T) mask (the text tower's causal mask).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (q, k, v) = self.qkv_heads(x)?;
        self.attend(&q, &k, &v, mask)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(fc1: Linear, fc2: Linear, act: Activation) -> Self {
        Self { fc1, fc2, act }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&activate(&self.fc1.forward(x)?, self.act)?)
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
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }

    /// One block over sequences that share their first tokens. `prefix` (G, Tp, d) holds each
    /// group's shared tokens, `suffix` (N, Ts, d) the rest of each sequence, `group` (N,) the
    /// group of each sequence. Prefix tokens attend causally among themselves; suffix tokens
    /// attend to their group's prefix keys/values and causally within the suffix
    /// (`suffix_mask`, (Ts, Tp + Ts)). Equal to running the full sequences, with the prefix's
    /// projections and MLP computed once per group instead of once per sequence.
    pub fn forward_shared(&self, prefix: &Tensor, suffix: &Tensor, group: &Tensor, prefix_mask: &Tensor, suffix_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let (qp, kp, vp) = self.attn.qkv_heads(&self.ln_1.forward(prefix)?)?;
        let (qs, ks, vs) = self.attn.qkv_heads(&self.ln_1.forward(suffix)?)?;
        let ap = self.attn.attend(&qp, &kp, &vp, Some(prefix_mask))?;
        let k_all = Tensor::cat(&[&kp.index_select(group, 0)?, &ks], 2)?;
        let v_all = Tensor::cat(&[&vp.index_select(group, 0)?, &vs], 2)?;
        let as_ = self.attn.attend(&qs, &k_all, &v_all, Some(suffix_mask))?;
        let p = (prefix + ap)?;
        let s = (suffix + as_)?;
        let p = (&p + self.mlp.forward(&self.ln_2.forward(&p)?)?)?;
        let s = (&s + self.mlp.forward(&self.ln_2.forward(&s)?)?)?;
        Ok((p, s))
    }
}

/// Additive causal mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    offset_causal_mask(t, 0, dtype, device)
}

/// (T, offset + T) mask for T queries that follow `offset` earlier positions: every earlier
/// position is visible, and causal order holds among the T.
pub fn offset_causal_mask(t: usize, offset: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..offset + t).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 }))
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
        let grads = (lin.forward(x.as_tensor()).unwrap() * &target).unwrap().sum_all().unwrap().backward().unwrap();
        // No gradient was computed for the weight...
        assert!(grads.get(&lin.weight_t).is_none());
        // ...and the input gradient is target @ W, as for a plain matmul.
        let expected = target.reshape((10, 3)).unwrap().matmul(&w).unwrap().reshape((2, 5, 4)).unwrap();
        let got = grads.get(x.as_tensor()).unwrap();
        let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        // The plain matmul path does store a (wasted) weight gradient: the op above is what skips it.
        let wt = w.t().unwrap().contiguous().unwrap();
        let g2 = x.as_tensor().reshape((10, 4)).unwrap().matmul(&wt).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g2.get(&wt).is_some());
    }
}
