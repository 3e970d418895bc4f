//! Attention's heads: the fused QKV projection's output split into scaled queries, keys and
//! values (and their gradients merged back), heads moved between (B, H, T, hd) and (B, T, H, hd),
//! the masked softmax and its backward, and, for inference on a GPU, the whole attention in one
//! kernel. Splitting heads is a permute plus three strided copies in candle; here it is one pass.
use super::op::{apply, cast, last_dim, same_shape, Elem, Kernel};
use candle_core::{DType, Result, Tensor};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;

/// One op of the family and its sizes.
#[derive(Debug, Clone, Copy)]
enum Heads {
    /// (x (B*T, 3*H*hd), bias) -> (3, B, H, T, hd), the queries times `scale`.
    QkvSplit {
        b: usize,
        t: usize,
        h: usize,
        hd: usize,
        scale: f64,
    },
    /// (dq (B, H, T, hd), dk, dv (B, H, tk, hd)) -> (B*T, 3*H*hd) from rows off..off+T of dk, dv.
    QkvMerge {
        b: usize,
        t: usize,
        h: usize,
        hd: usize,
        tk: usize,
        off: usize,
        scale: f64,
    },
    /// (x (A, B, C, D)) -> (A, C, B, D).
    Transpose12 {
        a: usize,
        b: usize,
        c: usize,
        d: usize,
    },
    /// (x) -> softmax over rows of `n`; keys j >= valid masked, and with a causal offset row r,
    /// query r % tq, sees keys j <= offset + that only.
    SoftmaxRows {
        n: usize,
        tq: usize,
        offset: Option<usize>,
        valid: usize,
    },
    /// (y, dy) -> dx of a softmax over rows of `d`.
    SoftmaxBackward { d: usize },
    /// (x (B*T, 3*H*hd), bias (3*H*hd)) -> (B*T, H*hd): attention for inference straight from the
    /// QKV projection, softmax(q k^T) v with q, k, v as `QkvSplit` makes them and the masks of
    /// `SoftmaxRows`; scores and their softmax in the accumulator type, the probabilities rounded
    /// to the element type before they weight the values (as the tensor cores take them).
    Attention {
        b: usize,
        t: usize,
        h: usize,
        hd: usize,
        offset: Option<usize>,
        valid: usize,
        scale: f64,
    },
}

impl Kernel for Heads {
    fn name(&self) -> &'static str {
        match self {
            Heads::QkvSplit { .. } => "qkv_split",
            Heads::QkvMerge { .. } => "qkv_merge",
            Heads::Transpose12 { .. } => "transpose12",
            Heads::SoftmaxRows { .. } => "softmax_rows",
            Heads::SoftmaxBackward { .. } => "softmax_bwd",
            Heads::Attention { .. } => "attention_fused",
        }
    }

    fn out_shape(&self, first: &candle_core::Shape) -> candle_core::Shape {
        match *self {
            Heads::QkvSplit { b, t, h, hd, .. } => (3, b, h, t, hd).into(),
            Heads::QkvMerge { b, t, h, hd, .. } => (b * t, 3 * h * hd).into(),
            Heads::Transpose12 { a, b, c, d } => (a, c, b, d).into(),
            Heads::Attention { b, t, h, hd, .. } => (b * t, h * hd).into(),
            Heads::SoftmaxRows { .. } | Heads::SoftmaxBackward { .. } => first.clone(),
        }
    }

    fn cpu<T: Elem>(&self, ins: &[&[T]], _idx: &[u32]) -> Vec<T> {
        let zero = T::put(T::A::zero());
        match *self {
            Heads::QkvSplit { b, t, h, hd, scale } => {
                let (x, bias) = (ins[0], ins[1]);
                let width = 3 * h * hd;
                let mut out = vec![zero; 3 * b * h * t * hd];
                // One (s, b, h) block of (t, hd) per chunk.
                out.par_chunks_mut(t * hd).enumerate().for_each(|(blk, o)| {
                    let (s, bi, hi) = (blk / (b * h), (blk / h) % b, blk % h);
                    let scale: T::A = if s == 0 { cast(scale) } else { T::A::one() };
                    for ti in 0..t {
                        let col = (s * h + hi) * hd;
                        let src = &x[(bi * t + ti) * width + col..][..hd];
                        for e in 0..hd {
                            o[ti * hd + e] = T::put((src[e].get() + bias[col + e].get()) * scale);
                        }
                    }
                });
                out
            }
            Heads::QkvMerge {
                b,
                t,
                h,
                hd,
                tk,
                off,
                scale,
            } => {
                let (dq, dk, dv) = (ins[0], ins[1], ins[2]);
                let mut out = vec![zero; b * t * 3 * h * hd];
                let scale: T::A = cast(scale);
                out.par_chunks_mut(3 * h * hd)
                    .enumerate()
                    .for_each(|(row, o)| {
                        let (bi, ti) = (row / t, row % t);
                        for s in 0..3 {
                            for hi in 0..h {
                                let (src, base) = match s {
                                    0 => (dq, ((bi * h + hi) * t + ti) * hd),
                                    1 => (dk, ((bi * h + hi) * tk + off + ti) * hd),
                                    _ => (dv, ((bi * h + hi) * tk + off + ti) * hd),
                                };
                                for e in 0..hd {
                                    let v = src[base + e].get();
                                    o[(s * h + hi) * hd + e] =
                                        T::put(if s == 0 { v * scale } else { v });
                                }
                            }
                        }
                    });
                out
            }
            Heads::Transpose12 { a, b, c, d } => {
                let x = ins[0];
                let mut y = vec![zero; a * b * c * d];
                y.par_chunks_mut(b * d).enumerate().for_each(|(ac, y)| {
                    let (ai, ci) = (ac / c, ac % c);
                    for bi in 0..b {
                        y[bi * d..(bi + 1) * d]
                            .copy_from_slice(&x[((ai * b + bi) * c + ci) * d..][..d]);
                    }
                });
                y
            }
            Heads::SoftmaxRows {
                n,
                tq,
                offset,
                valid,
            } => {
                let x = ins[0];
                let mut y = vec![zero; x.len()];
                y.par_chunks_mut(n)
                    .zip(x.par_chunks(n))
                    .enumerate()
                    .for_each(|(r, (y, x))| {
                        let last = offset
                            .map_or(n - 1, |o| (o + r % tq).min(n - 1))
                            .min(valid - 1);
                        let m = x[..=last]
                            .iter()
                            .fold(T::A::neg_infinity(), |m, v| m.max(v.get()));
                        let s = x[..=last].iter().map(|v| (v.get() - m).exp()).sum::<T::A>();
                        for j in 0..n {
                            y[j] = T::put(if j <= last {
                                (x[j].get() - m).exp() / s
                            } else {
                                T::A::zero()
                            });
                        }
                    });
                y
            }
            Heads::SoftmaxBackward { d } => {
                let (y, dy) = (ins[0], ins[1]);
                let mut dx = vec![zero; y.len()];
                dx.par_chunks_mut(d)
                    .zip(y.par_chunks(d).zip(dy.par_chunks(d)))
                    .for_each(|(dx, (y, dy))| {
                        let s = y
                            .iter()
                            .zip(dy)
                            .map(|(a, b)| a.get() * b.get())
                            .sum::<T::A>();
                        for i in 0..d {
                            dx[i] = T::put(y[i].get() * (dy[i].get() - s));
                        }
                    });
                dx
            }
            Heads::Attention {
                b,
                t,
                h,
                hd,
                offset,
                valid,
                scale,
            } => {
                let (x, bias) = (ins[0], ins[1]);
                let (d, w3) = (h * hd, 3 * h * hd);
                let round = |v: T::A| T::put(v).get();
                let scale: T::A = cast(scale);
                // q, k or v (s = 0, 1, 2) of head `hi`, position j of sequence bi, as QkvSplit rounds it.
                let qkv = |s: usize, bi: usize, j: usize, hi: usize, e: usize| {
                    let col = s * d + hi * hd + e;
                    let v = x[(bi * t + j) * w3 + col].get() + bias[col].get();
                    round(if s == 0 { v * scale } else { v })
                };
                let mut out = vec![zero; b * t * d];
                out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
                    let (bi, i) = (row / t, row % t);
                    let last = offset
                        .map_or(t - 1, |off| (off + i).min(t - 1))
                        .min(valid - 1);
                    for hi in 0..h {
                        let scores: Vec<T::A> = (0..=last)
                            .map(|j| {
                                (0..hd)
                                    .map(|e| qkv(0, bi, i, hi, e) * qkv(1, bi, j, hi, e))
                                    .sum()
                            })
                            .collect();
                        let m = scores.iter().fold(T::A::neg_infinity(), |m, &v| m.max(v));
                        let sum = scores.iter().map(|&v| (v - m).exp()).sum::<T::A>();
                        let p: Vec<T::A> =
                            scores.iter().map(|&v| round((v - m).exp() / sum)).collect();
                        for e in 0..hd {
                            o[hi * hd + e] = T::put(
                                p.iter()
                                    .enumerate()
                                    .map(|(j, &pj)| pj * qkv(2, bi, j, hi, e))
                                    .sum(),
                            );
                        }
                    }
                });
                out
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn vector_run(&self) -> usize {
        match *self {
            Heads::QkvSplit { hd, .. } | Heads::QkvMerge { hd, .. } => hd,
            Heads::Transpose12 { d, .. } => d,
            Heads::SoftmaxRows { n, .. } => n,
            Heads::SoftmaxBackward { .. } | Heads::Attention { .. } => 0,
        }
    }

    #[cfg(feature = "cuda")]
    fn launch(&self, at: &super::cuda::Site) -> Result<super::cuda::Launch> {
        use super::cuda::{i, per_row, row_threads, warp_per_row, Launch, Scalar};
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        let (suffix, v, n_in) = (at.suffix, at.v, at.n_in);
        Ok(match *self {
            Heads::QkvSplit { b, t, h, hd, scale } => Launch::new(
                at.kernel.clone(),
                per_row(b * t, row_threads(3 * h * hd, v)),
                vec![i(b), i(t), i(h), i(hd), Scalar::F64(scale)],
            ),
            Heads::QkvMerge {
                b,
                t,
                h,
                hd,
                tk,
                off,
                scale,
            } => Launch::new(
                at.kernel.clone(),
                per_row(b * t, row_threads(3 * h * hd, v)),
                vec![i(b), i(t), i(h), i(hd), i(tk), i(off), Scalar::F64(scale)],
            ),
            Heads::Transpose12 { a, b, c, d } => Launch::new(
                at.kernel.clone(),
                per_row(a * c, row_threads(b * d, v)),
                vec![i(a), i(b), i(c), i(d)],
            ),
            Heads::SoftmaxRows {
                n,
                tq,
                offset,
                valid,
            } => {
                // A row in registers when it fits (P packs of V per lane: 4 x 16 bytes, or 8 x 1).
                let fits = n <= 32 * v * if v > 1 { 4 } else { 8 };
                let kernel = if fits {
                    format!("softmax_warp{}_{suffix}", if v > 1 { "_v" } else { "" })
                } else {
                    format!("softmax_rows_{suffix}")
                };
                Launch::new(
                    kernel,
                    warp_per_row(n_in / n),
                    vec![
                        Scalar::Usize(n_in / n),
                        i(n),
                        i(tq),
                        Scalar::I32(offset.map_or(-1, |o| o as i32)),
                        i(valid),
                    ],
                )
            }
            Heads::SoftmaxBackward { d } => Launch::new(
                at.kernel.clone(),
                warp_per_row(n_in / d),
                vec![Scalar::Usize(n_in / d), i(d)],
            ),
            Heads::Attention {
                b,
                t,
                h,
                hd,
                offset,
                valid,
                scale,
            } => {
                if !matches!(suffix, "f16" | "bf16")
                    || hd != FUSED_ATTENTION_HEAD
                    || t > FUSED_ATTENTION_MAX_KEYS
                    || !at.aligned
                {
                    candle_core::bail!("fused attention: no kernel for {suffix}, heads of {hd}, {t} positions (see fused_attention_runs)");
                }
                let cfg = LaunchConfig {
                    grid_dim: (h as u32, b as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: attention_shared_bytes(t) as u32,
                };
                let mut launch = Launch::new(
                    format!("attention_fused_{suffix}"),
                    cfg,
                    vec![
                        i(t),
                        i(h),
                        i(t.next_multiple_of(16)),
                        Scalar::I32(offset.map_or(-1, |o| o as i32)),
                        i(valid),
                        Scalar::F64(scale),
                    ],
                );
                // Up to what the longest sequence needs, or what the device allows.
                launch.shared_opt_in = Some(
                    attention_shared_bytes(FUSED_ATTENTION_MAX_KEYS)
                        .min(super::cuda::shared_memory_per_block(at.dev)?),
                );
                launch
            }
        })
    }
}

/// The fused QKV projection's output (B, T, 3*H*hd) without its bias, to queries (times
/// `scale`), keys and values, each (B, H, T, hd), with the bias added.
pub fn qkv_split(
    x: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, w) = x.dims3()?;
    if w % (3 * heads) != 0 || bias.elem_count() != w {
        candle_core::bail!(
            "qkv of width {w} and bias of {} for {heads} heads",
            bias.elem_count()
        );
    }
    let op = Heads::QkvSplit {
        b,
        t,
        h: heads,
        hd: w / (3 * heads),
        scale,
    };
    let out = apply(op, &[x, bias])?;
    Ok((out.get(0)?, out.get(1)?, out.get(2)?))
}

/// The gradient of the QKV projection's output (B, T, 3*H*hd) from those of queries (as split:
/// times `scale` again), keys and values. Keys and values may hold more positions than the
/// queries (B, H, tk, hd); rows off..off+T are taken.
pub fn qkv_merge(dq: &Tensor, dk: &Tensor, dv: &Tensor, off: usize, scale: f64) -> Result<Tensor> {
    let (b, h, t, hd) = dq.dims4()?;
    let tk = dk.dim(2)?;
    same_shape(dk, dv, "keys and values")?;
    if dk.dims() != [b, h, tk, hd] || off + t > tk {
        candle_core::bail!(
            "qkv gradients {:?} and {:?} at offset {off}",
            dq.dims(),
            dk.dims()
        );
    }
    let op = Heads::QkvMerge {
        b,
        t,
        h,
        hd,
        tk,
        off,
        scale,
    };
    apply(op, &[dq, dk, dv])?.reshape((b, t, 3 * h * hd))
}

/// (A, B, C, D) -> (A, C, B, D), contiguous: heads merged after attention (B, H, T, hd) ->
/// (B, T, H, hd), or split for its backward.
pub fn transpose12(x: &Tensor) -> Result<Tensor> {
    let (a, b, c, d) = x.dims4()?;
    apply(Heads::Transpose12 { a, b, c, d }, &[x])
}

/// Softmax over the last dim of attention scores (.., Tq, Tk). With `causal_offset` = Some(o),
/// query i sees keys 0..=o+i only (o = the number of earlier positions before the queries); keys
/// from `valid_keys` on (padding) are never seen.
pub fn attention_softmax(
    x: &Tensor,
    causal_offset: Option<usize>,
    valid_keys: Option<usize>,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 {
        candle_core::bail!("attention scores need 2 dims, got {dims:?}");
    }
    let n = dims[dims.len() - 1];
    let valid = valid_keys.unwrap_or(n).min(n);
    if valid == 0 {
        candle_core::bail!("attention over no valid key");
    }
    let op = Heads::SoftmaxRows {
        n,
        tq: dims[dims.len() - 2],
        offset: causal_offset,
        valid,
    };
    apply(op, &[x])
}

/// Input gradient of a softmax over the last dim, from its output `y` and output gradient `dy`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape(y, dy, "softmax backward")?;
    apply(Heads::SoftmaxBackward { d: last_dim(y)? }, &[y, dy])
}

/// Attention heads of this size, and keys up to this many, have the fused CUDA kernel.
pub const FUSED_ATTENTION_HEAD: usize = 64;
pub const FUSED_ATTENTION_MAX_KEYS: usize = 256;

/// `attention_fused`'s dynamic shared memory for `t` positions (2-byte elements): keys and
/// values padded to a multiple of 16 rows of 64 + 8, and each warp's fp32 scratch of 16 rows.
#[cfg(feature = "cuda")]
fn attention_shared_bytes(t: usize) -> usize {
    let tk = t.next_multiple_of(16);
    2 * tk * (FUSED_ATTENTION_HEAD + 8) * 2 + 4 * 16 * (tk.max(FUSED_ATTENTION_HEAD) + 4) * 4
}

/// Whether `fused_attention` has a CUDA kernel for a block's (B, T, ..) tensors like `x`: on a
/// GPU, in fp16 or bf16, heads of 64 and at most 256 positions, and shared memory enough.
pub fn fused_attention_runs(x: &Tensor, head_dim: usize) -> bool {
    let t = x.dims().get(1).copied().unwrap_or(usize::MAX);
    matches!(x.dtype(), DType::F16 | DType::BF16)
        && head_dim == FUSED_ATTENTION_HEAD
        && t <= FUSED_ATTENTION_MAX_KEYS
        && cuda_shared_memory_fits(x, t)
}

#[cfg(feature = "cuda")]
fn cuda_shared_memory_fits(x: &Tensor, t: usize) -> bool {
    match x.device() {
        candle_core::Device::Cuda(d) => super::cuda::shared_memory_per_block(d)
            .is_ok_and(|max| attention_shared_bytes(t) <= max),
        _ => false,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_shared_memory_fits(_x: &Tensor, _t: usize) -> bool {
    false
}

/// Self-attention for inference from the QKV projection's output `qkv` (B, T, 3*H*hd) without
/// its bias: softmax(q k^T) v with the heads merged, (B, T, H*hd). `causal` and `valid_keys` as
/// in `attention_softmax`. Equal to `qkv_split`, scores, `attention_softmax` and `transpose12`
/// up to rounding (the scores stay in fp32 here); one kernel on the GPU (see
/// `fused_attention_runs`); the CPU twin is for tests.
pub fn fused_attention(
    qkv: &Tensor,
    bias: &Tensor,
    heads: usize,
    scale: f64,
    causal: Option<usize>,
    valid_keys: Option<usize>,
) -> Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    if heads == 0 || w % (3 * heads) != 0 || bias.elem_count() != w || t == 0 {
        candle_core::bail!(
            "fused attention: qkv {:?} and bias of {} for {heads} heads",
            qkv.dims(),
            bias.elem_count()
        );
    }
    let valid = valid_keys.unwrap_or(t).min(t);
    if valid == 0 {
        candle_core::bail!("attention over no valid key");
    }
    let hd = w / (3 * heads);
    let op = Heads::Attention {
        b,
        t,
        h: heads,
        hd,
        offset: causal,
        valid,
        scale,
    };
    apply(op, &[qkv, bias])?.reshape((b, t, heads * hd))
}

#[cfg(test)]
mod tests {
    use super::super::op::max_diff;
    use super::*;
    use candle_core::{Device, Var, D};

    /// The softmax, plain, causal and with padding keys, against candle's; its backward against
    /// candle's autograd, f64.
    #[test]
    fn softmax_and_its_backward_equal_candle_and_autograd() {
        let dev = Device::Cpu;
        let x =
            Var::from_tensor(&(Tensor::randn(0f64, 2.0, (6, 37), &dev).unwrap() + 0.5).unwrap())
                .unwrap();
        let xt = x.as_tensor();
        let dy = Tensor::randn(0f64, 1.0, (6, 37), &dev).unwrap();
        let scores = Tensor::randn(0f64, 2.0, (2, 3, 4, 7), &dev).unwrap();
        let plain = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        assert!(max_diff(&attention_softmax(&scores, None, None).unwrap(), &plain) < 1e-15);
        let mask = crate::clip::nn::offset_causal_mask(4, 3, DType::F64, &dev).unwrap();
        let masked =
            candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        assert!(max_diff(&attention_softmax(&scores, Some(3), None).unwrap(), &masked) < 1e-15);
        // Padding keys are never attended to: the same as the scores without them.
        let padded = attention_softmax(&scores, None, Some(5)).unwrap();
        assert!(
            max_diff(
                &padded.narrow(3, 0, 5).unwrap(),
                &candle_nn::ops::softmax_last_dim(
                    &scores.narrow(3, 0, 5).unwrap().contiguous().unwrap()
                )
                .unwrap()
            ) < 1e-15
        );
        assert_eq!(
            padded
                .narrow(3, 5, 2)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
        let e = xt
            .broadcast_sub(&xt.max_keepdim(D::Minus1).unwrap().detach())
            .unwrap()
            .exp()
            .unwrap();
        let y = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            max_diff(
                &softmax_backward(&y.detach(), &dy).unwrap(),
                g.get(xt).unwrap()
            ) < 1e-12
        );
    }

    /// The layout ops against candle's reshapes and permutes.
    #[test]
    fn head_layouts_equal_candle_permutes() {
        let dev = Device::Cpu;
        let (b, t, h, hd) = (2, 5, 3, 4);
        let x = Tensor::randn(0f32, 1.0, (b, t, 3 * h * hd), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3 * h * hd, &dev).unwrap();
        let (q, k, v) = qkv_split(&x, &bias, h, 0.5).unwrap();
        let r = x
            .broadcast_add(&bias)
            .unwrap()
            .reshape((b, t, 3, h, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        assert_eq!(max_diff(&q, &(r.get(0).unwrap() * 0.5).unwrap()), 0.0);
        assert_eq!(max_diff(&k, &r.get(1).unwrap().contiguous().unwrap()), 0.0);
        assert_eq!(max_diff(&v, &r.get(2).unwrap().contiguous().unwrap()), 0.0);
        // Merge is split's inverse (scale applied again), also from a window of longer keys.
        let merged = qkv_merge(&q, &k, &v, 0, 2.0).unwrap();
        assert!(max_diff(&merged, &x.broadcast_add(&bias).unwrap()) < 1e-6);
        let pad = Tensor::randn(0f32, 1.0, (b, h, 2, hd), &dev).unwrap();
        let k_long = Tensor::cat(&[&pad, &k], 2).unwrap();
        let v_long = Tensor::cat(&[&pad, &v], 2).unwrap();
        assert!(max_diff(&qkv_merge(&q, &k_long, &v_long, 2, 2.0).unwrap(), &merged) < 1e-12);
        assert_eq!(
            max_diff(
                &transpose12(&q).unwrap(),
                &q.transpose(1, 2).unwrap().contiguous().unwrap()
            ),
            0.0
        );
    }

    /// The fused attention's CPU twin against attention composed from candle ops (f64: equal to
    /// rounding), unmasked, with padding keys, and causal after earlier positions.
    #[test]
    fn fused_attention_equals_attention_composed_from_candle_ops() {
        let dev = Device::Cpu;
        let (b, t, h, hd) = (2, 7, 3, 4);
        let x = Tensor::randn(0f64, 1.0, (b, t, 3 * h * hd), &dev).unwrap();
        let bias = Tensor::randn(0f64, 1.0, 3 * h * hd, &dev).unwrap();
        let scale = 0.5;
        let r = x
            .broadcast_add(&bias)
            .unwrap()
            .reshape((b, t, 3, h, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let (q, k, v) = (
            (r.get(0).unwrap() * scale).unwrap(),
            r.get(1).unwrap(),
            r.get(2).unwrap(),
        );
        let scores = q
            .contiguous()
            .unwrap()
            .matmul(&k.contiguous().unwrap().t().unwrap())
            .unwrap();
        for (causal, valid) in [
            (None, None),
            (None, Some(5)),
            (Some(0), None),
            (Some(2), Some(6)),
        ] {
            let mask: Vec<f64> = (0..t * t)
                .map(|ij| {
                    let (i, j) = (ij / t, ij % t);
                    let seen = causal.is_none_or(|o| j <= o + i) && valid.is_none_or(|v| j < v);
                    if seen {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
            let p =
                candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
            let expected = p
                .matmul(&v.contiguous().unwrap())
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, h * hd))
                .unwrap();
            let fused = fused_attention(&x, &bias, h, scale, causal, valid).unwrap();
            assert!(
                max_diff(&fused, &expected) < 1e-12,
                "causal {causal:?}, valid {valid:?}"
            );
        }
        assert!(fused_attention(&x, &bias, 5, scale, None, None).is_err());
        assert!(!fused_attention_runs(&x, hd), "no CUDA kernel on the CPU");
    }
}
