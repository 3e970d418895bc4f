//! promptclip-core: CLIP in candle (both towers, CLIP's tokenizer and image preprocessing),
//! zero-shot classification, the prompt-learning methods (CoOp, CoCoOp, KgCoOp) and the linear
//! probe behind one seam (`methods`), their training (`train`) and evaluation metrics (`eval`).
//! The Node binding (crate root) is a thin layer over this crate; nothing here knows about napi.
//!
//! Dependencies point one way: `clip` is the model; `methods` use it; `train` uses methods.
pub mod classnames;
pub mod clip;
pub mod device;
pub mod error;
pub mod eval;
pub mod features;
pub mod files;
pub mod kernels;
pub mod logreg;
pub mod loss;
pub mod methods;
pub mod preprocess;
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
