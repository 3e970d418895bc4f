//! promptclip-core: CLIP in candle with a differentiable text path, CLIP's tokenizer and image
//! preprocessing, and zero-shot classification. The Node binding (crate root) is a thin layer
//! over this crate; nothing here knows about napi.
pub mod clip;
pub mod device;
pub mod error;
pub mod eval;
pub mod files;
pub mod kernels;
pub mod logreg;
pub mod preprocess;
pub mod prompt;
pub mod rng;
pub mod tokenizer;
pub mod train;
pub mod zeroshot;

pub use clip::Clip;
/// candle's tensor types, re-exported so dependants need no direct candle dependency.
pub mod tensor {
    /// The CUDA driver API (for the benchmark's profiler brackets and memory queries).
    #[cfg(feature = "cuda")]
    pub use candle_core::cuda_backend::cudarc::driver::sys as cuda_sys;
    pub use candle_core::{DType, Device, Tensor};
}
pub use error::{Error, Result};
