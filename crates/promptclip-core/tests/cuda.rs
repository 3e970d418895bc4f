//! The CUDA path against the CPU path on the same weights and data. Built only with the `cuda`
//! feature and run on a GPU by `bash scripts/gpu.sh run` (the fixture tests of model.rs, coop.rs
//! and cocoop.rs run there too, on CUDA, through PROMPTCLIP_TEST_DEVICE).
#![cfg(feature = "cuda")]
mod common;
use candle_core::{DType, Device, Tensor};
use common::{colours, fixtures, rel_err};
use promptclip_core::methods::{
    CocoopConfig, CocoopLearner, CoopConfig, CoopContext, Learner, Runtime,
};
use promptclip_core::train::optim::SgdConfig;
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::Clip;
use std::sync::atomic::AtomicBool;

fn cuda() -> Device {
    promptclip_core::device::device_from_name("cuda").expect("a GPU")
}

fn clip_on(device: &Device, dtype: DType) -> Clip {
    Clip::load_with_dtype(&fixtures().join("tiny-clip-hf"), device, dtype).unwrap()
}

fn flat(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
}

/// Train `make`'s learner with the same seed on CPU (fp32) and on CUDA (`dtype`); return the
/// largest relative difference of the final parameters and of the epoch losses.
fn cpu_vs_cuda<M: Learner>(
    dtype: DType,
    make: impl Fn(&Clip) -> M,
    config: &TrainConfig,
) -> (f32, f32) {
    let (names, data) = colours(4, 21, 0..3);
    let _ = names;
    let run = |device: &Device, dtype: DType| {
        let clip = clip_on(device, dtype);
        let learner = make(&clip);
        let s = fit(
            &clip,
            &learner,
            &data,
            config,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let params: Vec<Tensor> = learner
            .vars()
            .iter()
            .map(|(_, v)| flat(v.as_tensor()))
            .collect();
        (
            Tensor::cat(&params, 0).unwrap(),
            Tensor::new(s.epoch_loss.as_slice(), &Device::Cpu).unwrap(),
        )
    };
    let (p_cpu, l_cpu) = run(&Device::Cpu, DType::F32);
    let (p_gpu, l_gpu) = run(&cuda(), dtype);
    (rel_err(&p_gpu, &p_cpu), rel_err(&l_gpu, &l_cpu))
}

fn names() -> Vec<String> {
    colours(1, 0, 0..3).0
}

fn train_config(batch: usize) -> TrainConfig {
    TrainConfig {
        epochs: 6,
        batch_size: batch,
        augment: true,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        seed: 9,
        ..TrainConfig::default()
    }
}

#[test]
fn coop_trained_on_cuda_ends_within_tolerance_of_the_cpu_run() {
    let coop = |clip: &Clip| {
        CoopContext::new(
            clip,
            &names(),
            CoopConfig {
                n_ctx: Some(4),
                ..CoopConfig::default()
            },
        )
        .unwrap()
    };
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
    let cocoop = |clip: &Clip| {
        CocoopLearner::new(
            clip,
            &names(),
            CocoopConfig {
                meta_net_ratio: 4,
                ..CocoopConfig::default()
            },
            Runtime::default(),
        )
        .unwrap()
    };
    let (p, l) = cpu_vs_cuda(DType::F32, cocoop, &train_config(3));
    println!("cocoop cpu vs cuda fp32: parameters rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 1e-4 && l < 1e-4, "fp32: parameters {p}, losses {l}");
    let (p, l) = cpu_vs_cuda(DType::BF16, cocoop, &train_config(3));
    println!("cocoop cpu fp32 vs cuda bf16: parameters rel diff {p:.2e}, epoch losses {l:.2e}");
    assert!(p < 5e-2 && l < 5e-2, "bf16: parameters {p}, losses {l}");
}

#[test]
fn fused_kernels_on_cuda_equal_their_cpu_twins() {
    use promptclip_core::clip::Activation;
    use promptclip_core::kernels as k;
    let gpu = cuda();
    let cpu = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &cpu).unwrap();
    let (x, g, b, dy) = (r(&[50, 96]), r(&[96]), r(&[96]), r(&[50, 96]));
    let on = |t: &Tensor, dt: DType| t.to_device(&gpu).unwrap().to_dtype(dt).unwrap();
    for dt in [DType::F32, DType::F16, DType::BF16] {
        // f32: rounding only; half types: one rounding of the output on top of it.
        let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
        let check =
            |what: &str, cuda: candle_core::Result<Tensor>, cpu: candle_core::Result<Tensor>| {
                let (cuda, cpu) = (cuda.unwrap(), cpu.unwrap());
                let e = rel_err(&cuda, &cpu);
                println!("kernel {what} {dt:?}: cuda vs cpu rel err {e:.1e}");
                assert!(e < tol, "{what} {dt:?}: {e}");
            };
        let c = |t: &Tensor| t.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap(); // CPU inputs rounded like the GPU's
        check(
            "layer_norm",
            k::layer_norm(&on(&x, dt), &on(&g, dt), &on(&b, dt), 1e-5),
            k::layer_norm(&c(&x), &c(&g), &c(&b), 1e-5),
        );
        check(
            "layer_norm_backward",
            k::layer_norm_backward(&on(&x, dt), &on(&g, dt), &on(&dy, dt), 1e-5),
            k::layer_norm_backward(&c(&x), &c(&g), &c(&dy), 1e-5),
        );
        for act in [Activation::QuickGelu, Activation::Gelu] {
            check(
                "activation",
                k::activation(&on(&x, dt), act),
                k::activation(&c(&x), act),
            );
            check(
                "activation_backward",
                k::activation_backward(&on(&x, dt), &on(&dy, dt), act),
                k::activation_backward(&c(&x), &c(&dy), act),
            );
            check(
                "bias_act",
                k::bias_act(&on(&x, dt), &on(&b, dt), Some(act), Some(&on(&dy, dt))),
                k::bias_act(&c(&x), &c(&b), Some(act), Some(&c(&dy))),
            );
        }
        check(
            "bias",
            k::bias_act(&on(&x, dt), &on(&b, dt), None, None),
            k::bias_act(&c(&x), &c(&b), None, None),
        );
        let scores = r(&[2, 3, 5, 9]);
        check(
            "softmax",
            k::attention_softmax(&on(&scores, dt), None, None),
            k::attention_softmax(&c(&scores), None, None),
        );
        check(
            "causal softmax",
            k::attention_softmax(&on(&scores, dt), Some(4), None),
            k::attention_softmax(&c(&scores), Some(4), None),
        );
        check(
            "padded softmax",
            k::attention_softmax(&on(&scores, dt), None, Some(6)),
            k::attention_softmax(&c(&scores), None, Some(6)),
        );
        let y = k::attention_softmax(&c(&scores), None, None).unwrap();
        let dys = r(&[2, 3, 5, 9]);
        check(
            "softmax_backward",
            k::softmax_backward(&on(&y, dt), &on(&dys, dt)),
            k::softmax_backward(&c(&y), &c(&dys)),
        );
        let qkv = r(&[2, 5, 3 * 3 * 8]);
        let bias = r(&[3 * 3 * 8]);
        let (qg, kg, vg) = k::qkv_split(&on(&qkv, dt), &on(&bias, dt), 3, 0.35).unwrap();
        let (qc, kc, vc) = k::qkv_split(&c(&qkv), &c(&bias), 3, 0.35).unwrap();
        for (what, a, b) in [
            ("qkv_split q", &qg, &qc),
            ("qkv_split k", &kg, &kc),
            ("qkv_split v", &vg, &vc),
        ] {
            check(what, Ok(a.clone()), Ok(b.clone()));
        }
        let long = r(&[2, 3, 7, 8]);
        check(
            "qkv_merge",
            k::qkv_merge(&qg, &on(&long, dt), &on(&long, dt), 2, 0.35),
            k::qkv_merge(&qc, &c(&long), &c(&long), 2, 0.35),
        );
        check(
            "transpose12",
            k::transpose12(&on(&long, dt)),
            k::transpose12(&c(&long)),
        );
        // Rows as the image tower's (200 keys, 197 valid: vectorised in registers) and longer
        // than registers hold (the three-pass kernel).
        let vis = r(&[2, 3, 200, 200]);
        check(
            "softmax 200 of 197",
            k::attention_softmax(&on(&vis, dt), None, Some(197)),
            k::attention_softmax(&c(&vis), None, Some(197)),
        );
        let long_rows = r(&[3, 2100]);
        check(
            "softmax 2100",
            k::attention_softmax(&on(&long_rows, dt), None, None),
            k::attention_softmax(&c(&long_rows), None, None),
        );
        let (kp, ks) = (r(&[2, 3, 3, 8]), r(&[6, 3, 4, 8]));
        check(
            "gather_cat",
            k::gather_cat(&on(&kp, dt), &on(&ks, dt), 7),
            k::gather_cat(&c(&kp), &c(&ks), 7),
        );
        check(
            "gather_cat padded",
            k::gather_cat(&on(&kp, dt), &on(&ks, dt), 16),
            k::gather_cat(&c(&kp), &c(&ks), 16),
        );
        // Wide rows (the vectorised layer norm keeps a row in registers) and unaligned starts
        // (the scalar kernels).
        let wide = r(&[7, 768]);
        let (gw, bw) = (r(&[768]), r(&[768]));
        check(
            "layer_norm 768",
            k::layer_norm(&on(&wide, dt), &on(&gw, dt), &on(&bw, dt), 1e-5),
            k::layer_norm(&c(&wide), &c(&gw), &c(&bw), 1e-5),
        );
        let dwide = r(&[7, 768]);
        check(
            "layer_norm_backward 768",
            k::layer_norm_backward(&on(&wide, dt), &on(&gw, dt), &on(&dwide, dt), 1e-5),
            k::layer_norm_backward(&c(&wide), &c(&gw), &c(&dwide), 1e-5),
        );
        let (raw, bo) = (r(&[1 + 12 * 40]), r(&[40]));
        let odd = |t: Tensor| t.narrow(0, 1, 12 * 40).unwrap().reshape((12, 40)).unwrap(); // starts at element 1
        check(
            "bias unaligned",
            k::bias_act(&odd(on(&raw, dt)), &on(&bo, dt), None, None),
            k::bias_act(&odd(c(&raw)), &c(&bo), None, None),
        );
        let grads = r(&[6, 3, 7, 8]);
        check(
            "group_prefix_sum",
            k::group_prefix_sum(&on(&grads, dt), 2, 4),
            k::group_prefix_sum(&c(&grads), 2, 4),
        );
        check(
            "scatter_rows",
            k::scatter_rows(
                &on(&x, dt),
                &(0..50u32).rev().map(|i| i * 2).collect::<Vec<_>>(),
                100,
            ),
            k::scatter_rows(
                &c(&x),
                &(0..50u32).rev().map(|i| i * 2).collect::<Vec<_>>(),
                100,
            ),
        );
    }
}

#[test]
fn fused_attention_on_cuda_equals_its_cpu_twin_and_the_unfused_kernels() {
    use promptclip_core::kernels as k;
    let gpu = cuda();
    let scale = 0.125;
    for dt in [DType::F16, DType::BF16] {
        // (sequences, positions, heads, causal offset, valid keys): the image tower at ViT-B/16,
        // the text tower, a length no multiple of 16 with padding keys, the longest, causal
        // after earlier positions.
        for (b, t, h, causal, valid) in [
            (3, 197, 2, None, None),
            (2, 77, 3, Some(0), None),
            (2, 50, 1, None, Some(37)),
            (1, 256, 2, None, None),
            (2, 9, 2, Some(3), None),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, t, 3 * h * 64), &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let bias = Tensor::randn(0f32, 1.0, 3 * h * 64, &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let (xg, bg) = (x.to_device(&gpu).unwrap(), bias.to_device(&gpu).unwrap());
            assert!(k::fused_attention_runs(&xg, 64));
            let fused = k::fused_attention(&xg, &bg, h, scale, causal, valid).unwrap();
            // The CPU twin in the same element type: the same roundings, another summation order.
            let twin = k::fused_attention(&x, &bias, h, scale, causal, valid).unwrap();
            let (q, kk, v) = k::qkv_split(&xg, &bg, h, scale).unwrap();
            let p =
                k::attention_softmax(&q.matmul(&kk.t().unwrap()).unwrap(), causal, valid).unwrap();
            let unfused = k::transpose12(&p.matmul(&v).unwrap())
                .unwrap()
                .reshape((b, t, h * 64))
                .unwrap();
            let (e_twin, e_unfused) = (rel_err(&fused, &twin), rel_err(&fused, &unfused));
            println!("fused attention {dt:?} b{b} t{t} h{h} causal {causal:?} valid {valid:?}: vs cpu twin {e_twin:.1e}, vs unfused kernels {e_unfused:.1e}");
            // One rounding of the output (2^-11 fp16, 2^-8 bf16) and of P, plus the unfused
            // path's rounding of the scores.
            let tol = if dt == DType::F16 { 4e-3 } else { 3e-2 };
            assert!(
                e_twin < tol && e_unfused < 2.0 * tol,
                "{dt:?} t{t}: twin {e_twin}, unfused {e_unfused}"
            );
        }
    }
    assert!(
        !k::fused_attention_runs(
            &Tensor::zeros((1, 4, 3 * 64), DType::F32, &gpu).unwrap(),
            64
        ),
        "fp32 keeps the unfused path"
    );
    assert!(
        !k::fused_attention_runs(
            &Tensor::zeros((1, 257, 3 * 64), DType::F16, &gpu).unwrap(),
            64
        ),
        "at most 256 keys"
    );
}

#[test]
fn encoders_with_fused_attention_stay_within_the_half_precision_tolerance_of_the_cpu() {
    use promptclip_core::clip::random::{write_random_openai_clip, RandomClipSpec};
    // Heads of 64 as in every OpenAI ViT (the fixture's heads are smaller, so this builds one).
    let spec = RandomClipSpec {
        embed_dim: 64,
        image_size: 64,
        patch_size: 16,
        vision_width: 128,
        vision_layers: 2,
        text_width: 128,
        text_layers: 2,
        ..RandomClipSpec::VIT_B_16
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.safetensors");
    write_random_openai_clip(&path, &spec, DType::F32, 3).unwrap();
    let cpu = Clip::load(&path, &Device::Cpu).unwrap();
    let px = Tensor::randn(0f32, 1.0, (5, 3, 64, 64), &Device::Cpu).unwrap();
    let texts: Vec<String> = ["a photo of a cat.", "a dog", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (img_ref, txt_ref) = (
        cpu.encode_image(&px).unwrap(),
        cpu.encode_texts(&texts).unwrap(),
    );
    for (dt, tol) in [(DType::F16, 1e-2), (DType::BF16, 5e-2)] {
        let gpu = Clip::load_with_dtype(&path, &cuda(), dt).unwrap();
        let img = gpu
            .encode_image(&px.to_device(&cuda()).unwrap().to_dtype(dt).unwrap())
            .unwrap();
        let txt = gpu.encode_texts(&texts).unwrap();
        let (ei, et) = (
            rel_err(&img.to_device(&Device::Cpu).unwrap(), &img_ref),
            rel_err(&txt.to_device(&Device::Cpu).unwrap(), &txt_ref),
        );
        println!("fused-attention encoders {dt:?} vs cpu fp32: image {ei:.1e}, text {et:.1e}");
        assert!(ei < tol && et < tol, "{dt:?}: image {ei}, text {et}");
    }
}
