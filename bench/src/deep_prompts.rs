//! One training step of MaPLe and PromptSRC at ViT-B/16 shapes with random weights, K = 100
//! classes, as the trainer runs it: both prompted towers' training passes, the loss, the chained
//! backward and an SGD update (bench/torch_deep_prompts.py is the official step in PyTorch).
use promptclip_core::methods::{self, Batch, FrozenTower, Runtime};
use promptclip_core::tensor::{Device, Tensor};
use promptclip_core::train::optim::{Sgd, SgdConfig};
use promptclip_core::Clip;

/// Median seconds of one step of `method` (its official options) at `batch` images, with the
/// runtime's memory budget (PROMPTCLIP_MEMORY_BUDGET_MB, default 2048: the image tower's tape is
/// chunked to fit it).
pub fn step(clip: &Clip, method: &str, k: usize, batch: usize, reps: usize) -> f64 {
    let names = super::class_names(k);
    let runtime = match std::env::var("PROMPTCLIP_MEMORY_BUDGET_MB") {
        Ok(mb) => Runtime {
            memory_budget_mb: mb.parse().expect("PROMPTCLIP_MEMORY_BUDGET_MB: MiB"),
        },
        Err(_) => Runtime::default(),
    };
    let learner = methods::create(clip, method, &names, serde_json::json!({}), runtime).unwrap();
    let s = clip.config.vision_config.image_size;
    let mut rng = promptclip_core::rng::Rng::new(3);
    let pixels = Tensor::from_vec(
        rng.normal_vec(batch * 3 * s * s, 1.0),
        (batch, 3, s, s),
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::from_vec(
        (0..batch).map(|i| (i % k) as u32).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )
    .unwrap();
    let vars: Vec<_> = learner.vars().into_iter().map(|(_, v)| v).collect();
    let mut sgd = Sgd::new(SgdConfig::default(), vars.len());
    super::time(reps, || {
        // A fresh batch per step, as the trainer makes one: its frozen features (PromptSRC's
        // zero-shot side) are computed in the step.
        let b = Batch::of_pixels(pixels.clone(), FrozenTower::Clip(clip), batch).unwrap();
        let out = learner
            .batch_loss_and_grads(clip, &b, &labels, 1.0)
            .unwrap();
        sgd.step(&vars, &out.grads, 0.0025).unwrap();
        out.loss
    })
}
