//! Random CLIP checkpoints with OpenAI parameter names, at any shape: used by tests (ViT-B/32,
//! B/16, L/14 shapes must load) and by benchmarks (speed at real shapes without real weights).
//! With `resnet_layers` set, the image tower is OpenAI's ModifiedResNet (RN50, RN101) instead of
//! a ViT, under OpenAI's names.
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct RandomClipSpec {
    pub embed_dim: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub vision_width: usize,
    pub vision_layers: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub text_width: usize,
    pub text_layers: usize,
    /// Bottleneck blocks per stage of a ModifiedResNet image tower ([3, 4, 6, 3] for RN50);
    /// `None` for a ViT. For a ResNet, `vision_width` is the stem's width (64 for RN50) and
    /// `patch_size` is 32 (the tower's total stride); `vision_layers` is not used.
    pub resnet_layers: Option<[usize; 4]>,
}

impl RandomClipSpec {
    pub const VIT_B_32: Self = Self {
        embed_dim: 512,
        image_size: 224,
        patch_size: 32,
        vision_width: 768,
        vision_layers: 12,
        context_length: 77,
        vocab_size: 49408,
        text_width: 512,
        text_layers: 12,
        resnet_layers: None,
    };
    pub const VIT_B_16: Self = Self {
        patch_size: 16,
        ..Self::VIT_B_32
    };
    pub const VIT_L_14: Self = Self {
        embed_dim: 768,
        patch_size: 14,
        vision_width: 1024,
        vision_layers: 24,
        text_width: 768,
        ..Self::VIT_B_32
    };
    /// OpenAI's RN50: stem width 64, stages [3, 4, 6, 3], a 1024-wide joint space.
    pub const RN50: Self = Self {
        embed_dim: 1024,
        patch_size: 32,
        vision_width: 64,
        vision_layers: 16,
        resnet_layers: Some([3, 4, 6, 3]),
        ..Self::VIT_B_32
    };
    /// OpenAI's RN101: stages [3, 4, 23, 3], a 512-wide joint space.
    pub const RN101: Self = Self {
        embed_dim: 512,
        vision_layers: 33,
        resnet_layers: Some([3, 4, 23, 3]),
        ..Self::RN50
    };

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "ViT-B/32" => Some(Self::VIT_B_32),
            "ViT-B/16" => Some(Self::VIT_B_16),
            "ViT-L/14" => Some(Self::VIT_L_14),
            "RN50" => Some(Self::RN50),
            "RN101" => Some(Self::RN101),
            _ => None,
        }
    }
}

/// Write a random OpenAI-named CLIP as safetensors (`dtype`: F32 or F16).
pub fn write_random_openai_clip(
    path: &Path,
    spec: &RandomClipSpec,
    dtype: DType,
    seed: u64,
) -> Result<()> {
    let dev = Device::Cpu;
    let rng = std::cell::RefCell::new(Rng::new(seed));
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let randn = |shape: &[usize], std: f64| -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(rng.borrow_mut().normal_vec(n, std), shape, &dev)?.to_dtype(dtype)?)
    };
    let ones =
        |n: usize| -> Result<Tensor> { Ok(Tensor::ones(n, DType::F32, &dev)?.to_dtype(dtype)?) };
    let zeros =
        |n: usize| -> Result<Tensor> { Ok(Tensor::zeros(n, DType::F32, &dev)?.to_dtype(dtype)?) };
    let blocks = |prefix: &str,
                  width: usize,
                  layers: usize,
                  t: &mut HashMap<String, Tensor>|
     -> Result<()> {
        let std = (width as f64).powf(-0.5);
        for i in 0..layers {
            let p = format!("{prefix}{i}.");
            t.insert(
                format!("{p}attn.in_proj_weight"),
                randn(&[3 * width, width], std)?,
            );
            t.insert(format!("{p}attn.in_proj_bias"), zeros(3 * width)?);
            t.insert(
                format!("{p}attn.out_proj.weight"),
                randn(&[width, width], std)?,
            );
            t.insert(format!("{p}attn.out_proj.bias"), zeros(width)?);
            for ln in ["ln_1", "ln_2"] {
                t.insert(format!("{p}{ln}.weight"), ones(width)?);
                t.insert(format!("{p}{ln}.bias"), zeros(width)?);
            }
            t.insert(
                format!("{p}mlp.c_fc.weight"),
                randn(&[4 * width, width], std)?,
            );
            t.insert(format!("{p}mlp.c_fc.bias"), zeros(4 * width)?);
            t.insert(
                format!("{p}mlp.c_proj.weight"),
                randn(&[width, 4 * width], std * 0.5)?,
            );
            t.insert(format!("{p}mlp.c_proj.bias"), zeros(width)?);
        }
        Ok(())
    };
    let s = spec;
    let grid = s.image_size / s.patch_size;
    if grid * s.patch_size != s.image_size {
        return Err(Error::InvalidArgument(format!(
            "image size {} is not a multiple of patch {}",
            s.image_size, s.patch_size
        )));
    }
    t.insert(
        "token_embedding.weight".into(),
        randn(&[s.vocab_size, s.text_width], 0.02)?,
    );
    t.insert(
        "positional_embedding".into(),
        randn(&[s.context_length, s.text_width], 0.01)?,
    );
    blocks(
        "transformer.resblocks.",
        s.text_width,
        s.text_layers,
        &mut t,
    )?;
    t.insert("ln_final.weight".into(), ones(s.text_width)?);
    t.insert("ln_final.bias".into(), zeros(s.text_width)?);
    t.insert(
        "text_projection".into(),
        randn(
            &[s.text_width, s.embed_dim],
            (s.text_width as f64).powf(-0.5),
        )?,
    );
    if let Some(layers) = s.resnet_layers {
        resnet_tower(&mut t, s, layers, grid, &mut rng.borrow_mut(), dtype)?;
    } else {
        let vw = s.vision_width;
        t.insert(
            "visual.conv1.weight".into(),
            randn(&[vw, 3, s.patch_size, s.patch_size], 0.02)?,
        );
        t.insert(
            "visual.class_embedding".into(),
            randn(&[vw], (vw as f64).powf(-0.5))?,
        );
        t.insert(
            "visual.positional_embedding".into(),
            randn(&[grid * grid + 1, vw], (vw as f64).powf(-0.5))?,
        );
        for ln in ["visual.ln_pre", "visual.ln_post"] {
            t.insert(format!("{ln}.weight"), ones(vw)?);
            t.insert(format!("{ln}.bias"), zeros(vw)?);
        }
        blocks("visual.transformer.resblocks.", vw, s.vision_layers, &mut t)?;
        t.insert(
            "visual.proj".into(),
            randn(&[vw, s.embed_dim], (vw as f64).powf(-0.5))?,
        );
    }
    t.insert(
        "logit_scale".into(),
        Tensor::new((1.0f32 / 0.07).ln(), &dev)?.to_dtype(dtype)?,
    );
    candle_core::safetensors::save(&t, path)?;
    Ok(())
}

/// A random ModifiedResNet image tower under OpenAI's names (`visual.conv1`, `visual.bn1`, ...,
/// `visual.layerL.B.*`, `visual.attnpool.*`): He-initialised convolutions, BatchNorms near the
/// identity (positive running variances), the attention pool's projections N(0, C^-1/2).
fn resnet_tower(
    t: &mut HashMap<String, Tensor>,
    s: &RandomClipSpec,
    layers: [usize; 4],
    grid: usize,
    rng: &mut Rng,
    dtype: DType,
) -> Result<()> {
    let dev = Device::Cpu;
    let put = |t: &mut HashMap<String, Tensor>, name: String, v: Vec<f32>, shape: &[usize]| {
        Tensor::from_vec(v, shape, &dev)
            .and_then(|x| x.to_dtype(dtype))
            .map(|x| {
                t.insert(name, x);
            })
    };
    // A bias-free convolution and the BatchNorm after it.
    let conv_bn = |t: &mut HashMap<String, Tensor>,
                   conv: &str,
                   bn: &str,
                   c_in: usize,
                   c_out: usize,
                   k: usize,
                   rng: &mut Rng|
     -> Result<()> {
        let he = (2.0 / (c_in * k * k) as f64).sqrt();
        put(
            t,
            format!("{conv}.weight"),
            rng.normal_vec(c_out * c_in * k * k, he),
            &[c_out, c_in, k, k],
        )?;
        let noise = |rng: &mut Rng, std: f64| rng.normal_vec(c_out, std);
        let gamma = noise(rng, 0.1).into_iter().map(|x| 1.0 + x).collect();
        put(t, format!("{bn}.weight"), gamma, &[c_out])?;
        put(t, format!("{bn}.bias"), noise(rng, 0.05), &[c_out])?;
        put(t, format!("{bn}.running_mean"), noise(rng, 0.05), &[c_out])?;
        let var = noise(rng, 0.1).into_iter().map(|x| 1.0 + x.abs()).collect();
        put(t, format!("{bn}.running_var"), var, &[c_out])?;
        Ok(())
    };
    let width = s.vision_width;
    let half = width / 2;
    conv_bn(t, "visual.conv1", "visual.bn1", 3, half, 3, rng)?;
    conv_bn(t, "visual.conv2", "visual.bn2", half, half, 3, rng)?;
    conv_bn(t, "visual.conv3", "visual.bn3", half, width, 3, rng)?;
    let mut inplanes = width;
    for (stage, &count) in layers.iter().enumerate() {
        let planes = width << stage;
        for i in 0..count {
            let p = format!("visual.layer{}.{i}", stage + 1);
            let (c1, b1) = (format!("{p}.conv1"), format!("{p}.bn1"));
            conv_bn(t, &c1, &b1, inplanes, planes, 1, rng)?;
            let (c2, b2) = (format!("{p}.conv2"), format!("{p}.bn2"));
            conv_bn(t, &c2, &b2, planes, planes, 3, rng)?;
            let (c3, b3) = (format!("{p}.conv3"), format!("{p}.bn3"));
            conv_bn(t, &c3, &b3, planes, planes * 4, 1, rng)?;
            // OpenAI's ModifiedResNet: a shortcut where the stride (the first block of stages
            // 2-4) or the width (every stage's first block) changes.
            if i == 0 {
                let (d0, d1) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                conv_bn(t, &d0, &d1, inplanes, planes * 4, 1, rng)?;
            }
            inplanes = planes * 4;
        }
    }
    let c = width * 32;
    let std = (c as f64).powf(-0.5);
    let p = "visual.attnpool";
    put(
        t,
        format!("{p}.positional_embedding"),
        rng.normal_vec((grid * grid + 1) * c, std),
        &[grid * grid + 1, c],
    )?;
    for (name, out) in [
        ("q_proj", c),
        ("k_proj", c),
        ("v_proj", c),
        ("c_proj", s.embed_dim),
    ] {
        put(
            t,
            format!("{p}.{name}.weight"),
            rng.normal_vec(out * c, std),
            &[out, c],
        )?;
        put(
            t,
            format!("{p}.{name}.bias"),
            rng.normal_vec(out, 0.01),
            &[out],
        )?;
    }
    Ok(())
}
