//! Prompt learners: CoOp's learned context, assembled in token-embedding space.
//!
//! A CoOp prompt for class k is  t_k = [SOS] [V]_1 ... [V]_M [CLASS_k] . [EOS]  (paper eq. 2),
//! with the context vectors [V]_m learned and every CLIP weight frozen. Following the official
//! code, each class's prompt text "X X ... X {name}." is tokenized and embedded once; its SOS
//! embedding is kept as `prefix` and everything after the M placeholder tokens (class-name
//! tokens, ".", EOS, padding) as `suffix`. The forward pass only concatenates those buffers with
//! the context, so gradients reach the context vectors and nothing else.
pub mod coop;
pub mod io;

pub use coop::{ClassTokenPosition, ContextInit, CoopConfig, PromptLearner};
