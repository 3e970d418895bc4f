//! Device selection. CUDA exists only when the crate is built with the `cuda` feature.
use crate::{Error, Result};
use candle_core::{DType, Device};

/// Parse a device name as users write it: "cpu", "cuda" or "cuda:N".
pub fn device_from_name(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" | "" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal = match name.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::InvalidArgument(format!("device `{name}`: expected cuda:<index>"))
                })?,
                None => 0,
            };
            cuda_device(ordinal)
        }
        _ => Err(Error::InvalidArgument(format!(
            "device `{name}`: expected \"cpu\", \"cuda\" or \"cuda:<index>\""
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    // One device per GPU for the whole process. candle refuses ops between tensors of two
    // `Device` values even on the same GPU, so a prompt learner, its CLIP and every call share
    // this one; and it owns a single stream, so every op is ordered without cross-stream events.
    static DEVICES: std::sync::Mutex<Vec<(usize, Device)>> = std::sync::Mutex::new(Vec::new());
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = devices.iter().find(|(o, _)| *o == ordinal) {
        return Ok(d.clone());
    }
    let unavailable =
        |e: &dyn std::fmt::Display| Error::CudaUnavailable(format!("no usable GPU {ordinal}: {e}"));
    let device = Device::new_cuda_with_stream(ordinal).map_err(|e| unavailable(&e))?;
    cuda::configure(&device).map_err(|e| unavailable(&e))?;
    devices.push((ordinal, device.clone()));
    Ok(device)
}

/// What candle leaves at its defaults and a training loop should not.
#[cfg(feature = "cuda")]
pub mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    fn check(r: sys::CUresult, what: &str) -> candle_core::Result<()> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("{what}: {r:?}")
        }
    }

    fn default_pool(device: &Device) -> candle_core::Result<sys::CUmemoryPool> {
        let stream = device.as_cuda_device()?.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: plain driver calls on a live context.
        check(
            unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) },
            "cuDeviceGetDefaultMemPool",
        )?;
        Ok(pool)
    }

    /// Called once per GPU. Two settings:
    /// - no per-allocation event tracking: the device has one stream, so stream order alone
    ///   keeps every use of a buffer correct, and two driver events per tensor are pure cost;
    /// - the stream-ordered allocator keeps freed memory instead of returning it to the driver
    ///   at every synchronisation (its default threshold is 0), as PyTorch's caching allocator
    ///   does; without this each training step re-maps its activations.
    pub(super) fn configure(device: &Device) -> candle_core::Result<()> {
        let cuda = device.as_cuda_device()?;
        // SAFETY: this device owns a single stream (new_cuda_with_stream), shared by all threads.
        unsafe { cuda.disable_event_tracking() };
        let pool = default_pool(device)?;
        let mut threshold = u64::MAX;
        // SAFETY: the attribute takes a cuuint64_t.
        check(
            unsafe {
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                )
            },
            "cuMemPoolSetAttribute",
        )
    }

    /// Peak bytes held by the GPU's allocator since the last reset.
    pub fn peak_memory(device: &Device) -> candle_core::Result<u64> {
        let pool = default_pool(device)?;
        let mut v = 0u64;
        // SAFETY: the attribute is a cuuint64_t.
        check(
            unsafe {
                sys::cuMemPoolGetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    (&mut v as *mut u64).cast(),
                )
            },
            "cuMemPoolGetAttribute",
        )?;
        Ok(v)
    }

    /// Start a new peak-memory measurement.
    pub fn reset_peak_memory(device: &Device) -> candle_core::Result<()> {
        device.synchronize()?;
        let pool = default_pool(device)?;
        let mut zero = 0u64;
        // SAFETY: resetting the high-water mark takes a cuuint64_t of 0.
        check(
            unsafe {
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    (&mut zero as *mut u64).cast(),
                )
            },
            "cuMemPoolSetAttribute",
        )
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    Err(Error::CudaUnavailable(
        "this build of promptclip was compiled without CUDA support (build with the `cuda` feature)".into(),
    ))
}

pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Parse a precision name: "fp32" (default), "fp16" or "bf16".
pub fn dtype_from_name(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "fp32" | "f32" | "float32" | "" => Ok(DType::F32),
        "fp16" | "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::InvalidArgument(format!(
            "dtype `{other}`: expected \"fp32\", \"fp16\" or \"bf16\""
        ))),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "fp16",
        DType::BF16 => "bf16",
        DType::F64 => "fp64",
        _ => "fp32",
    }
}
