//! Normalisation and activations: LayerNorm over the last dim and its input gradient (two-pass
//! statistics, as PyTorch), and the MLP's activations and their derivatives, elementwise.
use super::op::{apply, cast, last_dim, same_shape, Elem, Kernel};
use crate::clip::config::Activation;
use candle_core::{Result, Tensor};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;

/// One op of the family and its sizes.
#[derive(Debug, Clone, Copy)]
enum NormAct {
    /// (x, gamma, beta) -> layer norm of rows of `d`.
    LayerNorm { d: usize, eps: f64 },
    /// (x, gamma, dy) -> dx.
    LayerNormBackward { d: usize, eps: f64 },
    /// (h) -> act(h).
    Activation { act: i32 },
    /// (h, dy) -> dy * act'(h).
    ActivationBackward { act: i32 },
}

impl Kernel for NormAct {
    fn name(&self) -> &'static str {
        match self {
            NormAct::LayerNorm { .. } => "layer_norm_fwd",
            NormAct::LayerNormBackward { .. } => "layer_norm_bwd",
            NormAct::Activation { .. } => "activation_fwd",
            NormAct::ActivationBackward { .. } => "activation_bwd",
        }
    }

    fn cpu<T: Elem>(&self, ins: &[&[T]], _idx: &[u32]) -> Vec<T> {
        let zero = T::put(T::A::zero());
        match *self {
            NormAct::LayerNorm { d, eps } => {
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
            NormAct::LayerNormBackward { d, eps } => {
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
            NormAct::Activation { act } => ins[0]
                .par_iter()
                .with_min_len(4096)
                .map(|&x| T::put(act_fwd(x.get(), act)))
                .collect(),
            NormAct::ActivationBackward { act } => ins[0]
                .par_iter()
                .zip(ins[1].par_iter())
                .with_min_len(4096)
                .map(|(&x, &g)| T::put(g.get() * act_grad(x.get(), act)))
                .collect(),
        }
    }

    #[cfg(feature = "cuda")]
    fn vector_run(&self) -> usize {
        match *self {
            NormAct::LayerNorm { d, .. } => d,
            _ => 0,
        }
    }

    #[cfg(feature = "cuda")]
    fn launch(&self, at: &super::cuda::Site) -> Result<super::cuda::Launch> {
        use super::cuda::{grid_stride, i, warp_per_row, Launch, Scalar};
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        let (suffix, v, n_in) = (at.suffix, at.v, at.n_in);
        Ok(match *self {
            NormAct::LayerNorm { d, eps } if d <= 32 * 8 * v && d % v == 0 => {
                // One warp per row, the row in registers.
                Launch::new(
                    format!("layer_norm_warp{}_{suffix}", if v > 1 { "_v" } else { "" }),
                    warp_per_row(n_in / d),
                    vec![Scalar::Usize(n_in / d), i(d), Scalar::F64(eps)],
                )
            }
            NormAct::LayerNorm { d, eps } | NormAct::LayerNormBackward { d, eps } => {
                let threads = if d <= 1024 { 128 } else { 256 };
                Launch::new(
                    format!("{}_{suffix}", self.name()),
                    LaunchConfig {
                        grid_dim: ((n_in / d) as u32, 1, 1),
                        block_dim: (threads, 1, 1),
                        shared_mem_bytes: 0,
                    },
                    vec![i(d), Scalar::F64(eps)],
                )
            }
            NormAct::Activation { act } | NormAct::ActivationBackward { act } => Launch::new(
                at.kernel.clone(),
                grid_stride(n_in),
                vec![Scalar::Usize(n_in), Scalar::I32(act)],
            ),
        })
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

/// The activation `act` (as `act_code` numbers them) at `h`.
pub(super) fn act_fwd<A: Float>(h: A, act: i32) -> A {
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

/// The activation's number in the kernels (ops.cu's `act_fwd` and `act_fwd` here).
pub(super) fn act_code(act: Activation) -> i32 {
    match act {
        Activation::QuickGelu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

/// LayerNorm over the last dim.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let d = last_dim(x)?;
    apply(NormAct::LayerNorm { d, eps }, &[x, gamma, beta])
}

/// Input gradient of `layer_norm(x, gamma, _, eps)` for the output gradient `dy`.
pub fn layer_norm_backward(x: &Tensor, gamma: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    same_shape(x, dy, "layer norm backward")?;
    let d = last_dim(x)?;
    apply(NormAct::LayerNormBackward { d, eps }, &[x, gamma, dy])
}

/// The MLP activation, elementwise.
pub fn activation(h: &Tensor, act: Activation) -> Result<Tensor> {
    apply(NormAct::Activation { act: act_code(act) }, &[h])
}

/// Input gradient of `activation(h, act)` for the output gradient `dy`.
pub fn activation_backward(h: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    same_shape(h, dy, "activation backward")?;
    apply(NormAct::ActivationBackward { act: act_code(act) }, &[h, dy])
}

#[cfg(test)]
mod tests {
    use super::super::op::max_diff;
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// LayerNorm and the activations against the same math through candle's ops and autograd,
    /// in f64.
    #[test]
    fn layer_norm_and_activations_equal_composed_ops_and_their_autograd() {
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
        }
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
