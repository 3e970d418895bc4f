//! CLIP-LoRA at ViT-B/16 shapes with random weights, K = 100 classes (bench/torch_clip_lora.py is
//! the official code's side, bench/clip_lora.sh runs both):
//!
//!   promptclip-bench clip-lora <checkpoint.safetensors> <batch>
//!       one training step as the trainer runs it: the K class prompts through the adapted text
//!       tower's training pass, the batch through the adapted image tower's (chunked to the
//!       memory budget, PROMPTCLIP_MEMORY_BUDGET_MB, default 2048), the loss, the hand-written
//!       backward of both towers to the rank-2 factors of q, k, v in every block, and AdamW
//!       (lr 2e-4, weight decay 1e-2): median seconds and the process's peak RSS.
//!   promptclip-bench clip-lora-predict <checkpoint.safetensors> <batch>
//!       image encoding of <batch> images by the frozen CLIP and by the LoRA-merged one (non-zero
//!       B folded into copies of the weights, `ClipLoraLearner::merged`), interleaved: merged
//!       prediction should cost what the frozen model's does. (Its own process, so that the
//!       step's peak memory is the step's.)
use promptclip_core::methods::clip_lora::{ClipLoraConfig, ClipLoraLearner};
use promptclip_core::methods::{self, Batch, FrozenTower, Learner, Runtime};
use promptclip_core::tensor::{Device, Tensor};
use promptclip_core::train::optim::{AdamW, AdamWConfig};
use promptclip_core::Clip;
use std::path::Path;
use std::time::Instant;

const CLASSES: usize = 100;
/// The official lr and weight decay (lora.py run_lora).
const LR: f64 = 2e-4;
const WEIGHT_DECAY: f64 = 1e-2;

fn runtime() -> Runtime {
    match std::env::var("PROMPTCLIP_MEMORY_BUDGET_MB") {
        Ok(mb) => Runtime {
            memory_budget_mb: mb.parse().expect("PROMPTCLIP_MEMORY_BUDGET_MB: MiB"),
        },
        Err(_) => Runtime::default(),
    }
}

/// `batch` random images (B, 3, S, S), already normalised, from `seed`.
fn pixels(clip: &Clip, batch: usize, seed: u64) -> Tensor {
    let s = clip.config.vision_config.image_size;
    let mut rng = promptclip_core::rng::Rng::new(seed);
    Tensor::from_vec(
        rng.normal_vec(batch * 3 * s * s, 1.0),
        (batch, 3, s, s),
        &Device::Cpu,
    )
    .unwrap()
}

/// Median seconds of one training step at `batch` images.
fn step_seconds(clip: &Clip, batch: usize, reps: usize) -> f64 {
    let names = super::class_names(CLASSES);
    let learner =
        methods::create(clip, "clip-lora", &names, serde_json::json!({}), runtime()).unwrap();
    let pixels = pixels(clip, batch, 3);
    let labels = Tensor::from_vec(
        (0..batch).map(|i| (i % CLASSES) as u32).collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )
    .unwrap();
    let vars: Vec<_> = learner.vars().into_iter().map(|(_, v)| v).collect();
    let mut adamw = AdamW::new(
        AdamWConfig {
            lr: LR,
            weight_decay: WEIGHT_DECAY,
            ..AdamWConfig::default()
        },
        vars.len(),
    );
    let mut step = 0u64;
    super::time(reps, || {
        // A fresh batch per step with its own dropout masks, as the trainer makes one.
        step += 1;
        let b = Batch::of_pixels(pixels.clone(), FrozenTower::Clip(clip), batch)
            .unwrap()
            .with_step_seed(step);
        let out = learner
            .batch_loss_and_grads(clip, &b, &labels, 1.0)
            .unwrap();
        adamw.step(&vars, &out.grads, LR).unwrap();
        out.loss
    })
}

pub fn step(path: &Path, batch: usize) {
    let clip = super::random_clip(
        path,
        &promptclip_core::clip::random::RandomClipSpec::VIT_B_16,
    );
    let s = step_seconds(&clip, batch, if batch >= 8 { 1 } else { 2 });
    println!(
        "{}",
        serde_json::json!({"impl": "promptclip", "what": format!("clip_lora_step_b{batch}"), "arch": "ViT-B/16", "classes": CLASSES, "batch": batch, "threads": super::threads(), "seconds": s, "per_second": batch as f64 / s, "peak_rss_mib": super::peak_rss_mib()})
    );
}

pub fn predict(path: &Path, batch: usize) {
    let clip = super::random_clip(
        path,
        &promptclip_core::clip::random::RandomClipSpec::VIT_B_16,
    );
    let names = super::class_names(CLASSES);
    let learner = ClipLoraLearner::new(&clip, &names, ClipLoraConfig::default()).unwrap();
    // A trained learner's B is not zero: small random values, so that the merge changes weights.
    let mut rng = promptclip_core::rng::Rng::new(11);
    for (name, var) in learner.vars() {
        if name.ends_with(".B") {
            let shape = var.as_tensor().shape().clone();
            let b = Tensor::from_vec(
                rng.normal_vec(shape.elem_count(), 0.01),
                shape,
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(var.dtype())
            .unwrap();
            var.set(&b).unwrap();
        }
    }
    let t = Instant::now();
    let merged = learner.merged(&clip).unwrap();
    let merge_s = t.elapsed().as_secs_f64();
    let x = pixels(&clip, batch, 5);
    let frozen_f = clip.encode_image(&x).unwrap();
    let merged_f = merged.encode_image(&x).unwrap();
    let diff = (&merged_f - &frozen_f)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff > 0.0,
        "the merged model's features equal the frozen ones"
    );
    // Interleaved, the order alternating, after the warm-up above.
    let reps = 5;
    let (mut tf, mut tm) = (vec![], vec![]);
    for r in 0..reps {
        let run = |c: &Clip, into: &mut Vec<f64>| {
            let t = Instant::now();
            std::hint::black_box(c.encode_image(&x).unwrap());
            into.push(t.elapsed().as_secs_f64());
        };
        if r % 2 == 0 {
            run(&clip, &mut tf);
            run(&merged, &mut tm);
        } else {
            run(&merged, &mut tm);
            run(&clip, &mut tf);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let threads = super::threads();
    for (what, times, extra) in [
        ("frozen_encode", tf, serde_json::json!({})),
        (
            "lora_merged_encode",
            tm,
            serde_json::json!({"merge_seconds": merge_s, "max_abs_feature_diff_vs_frozen": diff}),
        ),
    ] {
        let s = median(times.clone());
        let mut v = serde_json::json!({"impl": "promptclip", "what": format!("{what}_b{batch}"), "arch": "ViT-B/16", "batch": batch, "reps": reps, "threads": threads, "seconds": s, "per_second": batch as f64 / s, "all_seconds": times});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        println!("{v}");
    }
}
