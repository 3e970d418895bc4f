//! Random CLIP checkpoints with OpenAI parameter names, at any shape: used by tests (ViT-B/32,
//! B/16, L/14 shapes must load) and by benchmarks (speed at real shapes without real weights).
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

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "ViT-B/32" => Some(Self::VIT_B_32),
            "ViT-B/16" => Some(Self::VIT_B_16),
            "ViT-L/14" => Some(Self::VIT_L_14),
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
    t.insert(
        "logit_scale".into(),
        Tensor::new((1.0f32 / 0.07).ln(), &dev)?.to_dtype(dtype)?,
    );
    candle_core::safetensors::save(&t, path)?;
    Ok(())
}
