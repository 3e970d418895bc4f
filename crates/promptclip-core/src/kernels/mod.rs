//! Fused ops of CLIP's blocks, by family, each with its CPU loop and its CUDA launch side by side
//! (the CUDA kernels themselves are in `ops.cu`, the same arithmetic: two-pass statistics,
//! accumulation in f32, f64 for f64 inputs; `tests/cuda.rs` compares the two on a GPU):
//! - `norm`: LayerNorm and the MLP's activations, with their backward;
//! - `bias`: a matrix multiply's bias, activation and residual in one pass;
//! - `attention`: heads split and merged, the masked softmax and its backward, fused attention;
//! - `rows`: the text tower's shared prefix (gathered, its gradients summed) and scattered rows;
//! - `pixels`: 8-bit crops to the model's normalised input;
//! - `conv`: the ResNet tower's im2col and average pool (CPU).
//!
//! `op` holds what they share (the `Kernel` trait and the candle custom op that runs one) and
//! `cuda` the launch plumbing.
//!
//! Each replaces several candle ops: a layer norm is ~10 of them composed and its backward ~20.
//! On the GPU every op is a kernel launch and a pass over memory, so this is where the time goes.
//! They take and return plain tensors without autograd: inference needs none, and the text
//! encoder's training pass (`clip::text::TextTape`) calls the backward ops itself, since prompt
//! learning needs only input gradients.
mod attention;
mod bias;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod norm;
mod op;
mod pixels;
mod rows;

pub use attention::{
    attention_softmax, fused_attention, fused_attention_runs, qkv_merge, qkv_split,
    softmax_backward, transpose12, FUSED_ATTENTION_HEAD, FUSED_ATTENTION_MAX_KEYS,
};
pub use bias::bias_act;
pub use norm::{activation, activation_backward, layer_norm, layer_norm_backward};
pub use op::supported;
pub use pixels::normalize_pixels;
pub use rows::{gather_cat, group_prefix_sum, scatter_rows};
