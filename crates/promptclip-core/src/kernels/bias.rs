//! What follows a matrix multiply, in one pass: its bias, the activation and the residual
//! (`y = act(x + b) + r`). candle broadcasts a bias add through its generic strided kernel, which
//! was half of all GPU time in the first profile.
use super::norm::{act_code, act_fwd};
use super::op::{apply, last_dim, same_shape, Elem, Kernel};
use crate::clip::config::Activation;
use candle_core::{Result, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

/// (x, b[, r]) -> act(x + b) (+ r), b broadcast over rows of `d`; act -1: none.
#[derive(Debug, Clone, Copy)]
struct BiasAct {
    d: usize,
    act: i32,
}

impl Kernel for BiasAct {
    fn name(&self) -> &'static str {
        "bias_act"
    }

    fn cpu<T: Elem>(&self, ins: &[&[T]], _idx: &[u32]) -> Vec<T> {
        let BiasAct { d, act } = *self;
        let (x, b, r) = (ins[0], ins[1], ins.get(2).copied());
        let mut y = vec![T::put(T::A::zero()); x.len()];
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

    #[cfg(feature = "cuda")]
    fn vector_run(&self) -> usize {
        self.d
    }

    #[cfg(feature = "cuda")]
    fn launch(&self, at: &super::cuda::Site) -> Result<super::cuda::Launch> {
        use super::cuda::{i, row_threads, Launch, Scalar};
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        // Threads along the row, blocks along rows (each block loops over rows / 65535).
        let BiasAct { d, act } = *self;
        let rows = at.n_in / d;
        let threads = row_threads(d, at.v);
        let cfg = LaunchConfig {
            grid_dim: (
                (d / at.v).div_ceil(threads as usize) as u32,
                rows.clamp(1, 65535) as u32,
                1,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = Launch::new(
            at.kernel.clone(),
            cfg,
            vec![i(rows), i(d), Scalar::I32(act)],
        );
        // No residual: ops.cu's `r` is null.
        launch.nulls = 3 - at.inputs;
        Ok(launch)
    }
}

/// `act(x + b) + residual` in one pass: b (d) is broadcast over the rows of x (.., d); `act`
/// and `residual` are optional.
pub fn bias_act(
    x: &Tensor,
    b: &Tensor,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let d = last_dim(x)?;
    let op = BiasAct {
        d,
        act: act.map_or(-1, act_code),
    };
    if b.elem_count() != d {
        candle_core::bail!("bias of {} for rows of {d}", b.elem_count());
    }
    match residual {
        Some(r) => {
            same_shape(x, r, "residual")?;
            apply(op, &[x, b, r])
        }
        None => apply(op, &[x, b]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::op::max_diff;
    use super::*;
    use candle_core::Device;

    /// Bias, activation and residual in one pass against the same ops composed in candle, f64.
    #[test]
    fn bias_act_equals_composed_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f64, 2.0, (6, 37), &dev).unwrap() + 0.5).unwrap();
        let b = Tensor::randn(0f64, 0.3, 37, &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, (6, 37), &dev).unwrap();
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Relu,
        ] {
            let fused = bias_act(&x, &b, Some(act), Some(&r)).unwrap();
            let composed = (crate::clip::nn::activate(&x.broadcast_add(&b).unwrap(), act).unwrap()
                + &r)
                .unwrap();
            assert!(max_diff(&fused, &composed) < 1e-12, "{act:?} bias_act");
        }
        assert!(
            max_diff(
                &bias_act(&x, &b, None, None).unwrap(),
                &x.broadcast_add(&b).unwrap()
            ) < 1e-15
        );
        assert!(
            bias_act(&x, &r, None, None).is_err(),
            "a bias of another width"
        );
    }
}
