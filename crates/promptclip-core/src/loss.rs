//! Losses shared by the methods.
use crate::Result;
use candle_core::{DType, Tensor};

/// Mean cross-entropy of logits (B, K) against labels (B,), computed in f32 (f64 stays f64).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let dtype = if logits.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    Ok(candle_nn::loss::cross_entropy(
        &logits.to_dtype(dtype)?,
        labels,
    )?)
}
