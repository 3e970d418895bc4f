//! The CUDA path against the CPU path on the same weights and data. Built only with the `cuda`
//! feature and run on a GPU by `bash scripts/gpu.sh run` (the fixture tests of model.rs, coop.rs
//! and cocoop.rs run there too, on CUDA, through PROMPTCLIP_TEST_DEVICE).
#![cfg(feature = "cuda")]
mod common;
use candle_core::{DType, Device, Tensor};
use common::{colours, fixtures, rel_err};
use promptclip_core::prompt::coop::{CoopConfig, PromptLearner};
use promptclip_core::prompt::{CocoopConfig, CocoopLearner};
use promptclip_core::train::optim::SgdConfig;
use promptclip_core::train::{fit, PromptModel, TrainConfig};
use promptclip_core::Clip;
use std::sync::atomic::AtomicBool;

fn cuda() -> Device {
    promptclip_core::device::device_from_name("cuda").expect("a GPU")
}

fn clip_on(device: &Device, dtype: DType) -> Clip {
    Clip::load_with_dtype(&fixtures().join("tiny-clip-hf"), device, dtype).unwrap()
}

fn flat(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap()
}

/// Train `make`'s learner with the same seed on CPU (fp32) and on CUDA (`dtype`); return the
/// largest relative difference of the final parameters and of the epoch losses.
fn cpu_vs_cuda<M: PromptModel>(dtype: DType, make: impl Fn(&Clip) -> M, config: &TrainConfig) -> (f32, f32) {
    let (names, data) = colours(4, 21, 0..3);
    let _ = names;
    let run = |device: &Device, dtype: DType| {
        let clip = clip_on(device, dtype);
        let learner = make(&clip);
        let s = fit(&clip, &learner, &data, config, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let params: Vec<Tensor> = learner.vars().iter().map(|(_, v)| flat(v.as_tensor())).collect();
        (Tensor::cat(&params, 0).unwrap(), Tensor::new(s.epoch_loss.as_slice(), &Device::Cpu).unwrap())
    };
    let (p_cpu, l_cpu) = run(&Device::Cpu, DType::F32);
    let (p_gpu, l_gpu) = run(&cuda(), dtype);
    (rel_err(&p_gpu, &p_cpu), rel_err(&l_gpu, &l_cpu))
}

fn names() -> Vec<String> {
    colours(1, 0, 0..3).0
}

fn train_config(batch: usize) -> TrainConfig {
    TrainConfig { epochs: 6, batch_size: batch, augment: true, sgd: SgdConfig { lr: 0.05, ..SgdConfig::default() }, seed: 9, ..TrainConfig::default() }
}

#[test]
fn coop_trained_on_cuda_ends_within_tolerance_of_the_cpu_run() {
    let coop = |clip: &Clip| PromptLearner::new(clip, &names(), CoopConfig { n_ctx: 4, ..CoopConfig::default() }).unwrap();
    // fp32: the two runs differ only in rounding (reduction order in cuBLAS and the kernels).
    let (p, l) = cpu_vs_cuda(DType::F32, coop, &train_config(4));
    println!("coop cpu vs cuda fp32: context rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 1e-4 && l < 1e-4, "fp32: context {p}, losses {l}");
    // Mixed precision (fp16 weights, fp32 context and optimiser) against the fp32 CPU run.
    let (p, l) = cpu_vs_cuda(DType::F16, coop, &train_config(4));
    println!("coop cpu fp32 vs cuda fp16: context rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 2e-2 && l < 2e-2, "fp16: context {p}, losses {l}");
}

#[test]
fn cocoop_trained_on_cuda_ends_within_tolerance_of_the_cpu_run() {
    let cocoop = |clip: &Clip| CocoopLearner::new(clip, &names(), CocoopConfig { ratio: 4, ..CocoopConfig::default() }).unwrap();
    let (p, l) = cpu_vs_cuda(DType::F32, cocoop, &train_config(3));
    println!("cocoop cpu vs cuda fp32: parameters rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 1e-4 && l < 1e-4, "fp32: parameters {p}, losses {l}");
    let (p, l) = cpu_vs_cuda(DType::BF16, cocoop, &train_config(3));
    println!("cocoop cpu fp32 vs cuda bf16: parameters rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 5e-2 && l < 5e-2, "bf16: parameters {p}, losses {l}");
}
