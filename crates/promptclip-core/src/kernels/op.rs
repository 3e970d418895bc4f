//! What every fused op shares: the element types the CPU loops take, the `Kernel` trait that each
//! family implements (its sizes, its CPU loop and its CUDA launch), and the candle custom op that
//! runs a `Kernel` on either device.
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use num_traits::Float;

/// Element types the CPU loops accept, with the type they accumulate in.
pub(super) trait Elem: Copy + Send + Sync + 'static {
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

pub(super) fn cast<A: Float>(x: f64) -> A {
    num_traits::cast(x).unwrap_or_else(A::nan)
}

/// One fused op of a family and its sizes. Its inputs reach `cpu` (and the CUDA kernel)
/// contiguous, the float ones in one dtype, in the order each variant documents.
pub(super) trait Kernel: std::fmt::Debug + Copy + Send + Sync + 'static {
    /// The kernel's name in ops.cu, without its dtype suffix; also what errors call it.
    fn name(&self) -> &'static str;

    /// The output's shape, from the first input's.
    fn out_shape(&self, first: &Shape) -> Shape {
        first.clone()
    }

    /// Whether the last input is u32 indices rather than floats (they reach `cpu` as `idx`).
    fn takes_indices(&self) -> bool {
        false
    }

    /// The CPU loop; `idx` is the index input when `takes_indices`, else empty.
    fn cpu<T: Elem>(&self, ins: &[&[T]], idx: &[u32]) -> Vec<T>;

    /// The innermost run of elements that the CUDA kernel may move 16 bytes at a time, when it
    /// has a vectorised variant (0: it has none).
    #[cfg(feature = "cuda")]
    fn vector_run(&self) -> usize {
        0
    }

    /// The CUDA kernel to launch, its launch shape and its scalar arguments.
    #[cfg(feature = "cuda")]
    fn launch(&self, at: &super::cuda::Site) -> Result<super::cuda::Launch>;
}

/// Whether the fused ops take this dtype.
pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

pub(super) fn last_dim(t: &Tensor) -> Result<usize> {
    t.dims()
        .last()
        .copied()
        .filter(|&d| d > 0)
        .ok_or_else(|| candle_core::Error::Msg("empty last dimension".into()))
}

pub(super) fn same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{what}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

/// Runs `k` on tensors: inputs made contiguous, float inputs in the first input's dtype.
pub(super) fn apply<K: Kernel>(k: K, ins: &[&Tensor]) -> Result<Tensor> {
    let dtype = ins[0].dtype();
    if !supported(dtype) {
        candle_core::bail!("{}: unsupported dtype {dtype:?}", k.name());
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
    let op = Fused(k);
    match ins.as_slice() {
        [a] => a.apply_op1_no_bwd(&op),
        [a, b] => a.apply_op2_no_bwd(b, &op),
        [a, b, c] => a.apply_op3_no_bwd(b, c, &op),
        _ => candle_core::bail!("{}: 1 to 3 inputs", k.name()),
    }
}

pub(super) fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
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

/// Runs `Kernel::cpu` on the storages, the indices (if the kernel takes them) last.
fn cpu_run<K: Kernel>(k: &K, ins: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    fn go<T: Storage, K: Kernel>(
        k: &K,
        floats: &[(&CpuStorage, &Layout)],
        idx: &[u32],
    ) -> Result<CpuStorage> {
        let slices = floats
            .iter()
            .map(|(s, l)| {
                slice(
                    T::of(s).ok_or_else(|| {
                        candle_core::Error::Msg(format!("{}: inputs of one float dtype", k.name()))
                    })?,
                    l,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(T::wrap(k.cpu(&slices, idx)))
    }
    let (floats, idx) = match (k.takes_indices(), ins.split_last()) {
        (true, Some(((CpuStorage::U32(idx), l), floats))) => (floats, slice(idx, l)?),
        (true, _) => candle_core::bail!("{}: u32 indices last", k.name()),
        (false, _) => (ins, &[][..]),
    };
    let out = match ins[0].0.dtype() {
        DType::F32 => go::<f32, K>(k, floats, idx),
        DType::F64 => go::<f64, K>(k, floats, idx),
        DType::F16 => go::<f16, K>(k, floats, idx),
        DType::BF16 => go::<bf16, K>(k, floats, idx),
        d => candle_core::bail!("{}: unsupported dtype {d:?}", k.name()),
    }?;
    Ok((out, k.out_shape(ins[0].1.shape())))
}

/// A `Kernel` as candle's custom op of one, two or three inputs.
struct Fused<K>(K);

impl<K: Kernel> candle_core::CustomOp1 for Fused<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_run(&self.0, &[(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        on_cuda::run(&self.0, &[(s, l)])
    }
}

impl<K: Kernel> candle_core::CustomOp2 for Fused<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_run(&self.0, &[(s1, l1), (s2, l2)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        on_cuda::run(&self.0, &[(s1, l1), (s2, l2)])
    }
}

impl<K: Kernel> candle_core::CustomOp3 for Fused<K> {
    fn name(&self) -> &'static str {
        self.0.name()
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
        cpu_run(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
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
        on_cuda::run(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// `Kernel`s on a GPU: the kernel that `Kernel::launch` names, its buffers and scalars passed in
/// the order that ops.cu declares them.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::super::cuda::{view, Scalar, Site, MODULE, PTX};
    use super::Kernel;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};
    use half::{bf16, f16};

    /// Above 48 KiB, dynamic shared memory must be asked for per function: `bytes`, and all of the
    /// SM's L1 as shared memory, so that two blocks fit side by side. Once per (device, kernel):
    /// these driver calls are not free, and at every launch they would stall the CPU's run ahead of
    /// the GPU.
    fn allow_large_shared_memory(
        dev: &CudaDevice,
        kernel: &str,
        func: &CudaFunction,
        bytes: usize,
    ) -> Result<()> {
        static DONE: std::sync::Mutex<Vec<(candle_core::cuda_backend::DeviceId, String)>> =
            std::sync::Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|(d, k)| *d == dev.id() && k == kernel) {
            return Ok(());
        }
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
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

    /// Runs `k` on float buffers of one dtype (and its indices last, if it takes them).
    pub(super) fn run<K: Kernel>(
        k: &K,
        ins: &[(&CudaStorage, &Layout)],
    ) -> Result<(CudaStorage, Shape)> {
        let out = match ins[0].0.dtype() {
            DType::F32 => go::<f32, K>(k, ins, "f32"),
            DType::F64 => go::<f64, K>(k, ins, "f64"),
            DType::F16 => go::<f16, K>(k, ins, "f16"),
            DType::BF16 => go::<bf16, K>(k, ins, "bf16"),
            d => candle_core::bail!("no promptclip kernel for {d:?}"),
        }?;
        Ok((out, k.out_shape(ins[0].1.shape())))
    }

    fn go<T: CudaDType + DeviceRepr + ValidAsZeroBits, K: Kernel>(
        k: &K,
        ins: &[(&CudaStorage, &Layout)],
        suffix: &str,
    ) -> Result<CudaStorage> {
        let n_in = ins[0].1.shape().elem_count();
        let out_n = k.out_shape(ins[0].1.shape()).elem_count();
        // 16-byte accesses when every input starts on a multiple of V elements (outputs are fresh
        // allocations) and the op's innermost run is a multiple of V.
        let v = 16 / std::mem::size_of::<T>();
        let aligned = ins.iter().all(|(_, l)| l.start_offset() % v == 0);
        let run = k.vector_run();
        let (kernel, v) = if aligned && run > 0 && run.is_multiple_of(v) {
            (format!("{}_v_{suffix}", k.name()), v)
        } else {
            (format!("{}_{suffix}", k.name()), 1)
        };
        let dev = ins[0].0.device().clone();
        let launch = k.launch(&Site {
            n_in,
            inputs: ins.len(),
            suffix,
            aligned,
            v,
            kernel,
            dev: &dev,
        })?;
        let func = dev.get_or_load_custom_func(&launch.kernel, MODULE, PTX)?;
        if let Some(bytes) = launch.shared_opt_in {
            allow_large_shared_memory(&dev, &launch.kernel, &func, bytes)?;
        }
        let (float_ins, idx) = if k.takes_indices() {
            let (last, floats) = ins.split_last().expect("inputs");
            (floats, Some(view::<u32>(last.0, last.1)?))
        } else {
            (ins, None)
        };
        let floats = float_ins
            .iter()
            .map(|(s, l)| view::<T>(s, l))
            .collect::<Result<Vec<_>>>()?;
        // An op with indices writes only the indexed rows; every other kernel writes all of its output.
        let out: CudaSlice<T> = if idx.is_some() {
            dev.alloc_zeros::<T>(out_n)?
        } else {
            // SAFETY: the kernel writes every element.
            unsafe { dev.alloc::<T>(out_n)? }
        };
        let mut b = func.builder();
        for v in &floats {
            b.arg(v);
        }
        if let Some(idx) = &idx {
            b.arg(idx);
        }
        let null = 0usize;
        for _ in 0..launch.nulls {
            b.arg(&null);
        }
        b.arg(&out);
        for s in &launch.scalars {
            match s {
                Scalar::I32(v) => b.arg(v),
                Scalar::F64(v) => b.arg(v),
                Scalar::Usize(v) => b.arg(v),
            };
        }
        // SAFETY: argument order and types match the kernel's signature in ops.cu.
        unsafe { b.launch(launch.cfg) }.w()?;
        drop(b);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

/// The largest absolute difference of two tensors of one shape, for the families' tests.
#[cfg(test)]
pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
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
