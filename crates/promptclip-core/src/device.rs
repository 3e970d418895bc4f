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
    Device::new_cuda(ordinal).map_err(|e| Error::CudaUnavailable(format!("no usable GPU {ordinal}: {e}")))
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
        other => Err(Error::InvalidArgument(format!("dtype `{other}`: expected \"fp32\", \"fp16\" or \"bf16\""))),
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
