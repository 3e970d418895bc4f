//! Fused ops of CLIP's blocks, with a CPU implementation here and a CUDA kernel in `ops.cu`
//! (the same arithmetic: two-pass statistics, accumulation in f32, f64 for f64 inputs).
//!
//! Each replaces several candle ops: a layer norm is ~10 of them composed and its backward ~20, a
//! bias add broadcasts through candle's generic strided kernel (half of all GPU time in the first
//! profile), and splitting heads is a permute plus three strided copies. On the GPU every op is a
//! kernel launch and a pass over memory, so this is where the time goes. They take and return
//! plain tensors without autograd: inference needs none, and the text encoder's training pass
//! (`clip::text::TextTape`) calls the backward ops itself, since prompt learning needs only
//! input gradients.
use crate::clip::config::Activation;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;

pub mod conv;

/// Element types the CPU loops accept, with the type they accumulate in.
trait Elem: Copy + Send + Sync + 'static {
    type A: Float + Send + Sync + std::iter::Sum;
    fn get(self) -> Self::A;
    fn put(a: Self::A) -> Self;
}
macro_rules! elem {
    ($t:ty, $a:ty, $get:expr, $put:expr) => {
        impl Elem for $t {
            type A = $a;
            #[inline]
            fn get(self) -> $a {
                $get(self)
            }
            #[inline]
            fn put(a: $a) -> Self {
                $put(a)
            }
        }
    };
}
elem!(f32, f32, |x| x, |a| a);
elem!(f64, f64, |x| x, |a| a);
elem!(f16, f32, f16::to_f32, f16::from_f32);
elem!(bf16, f32, bf16::to_f32, bf16::from_f32);

fn cast<A: Float>(x: f64) -> A {
    num_traits::cast(x).unwrap_or_else(A::nan)
}

/// One fused op and its sizes. Inputs are contiguous; their order is given per variant.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// (x, gamma, beta) -> layer norm of rows of `d`.
    LayerNorm { d: usize, eps: f64 },
    /// (x, gamma, dy) -> dx.
    LayerNormBackward { d: usize, eps: f64 },
    /// (h) -> act(h).
    Activation { act: i32 },
    /// (h, dy) -> dy * act'(h).
    ActivationBackward { act: i32 },
    /// (y, dy) -> dx of a softmax over rows of `d`.
    SoftmaxBackward { d: usize },
    /// (x, b[, r]) -> act(x + b) (+ r), b broadcast over rows of `d`; act -1: none.
    BiasAct { d: usize, act: i32 },
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
    /// (kp (G, H, tp, hd), ks (N, H, ts, hd)) -> (N, H, tt, hd), sequence n reading its
    /// group's prefix, groups of `per_group` consecutive sequences, rows from tp + ts on zero.
    GatherCat {
        n: usize,
        per_group: usize,
        h: usize,
        tp: usize,
        ts: usize,
        tt: usize,
        hd: usize,
    },
    /// (x) -> softmax over rows of `n`; keys j >= valid masked, and with a causal offset row r,
    /// query r % tq, sees keys j <= offset + that only.
    SoftmaxRows {
        n: usize,
        tq: usize,
        offset: Option<usize>,
        valid: usize,
    },
    /// (x (G*K, H, tt, hd)) -> (G, H, tp, hd): the first tp rows summed over each group's K.
    GroupPrefixSum {
        g: usize,
        k: usize,
        h: usize,
        tt: usize,
        tp: usize,
        hd: usize,
    },
    /// (src (rows, d), idx u32 (rows)) -> (rows_out, d), zero but at rows idx.
    ScatterRows { rows_out: usize, d: usize },
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
    /// (u8 (N, S, S, 3)) -> f32 (N, 3, S, S), (x / 255 - mean) / std per channel.
    NormalizePixels {
        n: usize,
        s: usize,
        mean: [f32; 3],
        std: [f32; 3],
    },
}

impl Op {
    fn kernel(&self) -> &'static str {
        match self {
            Op::LayerNorm { .. } => "layer_norm_fwd",
            Op::LayerNormBackward { .. } => "layer_norm_bwd",
            Op::Activation { .. } => "activation_fwd",
            Op::ActivationBackward { .. } => "activation_bwd",
            Op::SoftmaxBackward { .. } => "softmax_bwd",
            Op::BiasAct { .. } => "bias_act",
            Op::QkvSplit { .. } => "qkv_split",
            Op::QkvMerge { .. } => "qkv_merge",
            Op::Transpose12 { .. } => "transpose12",
            Op::GatherCat { .. } => "gather_cat",
            Op::SoftmaxRows { .. } => "softmax_rows",
            Op::GroupPrefixSum { .. } => "group_prefix_sum",
            Op::ScatterRows { .. } => "scatter_rows",
            Op::Attention { .. } => "attention_fused",
            Op::NormalizePixels { .. } => "normalize_pixels",
        }
    }

    fn out_shape(&self, first: &Shape) -> Shape {
        match *self {
            Op::QkvSplit { b, t, h, hd, .. } => (3, b, h, t, hd).into(),
            Op::QkvMerge { b, t, h, hd, .. } => (b * t, 3 * h * hd).into(),
            Op::Transpose12 { a, b, c, d } => (a, c, b, d).into(),
            Op::GatherCat { n, h, tt, hd, .. } => (n, h, tt, hd).into(),
            Op::GroupPrefixSum { g, h, tp, hd, .. } => (g, h, tp, hd).into(),
            Op::ScatterRows { rows_out, d } => (rows_out, d).into(),
            Op::NormalizePixels { n, s, .. } => (n, 3, s, s).into(),
            Op::Attention { b, t, h, hd, .. } => (b * t, h * hd).into(),
            _ => first.clone(),
        }
    }

    /// The CPU implementation; `idx` is ScatterRows' index input.
    fn cpu<T: Elem>(&self, ins: &[&[T]], idx: &[u32]) -> Vec<T> {
        let zero = T::put(T::A::zero());
        match *self {
            Op::LayerNorm { d, eps } => {
                let (x, g, b) = (ins[0], ins[1], ins[2]);
                let mut y = vec![zero; x.len()];
                y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
                    let (mean, rstd) = row_stats(x, eps);
                    for i in 0..d {
                        y[i] = T::put((x[i].get() - mean) * rstd * g[i].get() + b[i].get());
                    }
                });
                y
            }
            Op::LayerNormBackward { d, eps } => {
                // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
                let (x, gamma, dy) = (ins[0], ins[1], ins[2]);
                let mut dx = vec![zero; x.len()];
                dx.par_chunks_mut(d)
                    .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
                    .for_each(|(dx, (x, dy))| {
                        let (mean, rstd) = row_stats(x, eps);
                        let n: T::A = cast(d as f64);
                        let (mut sg, mut sgx) = (T::A::zero(), T::A::zero());
                        for i in 0..d {
                            let g = dy[i].get() * gamma[i].get();
                            sg = sg + g;
                            sgx = sgx + g * (x[i].get() - mean) * rstd;
                        }
                        let (mg, mgx) = (sg / n, sgx / n);
                        for i in 0..d {
                            let xhat = (x[i].get() - mean) * rstd;
                            dx[i] = T::put(rstd * (dy[i].get() * gamma[i].get() - mg - xhat * mgx));
                        }
                    });
                dx
            }
            Op::Activation { act } => ins[0]
                .par_iter()
                .with_min_len(4096)
                .map(|&x| T::put(act_fwd(x.get(), act)))
                .collect(),
            Op::ActivationBackward { act } => ins[0]
                .par_iter()
                .zip(ins[1].par_iter())
                .with_min_len(4096)
                .map(|(&x, &g)| T::put(g.get() * act_grad(x.get(), act)))
                .collect(),
            Op::SoftmaxBackward { d } => {
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
            Op::BiasAct { d, act } => {
                let (x, b, r) = (ins[0], ins[1], ins.get(2).copied());
                let mut y = vec![zero; x.len()];
                y.par_chunks_mut(d)
                    .zip(x.par_chunks(d))
                    .enumerate()
                    .for_each(|(row, (y, x))| {
                        for i in 0..d {
                            let mut v = x[i].get() + b[i].get();
                            if act >= 0 {
                                v = act_fwd(v, act);
                            }
                            if let Some(r) = r {
                                v = v + r[row * d + i].get();
                            }
                            y[i] = T::put(v);
                        }
                    });
                y
            }
            Op::QkvSplit { b, t, h, hd, scale } => {
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
            Op::QkvMerge {
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
            Op::Transpose12 { a, b, c, d } => {
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
            Op::GatherCat {
                n,
                per_group,
                h,
                tp,
                ts,
                tt,
                hd,
            } => {
                let (kp, ks) = (ins[0], ins[1]);
                let mut out = vec![zero; n * h * tt * hd];
                out.par_chunks_mut(tt * hd).enumerate().for_each(|(nh, o)| {
                    let (ni, hi) = (nh / h, nh % h);
                    let g = ni / per_group;
                    o[..tp * hd].copy_from_slice(&kp[(g * h + hi) * tp * hd..][..tp * hd]);
                    o[tp * hd..(tp + ts) * hd]
                        .copy_from_slice(&ks[(ni * h + hi) * ts * hd..][..ts * hd]);
                });
                out
            }
            Op::SoftmaxRows {
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
            Op::GroupPrefixSum {
                g,
                k,
                h,
                tt,
                tp,
                hd,
            } => {
                let x = ins[0];
                let mut out = vec![zero; g * h * tp * hd];
                out.par_chunks_mut(tp * hd).enumerate().for_each(|(gh, o)| {
                    let (gi, hi) = (gh / h, gh % h);
                    let mut acc = vec![T::A::zero(); tp * hd];
                    for ki in 0..k {
                        let src = &x[(((gi * k + ki) * h + hi) * tt) * hd..][..tp * hd];
                        for (a, v) in acc.iter_mut().zip(src) {
                            *a = *a + v.get();
                        }
                    }
                    for (o, a) in o.iter_mut().zip(acc) {
                        *o = T::put(a);
                    }
                });
                out
            }
            Op::Attention {
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
            Op::NormalizePixels { .. } => unreachable!("8-bit input: see normalize_pixels_cpu"),
            Op::ScatterRows { rows_out, d } => {
                let src = ins[0];
                let mut out = vec![zero; rows_out * d];
                for (r, &i) in idx.iter().enumerate() {
                    out[i as usize * d..(i as usize + 1) * d]
                        .copy_from_slice(&src[r * d..(r + 1) * d]);
                }
                out
            }
        }
    }

    /// Apply to tensors: inputs made contiguous, float inputs in the first input's dtype.
    fn apply(self, ins: &[&Tensor]) -> Result<Tensor> {
        let dtype = ins[0].dtype();
        if !supported(dtype) && !matches!(self, Op::NormalizePixels { .. }) {
            candle_core::bail!("{}: unsupported dtype {dtype:?}", self.kernel());
        }
        let ins = ins
            .iter()
            .map(|t| {
                if t.dtype() == DType::U32 || t.dtype() == dtype {
                    t.contiguous()
                } else {
                    t.to_dtype(dtype)?.contiguous()
                }
            })
            .collect::<Result<Vec<_>>>()?;
        match ins.as_slice() {
            [a] => a.apply_op1_no_bwd(&self),
            [a, b] => a.apply_op2_no_bwd(b, &self),
            [a, b, c] => a.apply_op3_no_bwd(b, c, &self),
            _ => candle_core::bail!("{}: 1 to 3 inputs", self.kernel()),
        }
    }
}

fn row_stats<T: Elem>(x: &[T], eps: f64) -> (T::A, T::A) {
    let n: T::A = cast(x.len() as f64);
    let mean = x.iter().map(|v| v.get()).sum::<T::A>() / n;
    let var = x
        .iter()
        .map(|v| (v.get() - mean) * (v.get() - mean))
        .sum::<T::A>()
        / n;
    (mean, T::A::one() / (var + cast(eps)).sqrt())
}

fn act_fwd<A: Float>(h: A, act: i32) -> A {
    let c = cast::<A>;
    let one = A::one();
    match act {
        0 => h / (one + (-(c(1.702) * h)).exp()),
        1 => c(0.5) * h * (one + erf(h * c(std::f64::consts::FRAC_1_SQRT_2))),
        2 => {
            c(0.5) * h * (one + (c(0.797_884_560_802_865_4) * (h + c(0.044715) * h * h * h)).tanh())
        }
        _ => h.max(A::zero()),
    }
}

fn act_grad<A: Float>(h: A, act: i32) -> A {
    let c = cast::<A>;
    let one = A::one();
    match act {
        0 => {
            let s = one / (one + (-(c(1.702) * h)).exp());
            s + c(1.702) * h * s * (one - s)
        }
        1 => {
            c(0.5) * (one + erf(h * c(std::f64::consts::FRAC_1_SQRT_2)))
                + h * (c(-0.5) * h * h).exp() * c(0.398_942_280_401_432_7)
        }
        2 => {
            let k = c(0.797_884_560_802_865_4);
            let t = (k * (h + c(0.044715) * h * h * h)).tanh();
            c(0.5) * (one + t) + c(0.5) * h * (one - t * t) * k * (one + c(3.0 * 0.044715) * h * h)
        }
        _ => {
            if h > A::zero() {
                one
            } else {
                A::zero()
            }
        }
    }
}

/// erf through the f64 implementation candle's own CPU `erf` uses.
fn erf<A: Float>(x: A) -> A {
    cast(candle_core::cpu::erf::erf_f64(
        x.to_f64().unwrap_or(f64::NAN),
    ))
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::QuickGelu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("kernel input must be contiguous"),
    }
}

/// The CPU storage variant of each element type.
trait Storage: Elem {
    fn of(s: &CpuStorage) -> Option<&Vec<Self>>;
    fn wrap(v: Vec<Self>) -> CpuStorage;
}
macro_rules! storage {
    ($t:ty, $v:ident) => {
        impl Storage for $t {
            fn of(s: &CpuStorage) -> Option<&Vec<Self>> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
        }
    };
}
storage!(f32, F32);
storage!(f64, F64);
storage!(f16, F16);
storage!(bf16, BF16);

/// Run `Op::cpu` on float storages of one dtype; `idx` is ScatterRows' index input.
fn cpu_run(op: &Op, ins: &[(&CpuStorage, &Layout)], idx: &[u32]) -> Result<CpuStorage> {
    use candle_core::backend::BackendStorage;
    fn go<T: Storage>(op: &Op, ins: &[(&CpuStorage, &Layout)], idx: &[u32]) -> Result<CpuStorage> {
        let slices = ins
            .iter()
            .map(|(s, l)| {
                slice(
                    T::of(s).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "{}: inputs of one float dtype",
                            op.kernel()
                        ))
                    })?,
                    l,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(T::wrap(op.cpu(&slices, idx)))
    }
    match ins[0].0.dtype() {
        DType::F32 => go::<f32>(op, ins, idx),
        DType::F64 => go::<f64>(op, ins, idx),
        DType::F16 => go::<f16>(op, ins, idx),
        DType::BF16 => go::<bf16>(op, ins, idx),
        d => candle_core::bail!("{}: unsupported dtype {d:?}", op.kernel()),
    }
}

fn normalize_pixels_cpu(x: &[u8], n: usize, s: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = s * s;
    let mut y = vec![0f32; n * 3 * plane];
    y.par_chunks_mut(3 * plane)
        .zip(x.par_chunks(3 * plane))
        .for_each(|(y, x)| {
            for p in 0..plane {
                for c in 0..3 {
                    // The same arithmetic as preprocess::normalize_into.
                    let v = (x[p * 3 + c] as f64 * (1.0 / 255.0)) as f32;
                    y[c * plane + p] = (v - mean[c]) / std[c];
                }
            }
        });
    y
}

impl candle_core::CustomOp1 for Op {
    fn name(&self) -> &'static str {
        self.kernel()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let (
            Op::NormalizePixels {
                n,
                s: size,
                mean,
                std,
            },
            CpuStorage::U8(x),
        ) = (self, s)
        {
            return Ok((
                CpuStorage::F32(normalize_pixels_cpu(slice(x, l)?, *n, *size, *mean, *std)),
                self.out_shape(l.shape()),
            ));
        }
        Ok((cpu_run(self, &[(s, l)], &[])?, self.out_shape(l.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::run(self, &[(s, l)])?, self.out_shape(l.shape())))
    }
}

impl candle_core::CustomOp2 for Op {
    fn name(&self) -> &'static str {
        self.kernel()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (self, s2) {
            (Op::ScatterRows { .. }, CpuStorage::U32(idx)) => {
                cpu_run(self, &[(s1, l1)], slice(idx, l2)?)?
            }
            _ => cpu_run(self, &[(s1, l1), (s2, l2)], &[])?,
        };
        Ok((out, self.out_shape(l1.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            cuda::run(self, &[(s1, l1), (s2, l2)])?,
            self.out_shape(l1.shape()),
        ))
    }
}

impl candle_core::CustomOp3 for Op {
    fn name(&self) -> &'static str {
        self.kernel()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            cpu_run(self, &[(s1, l1), (s2, l2), (s3, l3)], &[])?,
            self.out_shape(l1.shape()),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            cuda::run(self, &[(s1, l1), (s2, l2), (s3, l3)])?,
            self.out_shape(l1.shape()),
        ))
    }
}

pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

fn last_dim(t: &Tensor) -> Result<usize> {
    t.dims()
        .last()
        .copied()
        .filter(|&d| d > 0)
        .ok_or_else(|| candle_core::Error::Msg("empty last dimension".into()))
}

fn same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{what}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

/// LayerNorm over the last dim.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    Op::LayerNorm {
        d: last_dim(x)?,
        eps,
    }
    .apply(&[x, gamma, beta])
}

/// Input gradient of `layer_norm(x, gamma, _, eps)` for the output gradient `dy`.
pub fn layer_norm_backward(x: &Tensor, gamma: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    same_shape(x, dy, "layer norm backward")?;
    Op::LayerNormBackward {
        d: last_dim(x)?,
        eps,
    }
    .apply(&[x, gamma, dy])
}

/// The MLP activation, elementwise.
pub fn activation(h: &Tensor, act: Activation) -> Result<Tensor> {
    Op::Activation { act: act_code(act) }.apply(&[h])
}

/// Input gradient of `activation(h, act)` for the output gradient `dy`.
pub fn activation_backward(h: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    same_shape(h, dy, "activation backward")?;
    Op::ActivationBackward { act: act_code(act) }.apply(&[h, dy])
}

/// Input gradient of a softmax over the last dim, from its output `y` and output gradient `dy`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape(y, dy, "softmax backward")?;
    Op::SoftmaxBackward { d: last_dim(y)? }.apply(&[y, dy])
}

/// `act(x + b) + residual` in one pass: b (d) is broadcast over the rows of x (.., d); `act`
/// and `residual` are optional.
pub fn bias_act(
    x: &Tensor,
    b: &Tensor,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = Op::BiasAct {
        d: last_dim(x)?,
        act: act.map_or(-1, act_code),
    };
    if b.elem_count() != last_dim(x)? {
        candle_core::bail!("bias of {} for rows of {}", b.elem_count(), last_dim(x)?);
    }
    match residual {
        Some(r) => {
            same_shape(x, r, "residual")?;
            op.apply(&[x, b, r])
        }
        None => op.apply(&[x, b]),
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
    let out = Op::QkvSplit {
        b,
        t,
        h: heads,
        hd: w / (3 * heads),
        scale,
    }
    .apply(&[x, bias])?;
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
    Op::QkvMerge {
        b,
        t,
        h,
        hd,
        tk,
        off,
        scale,
    }
    .apply(&[dq, dk, dv])?
    .reshape((b, t, 3 * h * hd))
}

/// (A, B, C, D) -> (A, C, B, D), contiguous: heads merged after attention (B, H, T, hd) ->
/// (B, T, H, hd), or split for its backward.
pub fn transpose12(x: &Tensor) -> Result<Tensor> {
    let (a, b, c, d) = x.dims4()?;
    Op::Transpose12 { a, b, c, d }.apply(&[x])
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
    Op::SoftmaxRows {
        n,
        tq: dims[dims.len() - 2],
        offset: causal_offset,
        valid,
    }
    .apply(&[x])
}

/// Attention heads of this size, and keys up to this many, have the fused CUDA kernel.
pub const FUSED_ATTENTION_HEAD: usize = 64;
pub const FUSED_ATTENTION_MAX_KEYS: usize = 256;

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
        candle_core::Device::Cuda(d) => {
            cuda::shared_memory_per_block(d).is_ok_and(|max| cuda::attention_shared_bytes(t) <= max)
        }
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
    Op::Attention {
        b,
        t,
        h: heads,
        hd,
        offset: causal,
        valid,
        scale,
    }
    .apply(&[qkv, bias])?
    .reshape((b, t, heads * hd))
}

/// Keys (or values) of sequences sharing a prefix, as attention reads them: the group's prefix
/// `kp` (G, H, tp, hd) before each sequence's own `ks` (N, H, ts, hd), groups of N / G
/// consecutive sequences, then zero rows up to `rows` (>= tp + ts): (N, H, rows, hd).
pub fn gather_cat(kp: &Tensor, ks: &Tensor, rows: usize) -> Result<Tensor> {
    let (g, h, tp, hd) = kp.dims4()?;
    let (n, h2, ts, hd2) = ks.dims4()?;
    if g == 0 || n % g != 0 || h != h2 || hd != hd2 || rows < tp + ts {
        candle_core::bail!(
            "gather_cat: prefix {:?} and sequences {:?} into {rows} rows",
            kp.dims(),
            ks.dims()
        );
    }
    Op::GatherCat {
        n,
        per_group: n / g,
        h,
        tp,
        ts,
        tt: rows,
        hd,
    }
    .apply(&[kp, ks])
}

/// For key or value gradients (G*K, H, tt, hd) of sequences grouped K by K, the sum over each
/// group of the first `tp` positions: (G, H, tp, hd).
pub fn group_prefix_sum(x: &Tensor, groups: usize, tp: usize) -> Result<Tensor> {
    let (n, h, tt, hd) = x.dims4()?;
    if groups == 0 || n % groups != 0 || tp > tt {
        candle_core::bail!("{n} sequences in {groups} groups, prefix {tp} of {tt}");
    }
    Op::GroupPrefixSum {
        g: groups,
        k: n / groups,
        h,
        tt,
        tp,
        hd,
    }
    .apply(&[x])
}

/// 8-bit crops (N, S, S, 3), HWC as decoded, to the model's normalised input (N, 3, S, S) in
/// `dtype`: (x / 255 - mean) / std per channel, computed in f32 where the tensor lives (on a GPU,
/// a quarter of f32's upload).
pub fn normalize_pixels(x: &Tensor, mean: [f32; 3], std: [f32; 3], dtype: DType) -> Result<Tensor> {
    let (n, s, s2, c) = x.dims4()?;
    if x.dtype() != DType::U8 || s != s2 || c != 3 {
        candle_core::bail!(
            "normalize_pixels takes u8 (N, S, S, 3), got {:?} {:?}",
            x.dtype(),
            x.dims()
        );
    }
    Op::NormalizePixels { n, s, mean, std }
        .apply(&[x])?
        .to_dtype(dtype)
}

/// A (rows_out, d) tensor of zeros with row idx[i] set to src[i] (the indices must differ).
pub fn scatter_rows(src: &Tensor, idx: &[u32], rows_out: usize) -> Result<Tensor> {
    let (rows, d) = src.dims2()?;
    if idx.len() != rows || idx.iter().any(|&i| i as usize >= rows_out) {
        candle_core::bail!("{} indices below {rows_out} for {rows} rows", idx.len());
    }
    let mut seen = vec![false; rows_out];
    if idx
        .iter()
        .any(|&i| std::mem::replace(&mut seen[i as usize], true))
    {
        candle_core::bail!("scatter_rows: repeated index");
    }
    let idx = Tensor::from_slice(idx, rows, src.device())?;
    Op::ScatterRows { rows_out, d }.apply(&[src, &idx])
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Op;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout, Result};
    use half::{bf16, f16};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));

    /// A scalar kernel argument, after the buffers.
    #[derive(Clone, Copy)]
    enum Scalar {
        I32(i32),
        F64(f64),
        Usize(usize),
        Null,
    }

    fn view<'a, T: CudaDType + DeviceRepr>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<CudaView<'a, T>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("kernel input must be contiguous".into()))?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    fn grid_stride(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// One block of `threads` per row.
    fn per_row(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.max(1) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn warp_per_row(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(4).max(1) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn i(x: usize) -> Scalar {
        Scalar::I32(x as i32)
    }

    /// Above 48 KiB, dynamic shared memory must be asked for per function: up to what the
    /// longest sequence needs (or the device allows), and all of the SM's L1 as shared memory, so
    /// that two blocks fit side by side. Once per (device, kernel): these driver calls are not
    /// free, and at every launch they would stall the CPU's run ahead of the GPU.
    fn allow_large_shared_memory(
        dev: &candle_core::CudaDevice,
        kernel: &str,
        func: &candle_core::cuda_backend::cudarc::driver::CudaFunction,
    ) -> Result<()> {
        static DONE: std::sync::Mutex<Vec<(candle_core::cuda_backend::DeviceId, String)>> =
            std::sync::Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|(d, k)| *d == dev.id() && k == kernel) {
            return Ok(());
        }
        let bytes = attention_shared_bytes(super::FUSED_ATTENTION_MAX_KEYS)
            .min(shared_memory_per_block(dev)?) as i32;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes,
        )
        .w()?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            100,
        )
        .w()?;
        done.push((dev.id(), kernel.to_string()));
        Ok(())
    }

    /// The most shared memory one block may ask for on this device.
    pub fn shared_memory_per_block(dev: &candle_core::CudaDevice) -> Result<usize> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
        Ok(dev
            .cuda_stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .w()? as usize)
    }

    /// `attention_fused`'s dynamic shared memory for `t` positions (2-byte elements): keys and
    /// values padded to a multiple of 16 rows of 64 + 8, and each warp's fp32 scratch of 16 rows.
    pub fn attention_shared_bytes(t: usize) -> usize {
        let tk = t.next_multiple_of(16);
        2 * tk * (super::FUSED_ATTENTION_HEAD + 8) * 2
            + 4 * 16 * (tk.max(super::FUSED_ATTENTION_HEAD) + 4) * 4
    }

    pub fn run(op: &Op, ins: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
        if let Op::NormalizePixels { n, s, mean, std } = *op {
            let dev = ins[0].0.device().clone();
            let func = dev.get_or_load_custom_func("normalize_pixels", "promptclip_ops", PTX)?;
            let x = view::<u8>(ins[0].0, ins[0].1)?;
            let total = n * 3 * s * s;
            // SAFETY: the kernel writes every element.
            let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
            let (ni, si) = (n as i32, s as i32);
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&out);
            b.arg(&ni);
            b.arg(&si);
            for v in mean.iter().chain(std.iter()) {
                b.arg(v);
            }
            // SAFETY: argument order and types match normalize_pixels in ops.cu.
            unsafe { b.launch(grid_stride(total)) }.w()?;
            drop(b);
            return Ok(CudaStorage::wrap_cuda_slice(out, dev));
        }
        match ins[0].0.dtype() {
            DType::F32 => go::<f32>(op, ins, "f32"),
            DType::F64 => go::<f64>(op, ins, "f64"),
            DType::F16 => go::<f16>(op, ins, "f16"),
            DType::BF16 => go::<bf16>(op, ins, "bf16"),
            d => candle_core::bail!("no promptclip kernel for {d:?}"),
        }
    }

    /// Threads for rows of `elems`, V at a time: a multiple of 32, at most 256.
    fn row_threads(elems: usize, v: usize) -> u32 {
        (elems.div_ceil(v).div_ceil(32) * 32).clamp(32, 256) as u32
    }

    fn go<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        op: &Op,
        ins: &[(&CudaStorage, &Layout)],
        suffix: &str,
    ) -> Result<CudaStorage> {
        let n_in = ins[0].1.shape().elem_count();
        let out_n = op.out_shape(ins[0].1.shape()).elem_count();
        // 16-byte accesses when every input starts on a multiple of V elements (outputs are fresh
        // allocations) and the op's innermost run is a multiple of V.
        let v = 16 / std::mem::size_of::<T>();
        let aligned = ins.iter().all(|(_, l)| l.start_offset() % v == 0);
        let run = match *op {
            Op::BiasAct { d, .. } | Op::LayerNorm { d, .. } => d,
            Op::SoftmaxRows { n, .. } => n,
            Op::QkvSplit { hd, .. } | Op::QkvMerge { hd, .. } | Op::GatherCat { hd, .. } => hd,
            Op::Transpose12 { d, .. } => d,
            _ => 0,
        };
        let vec = aligned && run > 0 && run % v == 0;
        let (kernel, v) = if vec {
            (format!("{}_v_{suffix}", op.kernel()), v)
        } else {
            (format!("{}_{suffix}", op.kernel()), 1)
        };
        // Launch shape and the scalars after the buffers, as the kernels in ops.cu declare them.
        let mut kernel = kernel;
        let (cfg, scalars): (LaunchConfig, Vec<Scalar>) = match *op {
            Op::LayerNorm { d, eps } if d <= 32 * 8 * v && d % v == 0 => {
                // One warp per row, the row in registers.
                kernel = format!("layer_norm_warp{}_{suffix}", if v > 1 { "_v" } else { "" });
                (
                    warp_per_row(n_in / d),
                    vec![Scalar::Usize(n_in / d), i(d), Scalar::F64(eps)],
                )
            }
            Op::LayerNorm { d, eps } | Op::LayerNormBackward { d, eps } => {
                kernel = format!("{}_{suffix}", op.kernel());
                let threads = if d <= 1024 { 128 } else { 256 };
                (
                    LaunchConfig {
                        grid_dim: ((n_in / d) as u32, 1, 1),
                        block_dim: (threads, 1, 1),
                        shared_mem_bytes: 0,
                    },
                    vec![i(d), Scalar::F64(eps)],
                )
            }
            Op::Activation { act } | Op::ActivationBackward { act } => (
                grid_stride(n_in),
                vec![Scalar::Usize(n_in), Scalar::I32(act)],
            ),
            Op::SoftmaxBackward { d } => {
                (warp_per_row(n_in / d), vec![Scalar::Usize(n_in / d), i(d)])
            }
            Op::BiasAct { d, act } => {
                // Threads along the row, blocks along rows (each block loops over rows / 65535).
                let rows = n_in / d;
                let threads = row_threads(d, v);
                let cfg = LaunchConfig {
                    grid_dim: (
                        (d / v).div_ceil(threads as usize) as u32,
                        rows.clamp(1, 65535) as u32,
                        1,
                    ),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                };
                (cfg, vec![i(rows), i(d), Scalar::I32(act)])
            }
            Op::QkvSplit { b, t, h, hd, scale } => (
                per_row(b * t, row_threads(3 * h * hd, v)),
                vec![i(b), i(t), i(h), i(hd), Scalar::F64(scale)],
            ),
            Op::QkvMerge {
                b,
                t,
                h,
                hd,
                tk,
                off,
                scale,
            } => (
                per_row(b * t, row_threads(3 * h * hd, v)),
                vec![i(b), i(t), i(h), i(hd), i(tk), i(off), Scalar::F64(scale)],
            ),
            Op::Transpose12 { a, b, c, d } => (
                per_row(a * c, row_threads(b * d, v)),
                vec![i(a), i(b), i(c), i(d)],
            ),
            Op::GatherCat {
                n,
                per_group,
                h,
                tp,
                ts,
                tt,
                hd,
            } => (
                per_row(n * h, row_threads(tt * hd, v)),
                vec![i(per_group), i(h), i(tp), i(ts), i(tt), i(hd)],
            ),
            Op::SoftmaxRows {
                n,
                tq,
                offset,
                valid,
            } => {
                // A row in registers when it fits (P packs of V per lane: 4 x 16 bytes, or 8 x 1).
                let fits = n <= 32 * v * if v > 1 { 4 } else { 8 };
                kernel = if fits {
                    format!("softmax_warp{}_{suffix}", if v > 1 { "_v" } else { "" })
                } else {
                    format!("softmax_rows_{suffix}")
                };
                (
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
            Op::GroupPrefixSum {
                g,
                k,
                h,
                tt,
                tp,
                hd,
            } => {
                let cfg = LaunchConfig {
                    grid_dim: ((g * h * tp).max(1) as u32, 1, 1),
                    block_dim: (32, 16, 1),
                    shared_mem_bytes: 0,
                };
                (cfg, vec![i(g), i(k), i(h), i(tt), i(tp), i(hd)])
            }
            Op::ScatterRows { d, .. } => (grid_stride(n_in), vec![Scalar::Usize(n_in / d), i(d)]),
            Op::Attention {
                b,
                t,
                h,
                hd,
                offset,
                valid,
                scale,
            } => {
                if !matches!(suffix, "f16" | "bf16")
                    || hd != super::FUSED_ATTENTION_HEAD
                    || t > super::FUSED_ATTENTION_MAX_KEYS
                    || !aligned
                {
                    candle_core::bail!("fused attention: no kernel for {suffix}, heads of {hd}, {t} positions (see fused_attention_runs)");
                }
                kernel = format!("attention_fused_{suffix}");
                let cfg = LaunchConfig {
                    grid_dim: (h as u32, b as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: attention_shared_bytes(t) as u32,
                };
                (
                    cfg,
                    vec![
                        i(t),
                        i(h),
                        i(t.next_multiple_of(16)),
                        Scalar::I32(offset.map_or(-1, |o| o as i32)),
                        i(valid),
                        Scalar::F64(scale),
                    ],
                )
            }
            Op::NormalizePixels { .. } => candle_core::bail!("normalize_pixels takes 8-bit input"),
        };
        let dev = ins[0].0.device().clone();
        let func = dev.get_or_load_custom_func(&kernel, "promptclip_ops", PTX)?;
        if matches!(op, Op::Attention { .. }) {
            allow_large_shared_memory(&dev, &kernel, &func)?;
        }
        let scatter = matches!(op, Op::ScatterRows { .. });
        let floats = ins
            .iter()
            .take(if scatter { 1 } else { ins.len() })
            .map(|(s, l)| view::<T>(s, l))
            .collect::<Result<Vec<_>>>()?;
        let idx = if scatter {
            Some(view::<u32>(ins[1].0, ins[1].1)?)
        } else {
            None
        };
        // ScatterRows writes only the indexed rows; every other kernel writes all of its output.
        let out: CudaSlice<T> = if scatter {
            dev.alloc_zeros::<T>(out_n)?
        } else {
            unsafe { dev.alloc::<T>(out_n)? }
        };
        let mut scalars = scalars;
        if matches!(op, Op::BiasAct { .. }) && ins.len() == 2 {
            scalars.insert(0, Scalar::Null); // no residual
        }
        let mut b = func.builder();
        for v in &floats {
            b.arg(v);
        }
        if let Some(idx) = &idx {
            b.arg(idx);
        }
        let null = 0usize;
        let mut rest = scalars.as_slice();
        if let Some(Scalar::Null) = rest.first() {
            b.arg(&null);
            rest = &rest[1..];
        }
        b.arg(&out);
        for s in rest {
            match s {
                Scalar::I32(v) => b.arg(v),
                Scalar::F64(v) => b.arg(v),
                Scalar::Usize(v) => b.arg(v),
                Scalar::Null => b.arg(&null),
            };
        }
        // SAFETY: argument order and types match the kernel's signature in ops.cu.
        unsafe { b.launch(cfg) }.w()?;
        drop(b);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Each fused op against the same math through candle's ops and autograd, in f64.
    #[test]
    fn fused_ops_equal_composed_ops_and_their_autograd() {
        let dev = Device::Cpu;
        let x =
            Var::from_tensor(&(Tensor::randn(0f64, 2.0, (6, 37), &dev).unwrap() + 0.5).unwrap())
                .unwrap();
        let gamma = Tensor::randn(1f64, 0.3, 37, &dev).unwrap();
        let beta = Tensor::randn(0f64, 0.3, 37, &dev).unwrap();
        let dy = Tensor::randn(0f64, 1.0, (6, 37), &dev).unwrap();
        let eps = 1e-5;
        // Layer norm, composed.
        let xt = x.as_tensor();
        let mean = xt.mean_keepdim(D::Minus1).unwrap();
        let c = xt.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let y_ref = c
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma)
            .unwrap()
            .broadcast_add(&beta)
            .unwrap();
        assert!(max_diff(&layer_norm(xt, &gamma, &beta, eps).unwrap(), &y_ref) < 1e-12);
        let g = (&y_ref * &dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            max_diff(
                &layer_norm_backward(xt, &gamma, &dy, eps).unwrap(),
                g.get(xt).unwrap()
            ) < 1e-12
        );
        // Activations; candle's own GELU backward rounds its constants (errors ~5e-7), so the
        // reference for the backward is central differences of the forward just checked.
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
        ] {
            let y_ref = crate::clip::nn::activate(xt, act).unwrap();
            assert!(
                max_diff(&activation(xt, act).unwrap(), &y_ref) < 1e-12,
                "{act:?}"
            );
            let h = 1e-6;
            let fd = ((activation(&(xt + h).unwrap(), act).unwrap()
                - activation(&(xt - h).unwrap(), act).unwrap())
            .unwrap()
                / (2.0 * h))
                .unwrap();
            let diff = max_diff(
                &activation_backward(xt, &dy, act).unwrap(),
                &(fd * &dy).unwrap(),
            );
            assert!(diff < 1e-8, "{act:?} backward: {diff}");
            // Bias, activation and residual in one pass.
            let fused = bias_act(xt, &beta, Some(act), Some(&dy)).unwrap();
            let composed =
                (crate::clip::nn::activate(&xt.broadcast_add(&beta).unwrap(), act).unwrap() + &dy)
                    .unwrap();
            assert!(max_diff(&fused, &composed) < 1e-12, "{act:?} bias_act");
        }
        assert!(
            max_diff(
                &bias_act(xt, &beta, None, None).unwrap(),
                &xt.broadcast_add(&beta).unwrap()
            ) < 1e-15
        );
        // Softmax, plain and causal, and its backward.
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
    fn layout_ops_equal_candle_permutes() {
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
        // Each sequence reads its group's prefix.
        let kp = Tensor::randn(0f32, 1.0, (2, h, 3, hd), &dev).unwrap();
        let ks = Tensor::randn(0f32, 1.0, (6, h, 2, hd), &dev).unwrap();
        let group = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &dev).unwrap();
        let expected = Tensor::cat(&[&kp.index_select(&group, 0).unwrap(), &ks], 2).unwrap();
        assert_eq!(max_diff(&gather_cat(&kp, &ks, 5).unwrap(), &expected), 0.0);
        let padded = gather_cat(&kp, &ks, 8).unwrap();
        assert_eq!(max_diff(&padded.narrow(2, 0, 5).unwrap(), &expected), 0.0);
        assert_eq!(
            padded
                .narrow(2, 5, 3)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(gather_cat(&kp, &ks, 4).is_err());
        // Sum of each group's prefix rows.
        let g = Tensor::randn(0f32, 1.0, (6, h, 7, hd), &dev).unwrap();
        let s = group_prefix_sum(&g, 2, 3).unwrap();
        let r = g
            .narrow(2, 0, 3)
            .unwrap()
            .reshape((2, 3, h, 3, hd))
            .unwrap()
            .sum(1)
            .unwrap();
        assert!(max_diff(&s, &r) < 1e-5);
        // Rows placed at indices.
        let src = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let out = scatter_rows(&src, &[4, 0, 2], 5).unwrap();
        assert_eq!(max_diff(&out.get(4).unwrap(), &src.get(0).unwrap()), 0.0);
        assert_eq!(max_diff(&out.get(2).unwrap(), &src.get(2).unwrap()), 0.0);
        assert_eq!(
            out.get(1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(scatter_rows(&src, &[1, 1, 2], 5).is_err());
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

    #[test]
    fn half_types_accumulate_in_f32() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
        let (g, b) = (
            Tensor::ones(64, DType::F32, &dev).unwrap(),
            Tensor::zeros(64, DType::F32, &dev).unwrap(),
        );
        let y32 = layer_norm(&x, &g, &b, 1e-5).unwrap();
        for dt in [DType::F16, DType::BF16] {
            let y = layer_norm(&x.to_dtype(dt).unwrap(), &g, &b, 1e-5).unwrap();
            assert_eq!(y.dtype(), dt);
            assert!(max_diff(&y.to_dtype(DType::F32).unwrap(), &y32) < 0.05);
        }
    }
}
