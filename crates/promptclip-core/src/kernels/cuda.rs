//! The CUDA side that every family shares: the PTX built from ops.cu, views of candle's buffers,
//! launch shapes, and what a family says it launches (`Kernel::launch` returns a [`Launch`] for a
//! [`Site`]; `op` passes the buffers and scalars in the order that ops.cu declares them).
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

pub(super) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
pub(super) const MODULE: &str = "promptclip_ops";

/// A scalar kernel argument, after the buffers.
#[derive(Clone, Copy)]
pub(super) enum Scalar {
    I32(i32),
    F64(f64),
    Usize(usize),
}

pub(super) fn i(x: usize) -> Scalar {
    Scalar::I32(x as i32)
}

/// Where a kernel is about to run: its first input's element count, the number of inputs, the
/// dtype's suffix in ops.cu, whether every input starts 16-byte aligned, the vector width chosen
/// (elements per access; 1 when `Kernel::vector_run` does not allow more), and the name that the
/// kernel has by default (`name_v_suffix` when vectorised, else `name_suffix`).
pub(super) struct Site<'a> {
    pub n_in: usize,
    pub inputs: usize,
    pub suffix: &'a str,
    pub aligned: bool,
    pub v: usize,
    pub kernel: String,
    pub dev: &'a CudaDevice,
}

/// What a family launches: the kernel's name, its launch shape and its scalars.
pub(super) struct Launch {
    pub kernel: String,
    pub cfg: LaunchConfig,
    /// Null pointers passed after the inputs, before the output (an optional input left out).
    pub nulls: usize,
    pub scalars: Vec<Scalar>,
    /// The dynamic shared memory to opt in to above 48 KiB, once per (device, kernel).
    pub shared_opt_in: Option<usize>,
}

impl Launch {
    pub fn new(kernel: String, cfg: LaunchConfig, scalars: Vec<Scalar>) -> Launch {
        Launch {
            kernel,
            cfg,
            nulls: 0,
            scalars,
            shared_opt_in: None,
        }
    }
}

pub(super) fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("kernel input must be contiguous".into()))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Threads that stride over `n` elements.
pub(super) fn grid_stride(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per row.
pub(super) fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, four to a block.
pub(super) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(4).max(1) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads for rows of `elems`, V at a time: a multiple of 32, at most 256.
pub(super) fn row_threads(elems: usize, v: usize) -> u32 {
    (elems.div_ceil(v).div_ceil(32) * 32).clamp(32, 256) as u32
}

/// The most shared memory one block may ask for on this device.
pub(super) fn shared_memory_per_block(dev: &CudaDevice) -> Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    Ok(dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .w()? as usize)
}
