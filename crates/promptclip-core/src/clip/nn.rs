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

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Flatten leading dims into one matmul instead of broadcasting W over the batch: this is
        // faster and keeps the backward pass from materialising a batched weight gradient.
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight_t.dim(1)?;
        y.reshape(out_dims)
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

    /// `mask`: optional additive (T, T) mask (the text tower's causal mask).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.qkv.forward(x)?.reshape((b, t, 3, self.num_heads, self.head_dim))?;
        // (3, B, H, T, hd)
        let qkv = qkv.permute((2, 0, 3, 1, 4))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out.forward(&ctx)
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
}

/// Additive causal mask: 0 on and below the diagonal, -inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}
