//! What this machine's CPU reaches, so that an encoder's speed reads against the machine as well as
//! against PyTorch (issue 29): the best fp32 matrix-multiply rate candle gets here (a large square
//! sgemm and the image encoder's QKV shape), and the arithmetic of one image through a ViT tower,
//! which turns images per second into GFLOP/s.
use promptclip_core::clip::ClipVisionConfig;
use promptclip_core::tensor::{Device, Tensor};
use std::time::Instant;

/// Floating-point operations of one image through a ViT image tower (multiply-adds count 2):
/// the patch embedding, then per block the QKV, attention (scores and weighted sum), out
/// projection and MLP matrix products. Norms, softmax and activations are left out (a few % of
/// the total).
pub fn vit_image_flops(v: &ClipVisionConfig) -> f64 {
    let t = (v.num_patches() + 1) as f64;
    let d = v.hidden_size as f64;
    let ff = v.intermediate_size as f64;
    let patch = (v.num_channels * v.patch_size * v.patch_size) as f64;
    let embed = 2.0 * (t - 1.0) * patch * d;
    let block = 2.0 * t * d * (4.0 * d + 2.0 * ff) + 4.0 * t * t * d;
    embed + v.num_hidden_layers as f64 * block
}

/// The best GFLOP/s of `reps` timed (m, k) x (k, n) fp32 products on the CPU, after a warm-up.
fn sgemm_gflops(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).unwrap();
    std::hint::black_box(a.matmul(&b).unwrap());
    let best = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(a.matmul(&b).unwrap());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// JSON lines: candle's best sgemm rate at 2048 x 2048 x 2048 and at ViT-B/16's QKV product for a
/// batch of 8 images (1576 x 768 x 2304).
pub fn sgemm(threads: usize) {
    for (what, (m, k, n)) in [
        ("sgemm_2048", (2048, 2048, 2048)),
        ("sgemm_vit_b16_qkv_b8", (8 * 197, 768, 2304)),
    ] {
        let g = sgemm_gflops(m, k, n, 10);
        println!(
            "{}",
            serde_json::json!({"impl": "promptclip", "what": what, "m": m, "k": k, "n": n, "threads": threads, "gflops": g, "per_second": g})
        );
    }
}
