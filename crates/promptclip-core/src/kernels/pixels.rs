//! Pixels: 8-bit crops as decoded (N, S, S, 3) to the model's normalised input (N, 3, S, S),
//! where the tensor lives, so that a GPU receives a quarter of f32's bytes.
use super::op::slice;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// (u8 (N, S, S, 3)) -> f32 (N, 3, S, S), (x / 255 - mean) / std per channel.
struct NormalizePixels {
    n: usize,
    s: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

impl NormalizePixels {
    fn cpu(&self, x: &[u8]) -> Vec<f32> {
        let (mean, std) = (self.mean, self.std);
        let plane = self.s * self.s;
        let mut y = vec![0f32; self.n * 3 * plane];
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

    fn shape(&self) -> Shape {
        (self.n, 3, self.s, self.s).into()
    }
}

impl candle_core::CustomOp1 for NormalizePixels {
    fn name(&self) -> &'static str {
        "normalize_pixels"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::U8(x) => Ok((CpuStorage::F32(self.cpu(slice(x, l)?)), self.shape())),
            _ => candle_core::bail!("normalize_pixels takes 8-bit input"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{grid_stride, view, MODULE, PTX};
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        let dev = s.device().clone();
        let func = dev.get_or_load_custom_func("normalize_pixels", MODULE, PTX)?;
        let x = view::<u8>(s, l)?;
        let total = self.n * 3 * self.s * self.s;
        // SAFETY: the kernel writes every element.
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(total)? };
        let (ni, si) = (self.n as i32, self.s as i32);
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&out);
        b.arg(&ni);
        b.arg(&si);
        for v in self.mean.iter().chain(self.std.iter()) {
            b.arg(v);
        }
        // SAFETY: argument order and types match normalize_pixels in ops.cu.
        unsafe { b.launch(grid_stride(total)) }.w()?;
        drop(b);
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            self.shape(),
        ))
    }
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
    x.contiguous()?
        .apply_op1_no_bwd(&NormalizePixels { n, s, mean, std })?
        .to_dtype(dtype)
}
