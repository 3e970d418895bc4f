//! The ResNet image tower's data movement on the CPU, each in one pass over memory: the windows of a
//! 3×3 convolution laid side by side for one matmul (im2col), and the average pool, both on
//! channels-last (B, H, W, C) tensors. Composed from candle's ops (pad, nine strided copies, a
//! concatenation; a reshape and two sums) they took half of RN50's encoding time on the CPU.
//! On a GPU `clip::resnet` keeps that composition: each op there is one kernel over memory that
//! is fast compared with the matmuls.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, WithDType};
use rayon::prelude::*;

/// x (B, H, W, C) -> (B·H'·W', 9·C): row (b, y', x') holds the 3×3 window around input position
/// (y'·stride, x'·stride) with zero padding 1, in (dy, dx, c) order; H' = (H − 1) / stride + 1.
pub struct Im2Col3x3 {
    pub stride: usize,
}

/// x (B, H, W, C) -> (B, H / s, W / s, C): the mean of each s×s cell (PyTorch's AvgPool2d(s):
/// stride s, no padding, rows and columns past the last whole cell dropped), summed in f64.
pub struct AvgPool {
    pub s: usize,
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// Runs `f` on the storage's elements, whatever its float type.
macro_rules! each_float {
    ($s:expr, $l:expr, $what:expr, $f:ident $(, $arg:expr)*) => {
        match $s {
            CpuStorage::F32(v) => CpuStorage::F32($f(contiguous(v, $l, $what)? $(, $arg)*)),
            CpuStorage::F64(v) => CpuStorage::F64($f(contiguous(v, $l, $what)? $(, $arg)*)),
            CpuStorage::F16(v) => CpuStorage::F16($f(contiguous(v, $l, $what)? $(, $arg)*)),
            CpuStorage::BF16(v) => CpuStorage::BF16($f(contiguous(v, $l, $what)? $(, $arg)*)),
            other => candle_core::bail!("{}: unsupported dtype {:?}", $what, candle_core::backend::BackendStorage::dtype(other)),
        }
    };
}

fn im2col<T: Copy + Default + Send + Sync>(
    x: &[T],
    (b, h, w, c): (usize, usize, usize, usize),
    stride: usize,
) -> Vec<T> {
    let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
    let row = 9 * c;
    let n = b * ho * wo * row;
    // Every element is written once below (the padding's zeros too), so the buffer is not zeroed
    // first: that pass, on one thread, cost as much as the copies.
    let mut y: Vec<T> = Vec::with_capacity(n);
    let zeros = vec![T::default(); c];
    // One task per output row of the grid (b, y'): its W' windows.
    y.spare_capacity_mut()
        .par_chunks_mut(wo * row)
        .enumerate()
        .for_each(|(r, out)| {
            let (bi, oy) = (r / ho, r % ho);
            for ox in 0..wo {
                for dy in 0..3 {
                    let iy = (oy * stride + dy).checked_sub(1).filter(|&iy| iy < h);
                    for dx in 0..3 {
                        let ix = (ox * stride + dx).checked_sub(1).filter(|&ix| ix < w);
                        let src = match (iy, ix) {
                            (Some(iy), Some(ix)) => {
                                let at = ((bi * h + iy) * w + ix) * c;
                                &x[at..at + c]
                            }
                            _ => &zeros[..],
                        };
                        let dst = ox * row + (dy * 3 + dx) * c;
                        for (o, v) in out[dst..dst + c].iter_mut().zip(src) {
                            o.write(*v);
                        }
                    }
                }
            }
        });
    // Safety: the chunks cover all n elements and each was written above.
    unsafe { y.set_len(n) };
    y
}

fn avg_pool<T: WithDType + Send + Sync>(
    x: &[T],
    (b, h, w, c): (usize, usize, usize, usize),
    s: usize,
) -> Vec<T> {
    let (ho, wo) = (h / s, w / s);
    let mut y = vec![T::zero(); b * ho * wo * c];
    let scale = 1.0 / (s * s) as f64;
    y.par_chunks_mut(wo * c).enumerate().for_each(|(r, out)| {
        let (bi, oy) = (r / ho, r % ho);
        let mut acc = vec![0f64; wo * c];
        for iy in oy * s..oy * s + s {
            let line = &x[(bi * h + iy) * w * c..];
            for ox in 0..wo {
                for ix in ox * s..ox * s + s {
                    let px = &line[ix * c..(ix + 1) * c];
                    for (a, v) in acc[ox * c..(ox + 1) * c].iter_mut().zip(px) {
                        *a += v.to_f64();
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = T::from_f64(a * scale);
        }
    });
    y
}

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col_3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (b, h, w, c) = dims;
        if h == 0 || w == 0 || !(1..=2).contains(&self.stride) {
            candle_core::bail!("im2col_3x3: input {:?}, stride {}", l.shape(), self.stride);
        }
        let (ho, wo) = ((h - 1) / self.stride + 1, (w - 1) / self.stride + 1);
        let out = each_float!(s, l, "im2col_3x3", im2col, dims, self.stride);
        Ok((out, Shape::from((b * ho * wo, 9 * c))))
    }
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "avg_pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (b, h, w, c) = dims;
        if self.s == 0 || h < self.s || w < self.s {
            candle_core::bail!("avg_pool: input {:?}, cell {}", l.shape(), self.s);
        }
        let out = each_float!(s, l, "avg_pool", avg_pool, dims, self.s);
        Ok((out, Shape::from((b, h / self.s, w / self.s, c))))
    }
}

/// (y (rows, C), bias (C)[, residual (rows, C)]) -> y + bias (+ residual), then ReLU when `relu`:
/// a convolution's folded BatchNorm, its block's shortcut and activation in one pass.
pub struct BiasResidualRelu {
    pub relu: bool,
}

fn bias_residual_relu<T>(y: &[T], b: &[T], r: Option<&[T]>, relu: bool) -> Vec<T>
where
    T: Copy + Default + PartialOrd + std::ops::Add<Output = T> + Send + Sync,
{
    let (n, c) = (y.len(), b.len());
    let mut out: Vec<T> = Vec::with_capacity(n);
    // Chunks of whole rows, large enough that scheduling them costs nothing.
    let rows = (16_384 / c).max(1);
    out.spare_capacity_mut()
        .par_chunks_mut(rows * c)
        .enumerate()
        .for_each(|(k, o)| {
            let at = k * rows * c;
            for (i, o) in o.iter_mut().enumerate() {
                let mut v = y[at + i] + b[i % c];
                if let Some(r) = r {
                    v = v + r[at + i];
                }
                if relu && v < T::default() {
                    v = T::default();
                }
                o.write(v);
            }
        });
    // Safety: the chunks cover all n elements and each was written above.
    unsafe { out.set_len(n) };
    out
}

fn bias_residual_relu_storage(
    relu: bool,
    (y, yl): (&CpuStorage, &Layout),
    (b, bl): (&CpuStorage, &Layout),
    r: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    const WHAT: &str = "bias_residual_relu";
    let c = bl.shape().elem_count();
    let dims = yl.shape().dims();
    if c == 0 || dims.last() != Some(&c) || r.is_some_and(|(_, rl)| rl.shape() != yl.shape()) {
        candle_core::bail!("{WHAT}: shapes {:?}, bias {:?}", yl.shape(), bl.shape());
    }
    macro_rules! go {
        ($v:ident, $t:ident) => {{
            let b = match b {
                CpuStorage::$t(b) => contiguous(b, bl, WHAT)?,
                _ => candle_core::bail!("{WHAT}: the bias's dtype differs"),
            };
            let r = match r {
                Some((CpuStorage::$t(r), rl)) => Some(contiguous(r, rl, WHAT)?),
                Some(_) => candle_core::bail!("{WHAT}: the residual's dtype differs"),
                None => None,
            };
            CpuStorage::$t(bias_residual_relu(contiguous($v, yl, WHAT)?, b, r, relu))
        }};
    }
    let out = match y {
        CpuStorage::F32(v) => go!(v, F32),
        CpuStorage::F64(v) => go!(v, F64),
        CpuStorage::F16(v) => go!(v, F16),
        CpuStorage::BF16(v) => go!(v, BF16),
        other => candle_core::bail!(
            "{WHAT}: unsupported dtype {:?}",
            candle_core::backend::BackendStorage::dtype(other)
        ),
    };
    Ok((out, yl.shape().clone()))
}

impl candle_core::CustomOp2 for BiasResidualRelu {
    fn name(&self) -> &'static str {
        "bias_residual_relu"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bias_residual_relu_storage(self.relu, (y, yl), (b, bl), None)
    }
}

impl candle_core::CustomOp3 for BiasResidualRelu {
    fn name(&self) -> &'static str {
        "bias_residual_relu"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bias_residual_relu_storage(self.relu, (y, yl), (b, bl), Some((r, rl)))
    }
}
