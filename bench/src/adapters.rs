//! Tip-Adapter-F and Tip-Adapter's cache, timed as the official run_tip_adapter_F and
//! build_cache_model run them (bench/torch_tip_adapter.py is the PyTorch side):
//!
//! - `tip_adapter_f_fit`: the whole fine-tuning on features already computed, 16 shots x 100
//!   classes (N = 1600 keys), E = 512 (ViT-B/16), batch 256 with the official loader's last
//!   partial batch (7 batches per epoch), 20 epochs of AdamW under the per-batch cosine, through
//!   the learner's own step (`loss_and_grads`) and the core's AdamW;
//! - `tip_adapter_cache`: a Tip-Adapter fit through the trainer on `n` images (decode, 10 passes
//!   of random resized crop + flip, the image encoder; one more center-crop pass that the trainer
//!   makes to find unreadable images), alpha and beta given (no search).
use promptclip_core::methods::{self, FitData, Runtime};
use promptclip_core::preprocess::ImageSource;
use promptclip_core::tensor::{Device, Tensor};
use promptclip_core::train::optim::AdamW;
use promptclip_core::train::{fit_with_validation, LabelledImages, TrainOptions};
use promptclip_core::{Clip, Result};
use std::time::Instant;

/// Precomputed features as the learner's preparation sees them.
struct Features {
    labels: Vec<usize>,
    augmented: Tensor,
}

impl FitData for Features {
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn features(&mut self) -> Result<Tensor> {
        Ok(self.augmented.get(0)?)
    }
    fn augmented_features(&mut self, _passes: usize, _scale: (f64, f64)) -> Result<Tensor> {
        Ok(self.augmented.clone())
    }
    fn validation(&mut self) -> Result<Option<(Tensor, Vec<usize>)>> {
        Ok(None)
    }
    fn check_cancelled(&self) -> Result<()> {
        Ok(())
    }
}

/// Seconds of one Tip-Adapter-F fine-tuning (after one warm-up step).
pub fn tip_adapter_f_fit(clip: &Clip, shots: usize, k: usize, epochs: usize) -> f64 {
    let n = shots * k;
    let e = clip.embed_dim();
    let names = super::class_names(k);
    let learner = methods::create(
        clip,
        "tip-adapter-f",
        &names,
        serde_json::json!({ "alpha": 1.0, "beta": 1.0 }),
        Runtime::default(),
    )
    .unwrap();
    let labels: Vec<usize> = (0..n).map(|i| i / shots).collect();
    let raw = Tensor::randn(0f32, 1.0, (1, n, e), &Device::Cpu).unwrap();
    let mut data = Features {
        labels: labels.clone(),
        augmented: raw,
    };
    learner.prepare(clip, &mut data).unwrap();
    let features = Tensor::randn(0f32, 1.0, (n, e), &Device::Cpu).unwrap();
    let recipe = methods::recipe_of(learner.as_ref(), Default::default()).unwrap();
    let config = TrainOptions {
        epochs: Some(epochs),
        ..TrainOptions::default()
    }
    .resolve(&recipe)
    .unwrap();
    let (bs, steps) = (config.batch_size, n.div_ceil(config.batch_size));
    let schedule = config.lr_schedule();
    let vars: Vec<_> = learner.vars().into_iter().map(|(_, v)| v).collect();
    let mut adamw = AdamW::new(config.adamw, vars.len());
    let mut rng = promptclip_core::rng::Rng::new(1);
    let step = |epoch: usize, s: usize, order: &[usize], adamw: &mut AdamW| {
        let idx: Vec<u32> = order[s * bs..((s + 1) * bs).min(n)]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let m = idx.len();
        let idx = Tensor::from_vec(idx, m, &Device::Cpu).unwrap();
        let x = features.index_select(&idx, 0).unwrap();
        let y = Tensor::from_vec(
            idx.to_vec1::<u32>()
                .unwrap()
                .iter()
                .map(|&i| labels[i as usize] as u32)
                .collect::<Vec<_>>(),
            m,
            &Device::Cpu,
        )
        .unwrap();
        let out = learner.loss_and_grads(clip, &x, &y).unwrap();
        adamw
            .step(&vars, &out.grads, schedule.lr_at(epoch, s, steps))
            .unwrap();
    };
    let order: Vec<usize> = (0..n).collect();
    step(0, 0, &order, &mut AdamW::new(config.adamw, vars.len()));
    let t = Instant::now();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for s in 0..steps {
            step(epoch, s, &order, &mut adamw);
        }
    }
    t.elapsed().as_secs_f64()
}

/// Seconds of a Tip-Adapter fit (the cache) on `n` of the images in `dir`, cycled, with `passes`
/// augmented passes.
pub fn tip_adapter_cache(clip: &Clip, dir: &std::path::Path, n: usize, passes: usize) -> f64 {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ["png", "jpg", "jpeg", "webp"].contains(&x))
        })
        .collect();
    files.sort();
    let k = 4;
    let data = LabelledImages {
        sources: (0..n)
            .map(|i| ImageSource::Path(files[i % files.len()].clone()))
            .collect(),
        labels: (0..n).map(|i| i % k).collect(),
    };
    let learner = methods::create(
        clip,
        "tip-adapter",
        &super::class_names(k),
        serde_json::json!({ "alpha": 1.0, "beta": 1.0, "augmentPasses": passes }),
        Runtime::default(),
    )
    .unwrap();
    let config = TrainOptions::default()
        .resolve(&methods::recipe_of(learner.as_ref(), Default::default()).unwrap())
        .unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let t = Instant::now();
    fit_with_validation(
        clip,
        learner.as_ref(),
        &data,
        None,
        &config,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    t.elapsed().as_secs_f64()
}
