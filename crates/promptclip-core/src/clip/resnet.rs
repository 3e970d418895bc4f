//! CLIP's ResNet image encoder, OpenAI's `ModifiedResNet` (clip/model.py; open_clip's
//! `ModifiedResNet` has the same layers and parameter names):
//!
//! - a stem of three 3×3 convolutions (the first with stride 2), each with BatchNorm and ReLU,
//!   then a 2×2 average pool;
//! - four stages of Bottleneck blocks (1×1, 3×3, 1×1 convolutions, expansion 4). A block that
//!   downsamples does it with an average pool after its 3×3 convolution, and its shortcut is an
//!   average pool, a 1×1 convolution and a BatchNorm;
//! - an attention pool: the mean of the final grid is prepended as a query token, a positional
//!   embedding of its own is added, and one multi-head attention from that token over all of
//!   them, whose output projection (`c_proj`) maps to the joint embedding (so the ResNet needs no
//!   separate visual projection).
//!
//! The image tower is frozen in every method, so only inference is needed. BatchNorm is used in
//! its inference form and folded into the convolution before it when the weights are read:
//! BN(conv(x, W)) = conv(x, W·s) + (β − μ·s) with s = γ / √(σ² + ε).
//!
//! Activations are kept channels-last, (B, H, W, C): a 1×1 convolution is then one matmul over
//! the rows, and a 3×3 one is a matmul over the nine shifted copies of the input laid side by
//! side (im2col), so all the arithmetic runs in the matrix-multiply kernels (gemm on the CPU,
//! cuBLAS on a GPU).
use super::config::{Activation, ResNetShape};
use super::nn::{softmax_last_dim, Linear};
use super::weights::Weights;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};

/// PyTorch's BatchNorm2d default.
const BN_EPS: f64 = 1e-5;

/// A convolution followed by an inference-mode BatchNorm, folded into one: kernel 1 (stride 1)
/// or kernel 3 (padding 1, stride 1 or 2).
#[derive(Debug, Clone)]
struct ConvBn {
    /// (k·k·C_in, C_out), rows in (dy, dx, c_in) order, as `im2col` lays out its columns.
    weight: Tensor,
    /// (C_out).
    bias: Tensor,
    kernel: usize,
    stride: usize,
}

impl ConvBn {
    /// `conv` (a Conv2d without bias) and `bn` (a BatchNorm2d) by their name prefixes.
    fn load(
        w: &Weights,
        conv: &str,
        bn: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self> {
        // Fold in f32 at least (f64 for an f64 model) whatever the compute dtype: the fold
        // divides by √(σ² + ε), which half precision would round before the weights are used.
        let fold = if w.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let k = w.get_as(
            &format!("{conv}.weight"),
            &[c_out, c_in, kernel, kernel],
            fold,
        )?;
        let bn_get = |p: &str| w.get_as(&format!("{bn}.{p}"), &[c_out], fold);
        let (gamma, beta) = (bn_get("weight")?, bn_get("bias")?);
        let (mean, var) = (bn_get("running_mean")?, bn_get("running_var")?);
        let var_min = var.min(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if var_min + BN_EPS <= 0.0 {
            return Err(Error::bad_config(
                w.path(),
                format!(
                    "tensor `{bn}.running_var` holds {var_min}: a variance must not be negative"
                ),
            ));
        }
        let scale = gamma.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        // (C_out, C_in, kh, kw) · s -> (kh, kw, C_in, C_out) -> (k·k·C_in, C_out).
        let weight = k
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?
            .permute((2, 3, 1, 0))?
            .reshape((kernel * kernel * c_in, c_out))?;
        let dtype = w.dtype();
        Ok(Self {
            weight: weight.to_dtype(dtype)?.contiguous()?,
            bias: bias.to_dtype(dtype)?,
            kernel,
            stride,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self.bias.to_device(device)?,
            ..*self
        })
    }

    /// x (B, H, W, C_in) -> act(BN(conv(x)) + residual), (B, H', W', C_out).
    fn forward(
        &self,
        x: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (cols, ho, wo) = if self.kernel == 1 {
            (x.reshape((b * h * w, c))?, h, w)
        } else {
            im2col_3x3(x, self.stride)?
        };
        let c_out = self.bias.dim(0)?;
        let y = cols.matmul(&self.weight)?;
        let residual = residual
            .map(|r| r.reshape((b * ho * wo, c_out)))
            .transpose()?;
        let y = bias_residual_relu(&y, &self.bias, relu, residual.as_ref())?;
        y.reshape((b, ho, wo, c_out))
    }
}

/// act(y + bias (+ residual)) with act ReLU or none: one kernel on the CPU; on a GPU the fused
/// bias kernel, then the ReLU when there is a residual.
fn bias_residual_relu(
    y: &Tensor,
    bias: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let op = crate::kernels::conv::BiasResidualRelu { relu };
    if y.device().is_cpu() {
        return match residual {
            Some(r) => y.apply_op3_no_bwd(bias, &r.contiguous()?, &op),
            None => y.apply_op2_no_bwd(bias, &op),
        };
    }
    bias_residual_relu_ops(y, bias, relu, residual)
}

fn bias_residual_relu_ops(
    y: &Tensor,
    bias: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let act = relu.then_some(Activation::Relu);
    match residual {
        None => crate::kernels::bias_act(y, bias, act, None),
        Some(r) => {
            let y = crate::kernels::bias_act(y, bias, None, Some(r))?;
            if relu {
                y.relu()
            } else {
                Ok(y)
            }
        }
    }
}

/// The columns of a 3×3 convolution with padding 1: x (B, H, W, C) -> ((B·H'·W', 9·C), H', W'),
/// each row the 3×3 window around one output position, in (dy, dx, c) order.
fn im2col_3x3(x: &Tensor, stride: usize) -> candle_core::Result<(Tensor, usize, usize)> {
    let (_, h, w, _) = x.dims4()?;
    let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    if x.device().is_cpu() {
        let cols = x
            .contiguous()?
            .apply_op1_no_bwd(&crate::kernels::conv::Im2Col3x3 { stride })?;
        return Ok((cols, ho, wo));
    }
    Ok((im2col_3x3_ops(x, stride)?, ho, wo))
}

/// `im2col_3x3` composed from candle's ops (the GPU's path): pad, nine strided copies and a
/// concatenation, each one kernel.
fn im2col_3x3_ops(x: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let windows = match stride {
        1 => {
            let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
            let mut v = Vec::with_capacity(9);
            for dy in 0..3 {
                for dx in 0..3 {
                    v.push(xp.narrow(1, dy, h)?.narrow(2, dx, w)?.contiguous()?);
                }
            }
            v
        }
        2 => {
            // Pad to 2·(H'+1) rows and columns so that the padded grid splits into pairs: row
            // 2i + dy of the padded input is then pair i + dy/2, member dy % 2.
            let xp = x
                .pad_with_zeros(1, 1, 2 * (ho + 1) - h - 1)?
                .pad_with_zeros(2, 1, 2 * (wo + 1) - w - 1)?
                .reshape((b, ho + 1, 2, wo + 1, 2, c))?;
            let mut v = Vec::with_capacity(9);
            for dy in 0..3 {
                for dx in 0..3 {
                    v.push(
                        xp.narrow(1, dy / 2, ho)?
                            .narrow(2, dy % 2, 1)?
                            .narrow(3, dx / 2, wo)?
                            .narrow(4, dx % 2, 1)?
                            .contiguous()?
                            .reshape((b, ho, wo, c))?,
                    );
                }
            }
            v
        }
        s => candle_core::bail!("3x3 convolution with stride {s}: only 1 and 2 occur in CLIP"),
    };
    Tensor::cat(&windows, 3)?.reshape((b * ho * wo, 9 * c))
}

/// PyTorch's AvgPool2d(s) (stride s, no padding, floor) on x (B, H, W, C).
fn avg_pool(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    if x.device().is_cpu() {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&crate::kernels::conv::AvgPool { s });
    }
    avg_pool_ops(x, s)
}

/// `avg_pool` composed from candle's ops (the GPU's path).
fn avg_pool_ops(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = (h / s, w / s);
    let x = if ho * s != h || wo * s != w {
        x.narrow(1, 0, ho * s)?.narrow(2, 0, wo * s)?.contiguous()?
    } else {
        x.clone()
    };
    x.reshape((b, ho, s, wo, s, c))?
        .sum(4)?
        .sum(2)?
        .affine(1.0 / (s * s) as f64, 0.0)
}

#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    /// The stride, taken by average pools (after conv2, and on the shortcut).
    stride: usize,
    /// avgpool(stride), 1×1 conv, BN: where the stride or the width changes.
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn load(w: &Weights, p: &str, inplanes: usize, planes: usize, stride: usize) -> Result<Self> {
        let out = planes * 4;
        let downsample = (stride > 1 || inplanes != out)
            .then(|| {
                ConvBn::load(
                    w,
                    // OpenAI names the shortcut's layers "-1" (the pool, no weights), "0"
                    // (the convolution) and "1" (the BatchNorm).
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    inplanes,
                    out,
                    1,
                    1,
                )
            })
            .transpose()?;
        Ok(Self {
            conv1: ConvBn::load(
                w,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                inplanes,
                planes,
                1,
                1,
            )?,
            conv2: ConvBn::load(
                w,
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                planes,
                planes,
                3,
                1,
            )?,
            conv3: ConvBn::load(
                w,
                &format!("{p}.conv3"),
                &format!("{p}.bn3"),
                planes,
                out,
                1,
                1,
            )?,
            stride,
            downsample,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            conv1: self.conv1.to_device(device)?,
            conv2: self.conv2.to_device(device)?,
            conv3: self.conv3.to_device(device)?,
            stride: self.stride,
            downsample: self
                .downsample
                .as_ref()
                .map(|d| d.to_device(device))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.conv1.forward(x, true, None)?;
        let out = self.conv2.forward(&out, true, None)?;
        let out = avg_pool(&out, self.stride)?;
        let identity = match &self.downsample {
            Some(d) => d.forward(&avg_pool(x, self.stride)?, false, None)?,
            None => x.clone(),
        };
        self.conv3.forward(&out, true, Some(&identity))
    }
}

/// Attention pooling: one query (the grid's mean) over the grid and itself.
#[derive(Debug, Clone)]
struct AttentionPool {
    /// (H·W + 1, C): the mean token first, then the grid in raster order.
    positional_embedding: Tensor,
    q: Linear,
    /// Keys and values in one projection, (C -> 2C).
    kv: Linear,
    c_proj: Linear,
    heads: usize,
}

impl AttentionPool {
    fn load(w: &Weights, grid: usize, c: usize, out: usize, heads: usize) -> Result<Self> {
        let p = "visual.attnpool";
        let lin = |name: &str, o: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                w.get(&format!("{p}.{name}.weight"), &[o, c])?,
                w.get(&format!("{p}.{name}.bias"), &[o])?,
            ))
        };
        let (qw, qb) = lin("q_proj", c)?;
        let (kw, kb) = lin("k_proj", c)?;
        let (vw, vb) = lin("v_proj", c)?;
        let (cw, cb) = lin("c_proj", out)?;
        Ok(Self {
            positional_embedding: w
                .get(&format!("{p}.positional_embedding"), &[grid * grid + 1, c])?,
            q: Linear::new(qw, Some(qb))?,
            kv: Linear::new(Tensor::cat(&[kw, vw], 0)?, Some(Tensor::cat(&[kb, vb], 0)?))?,
            c_proj: Linear::new(cw, Some(cb))?,
            heads,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            positional_embedding: self.positional_embedding.to_device(device)?,
            q: self.q.to_device(device)?,
            kv: self.kv.to_device(device)?,
            c_proj: self.c_proj.to_device(device)?,
            heads: self.heads,
        })
    }

    /// x (B, H, W, C) -> (B, E).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (n, heads) = (h * w + 1, self.heads);
        let hd = c / heads;
        let grid = x.reshape((b, h * w, c))?;
        // (B, 1, C) ++ (B, HW, C) -> (B, HW+1, C)
        let tokens = Tensor::cat(&[&grid.mean_keepdim(1)?, &grid], 1)?
            .broadcast_add(&self.positional_embedding)?;
        // Only the first token is a query: (B, C) -> (B, heads, 1, hd), scaled as PyTorch does.
        let q = (self.q.forward(&tokens.narrow(1, 0, 1)?)? * (hd as f64).powf(-0.5))?
            .reshape((b, 1, heads, hd))?
            .transpose(1, 2)?;
        // (B, N, 2C) -> keys and values (B, heads, N, hd) each.
        let kv = self.kv.forward(&tokens)?.reshape((b, n, 2, heads, hd))?;
        let k = kv
            .narrow(2, 0, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = kv
            .narrow(2, 1, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let scores = q.contiguous()?.matmul(&k.t()?)?; // (B, heads, 1, N)
        let probs = softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // (B, heads, 1, hd)
        let out = out.transpose(1, 2)?.reshape((b, c))?;
        self.c_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
pub struct ModifiedResNet {
    stem: [ConvBn; 3],
    blocks: Vec<Bottleneck>,
    attnpool: AttentionPool,
    pub shape: ResNetShape,
    /// Input resolution (the attention pool's grid × 32).
    pub image_size: usize,
    channels: usize,
}

impl ModifiedResNet {
    /// From OpenAI-named weights (`visual.conv1`, `visual.layer1.0.*`, `visual.attnpool.*`):
    /// `shape` and `image_size` as `Weights::infer_openai_config` found them, `embed_dim` the
    /// joint embedding's width.
    pub fn load(
        w: &Weights,
        shape: ResNetShape,
        image_size: usize,
        channels: usize,
        embed_dim: usize,
    ) -> Result<Self> {
        let width = shape.width;
        let half = width / 2;
        let stem = [
            ConvBn::load(w, "visual.conv1", "visual.bn1", channels, half, 3, 2)?,
            ConvBn::load(w, "visual.conv2", "visual.bn2", half, half, 3, 1)?,
            ConvBn::load(w, "visual.conv3", "visual.bn3", half, width, 3, 1)?,
        ];
        let mut blocks = Vec::with_capacity(shape.layers.iter().sum());
        let mut inplanes = width;
        for (stage, &count) in shape.layers.iter().enumerate() {
            let planes = width << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let p = format!("visual.layer{}.{i}", stage + 1);
                blocks.push(Bottleneck::load(w, &p, inplanes, planes, stride)?);
                inplanes = planes * 4;
            }
        }
        let grid = image_size / 32;
        let attnpool = AttentionPool::load(w, grid, shape.pool_width(), embed_dim, shape.heads())?;
        Ok(Self {
            stem,
            blocks,
            attnpool,
            shape,
            image_size,
            channels,
        })
    }

    /// A copy of the tower's weights on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let [a, b, c] = &self.stem;
        Ok(Self {
            stem: [
                a.to_device(device)?,
                b.to_device(device)?,
                c.to_device(device)?,
            ],
            blocks: self
                .blocks
                .iter()
                .map(|b| b.to_device(device))
                .collect::<Result<_>>()?,
            attnpool: self.attnpool.to_device(device)?,
            ..self.clone()
        })
    }

    /// Pixels (B, C, H, W), already normalised, to image features (B, E) in the joint space.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let last = self.run(pixels, &mut |_| {})?;
        Ok(self.attnpool.forward(&last)?)
    }

    /// The stem's output and each stage's, channels last (B, H, W, C), for tests that locate a
    /// difference.
    pub fn stages(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(5);
        self.run(pixels, &mut |x| out.push(x.clone()))?;
        Ok(out)
    }

    /// The convolutional trunk, showing `visit` the stem's output and each stage's; returns the
    /// last stage's (B, H/32, W/32, 32·width).
    fn run(&self, pixels: &Tensor, visit: &mut dyn FnMut(&Tensor)) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.image_size;
        if c != self.channels || h != s || w != s {
            return Err(Error::InvalidArgument(format!(
                "pixel tensor of shape ({b}, {c}, {h}, {w}); this model takes ({b}, {}, {s}, {s})",
                self.channels
            )));
        }
        let mut x = pixels.permute((0, 2, 3, 1))?.contiguous()?;
        for conv in &self.stem {
            x = conv.forward(&x, true, None)?;
        }
        x = avg_pool(&x, 2)?;
        visit(&x);
        let mut blocks = self.blocks.iter();
        for &count in &self.shape.layers {
            for block in blocks.by_ref().take(count) {
                x = block.forward(&x)?;
            }
            visit(&x);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU kernels against the composition of candle's ops the GPU runs, on sizes that are
    /// odd, even and smaller than a window, for both strides.
    #[test]
    fn cpu_kernels_equal_the_composed_ops() {
        let dev = Device::Cpu;
        for (b, h, w, c) in [(2, 7, 5, 3), (1, 8, 8, 4), (3, 1, 2, 5), (1, 224, 6, 3)] {
            let x = Tensor::randn(0f32, 1.0, (b, h, w, c), &dev).unwrap();
            for stride in [1, 2] {
                let (fused, ..) = im2col_3x3(&x, stride).unwrap();
                let ops = im2col_3x3_ops(&x, stride).unwrap();
                assert_eq!(fused.dims(), ops.dims());
                let diff = (fused - ops).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(
                    diff.to_scalar::<f32>().unwrap(),
                    0.0,
                    "im2col {:?} stride {stride}",
                    (b, h, w, c)
                );
            }
            // The folded BatchNorm, shortcut and ReLU after a convolution.
            let y = x.reshape((b * h * w, c)).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
            for relu in [false, true] {
                for r in [None, Some((&y * 0.5).unwrap())] {
                    let fused = bias_residual_relu(&y, &bias, relu, r.as_ref()).unwrap();
                    let ops = bias_residual_relu_ops(&y, &bias, relu, r.as_ref()).unwrap();
                    let diff = (fused - ops).unwrap().abs().unwrap().max_all().unwrap();
                    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "bias, relu {relu}");
                }
            }
            for s in [2, 3] {
                if h < s || w < s {
                    continue;
                }
                let (fused, ops) = (avg_pool(&x, s).unwrap(), avg_pool_ops(&x, s).unwrap());
                assert_eq!(fused.dims(), ops.dims());
                let diff = (fused - ops).unwrap().abs().unwrap().max_all().unwrap();
                assert!(
                    diff.to_scalar::<f32>().unwrap() < 1e-6,
                    "avg pool {:?} cell {s}",
                    (b, h, w, c)
                );
            }
        }
    }
}
