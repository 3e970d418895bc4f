// promptclip's fused CUDA kernels, for candle's CUDA backend: one translation unit (one PTX
// module, `promptclip_ops`) made of each family's file, kept beside the Rust file that holds
// its CPU twin and its launch (tests/cuda.rs compares the two on a GPU).
#include "norm.cu"
#include "bias.cu"
#include "attention.cu"
#include "rows.cu"
#include "pixels.cu"
