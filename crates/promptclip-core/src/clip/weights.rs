//! Reading CLIP weights from safetensors, under either naming scheme:
//! Hugging Face's (`text_model.encoder.layers.N.self_attn.q_proj.weight`, ...) or OpenAI's own
//! (`transformer.resblocks.N.attn.in_proj_weight`, `visual.*`), which is what the official
//! prompt-learning code loads. Model code asks for tensors by role; this file maps roles to names.
use super::config::ResNetShape;
use super::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use crate::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    HuggingFace,
    OpenAi,
}

/// The image towers of OpenAI's CLIP.
enum ImageTower {
    Vit,
    ResNet,
}

/// Tensors every OpenAI-named ViT image tower has (its patch embedding first).
const VIT_MARKERS: [&str; 4] = [
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
];

/// Tensors every OpenAI-named ModifiedResNet image tower has.
const RESNET_MARKERS: [&str; 4] = [
    "visual.conv1.weight",
    "visual.bn1.running_var",
    "visual.layer1.0.conv1.weight",
    "visual.attnpool.positional_embedding",
];

/// The two towers share block structure; only the name prefixes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    Text,
    Vision,
}

pub struct Weights {
    st: MmapedSafetensors,
    path: PathBuf,
    pub naming: Naming,
    device: Device,
    dtype: DType,
}

impl Weights {
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::FileNotFound(path.to_path_buf()));
        }
        crate::files::refuse_pickle(path, &crate::files::read_head(path)?)?;
        // Safety: the file is memory-mapped read-only; like every mmap-based loader we assume it
        // is not truncated by another process while the model is being built.
        let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
            Error::bad_config(path, format!("not a readable safetensors file: {e}"))
        })?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let has = |n: &str| names.iter().any(|x| x == n);
        let naming = if has("text_model.embeddings.token_embedding.weight") {
            Naming::HuggingFace
        } else if has("token_embedding.weight")
            && has("transformer.resblocks.0.attn.in_proj_weight")
        {
            Naming::OpenAi
        } else {
            return Err(Error::Unsupported(format!(
                "{}: neither Hugging Face CLIP (`text_model.embeddings.token_embedding.weight`) nor OpenAI CLIP (`token_embedding.weight`, `transformer.resblocks.0.attn.in_proj_weight`) tensor names found",
                path.display()
            )));
        };
        Ok(Self {
            st,
            path: path.to_path_buf(),
            naming,
            device: device.clone(),
            dtype,
        })
    }

    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.st.get(name).ok().map(|v| v.shape().to_vec())
    }

    fn require_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shape_of(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            path: self.path.clone(),
        })
    }

    /// Load a tensor by its file name, checking its shape, its dtype (floating point: CLIP has no
    /// integer weights, and integers relabelled as weights would only compute garbage) and that
    /// its values are finite, converted to the compute dtype.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, self.dtype)
    }

    /// `get`, converted to `dtype` instead of the compute dtype.
    pub fn get_as(&self, name: &str, expected: &[usize], to: DType) -> Result<Tensor> {
        let actual = self.require_shape(name)?;
        if actual != expected {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                path: self.path.clone(),
                expected: expected.to_vec(),
                actual,
            });
        }
        let dtype = self
            .st
            .get(name)
            .map_err(|e| Error::bad_config(&self.path, format!("tensor `{name}`: {e}")))?
            .dtype();
        if !crate::files::is_float_dtype(dtype) {
            return Err(crate::files::not_float(&self.path, name, dtype));
        }
        let t = self.st.load(name, &self.device)?;
        if !finite_sum(&t)? {
            return Err(Error::NonFiniteParams(format!(
                "{}: tensor `{name}` holds NaN or infinite values; the weights file is damaged",
                self.path.display()
            )));
        }
        Ok(t.to_dtype(to)?)
    }

    /// The compute dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn count_layers(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|i| self.shape_of(&format!("{prefix}{i}{suffix}")).is_some())
            .count()
    }

    /// Infer the configuration of an OpenAI-named state dict from tensor shapes.
    pub fn infer_openai_config(&self) -> Result<ClipConfig> {
        let emb = self.require_shape("token_embedding.weight")?;
        let pos = self.require_shape("positional_embedding")?;
        let proj = self.require_shape("text_projection")?;
        let fc = self.require_shape("transformer.resblocks.0.mlp.c_fc.weight")?;
        let bad = |msg: String| Error::bad_config(&self.path, msg);
        if emb.len() != 2 || pos.len() != 2 || proj.len() != 2 {
            return Err(bad(
                "unexpected tensor ranks for an OpenAI CLIP state dict".into()
            ));
        }
        let width = emb[1];
        // OpenAI's build_model: heads = width / 64 for both towers.
        let heads = |w: usize, which: &str| {
            if !w.is_multiple_of(64) {
                Err(bad(format!(
                    "{which} width {w} is not a multiple of 64 (OpenAI CLIP uses 64-dim heads)"
                )))
            } else {
                Ok(w / 64)
            }
        };
        let vision_config = match self.image_tower()? {
            ImageTower::Vit => self.infer_vit()?,
            ImageTower::ResNet => self.infer_resnet()?,
        };
        if vision_config.resnet.is_none() {
            heads(vision_config.hidden_size, "vision")?;
        }
        let config = ClipConfig {
            text_config: ClipTextConfig {
                vocab_size: emb[0],
                hidden_size: width,
                intermediate_size: fc[0],
                num_hidden_layers: self
                    .count_layers("transformer.resblocks.", ".attn.in_proj_weight"),
                num_attention_heads: heads(width, "text")?,
                max_position_embeddings: pos[0],
                hidden_act: "quick_gelu".into(),
                layer_norm_eps: 1e-5,
            },
            vision_config,
            projection_dim: proj[1],
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Which image tower an OpenAI-named state dict holds, by the tensors that tell them apart.
    fn image_tower(&self) -> Result<ImageTower> {
        let has = |n: &str| self.shape_of(n).is_some();
        if has(VIT_MARKERS[1]) && has(VIT_MARKERS[2]) && has(VIT_MARKERS[3]) {
            Ok(ImageTower::Vit)
        } else if RESNET_MARKERS.iter().all(|n| has(n)) {
            Ok(ImageTower::ResNet)
        } else {
            let list = |names: &[&str]| {
                names
                    .iter()
                    .map(|n| format!("`{n}`{}", if has(n) { "" } else { " (missing)" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(Error::Unsupported(format!(
                "{}: the image tower is neither a ViT, which has {}, nor a ModifiedResNet (RN50, RN101, RN50x4, ...), which has {}",
                self.path.display(),
                list(&VIT_MARKERS),
                list(&RESNET_MARKERS)
            )))
        }
    }

    fn infer_vit(&self) -> Result<ClipVisionConfig> {
        let bad = |msg: String| Error::bad_config(&self.path, msg);
        let conv = self.require_shape("visual.conv1.weight")?;
        let vpos = self.require_shape("visual.positional_embedding")?;
        let vfc = self.require_shape("visual.transformer.resblocks.0.mlp.c_fc.weight")?;
        if conv.len() != 4 || vpos.len() != 2 || vfc.len() != 2 {
            return Err(bad(
                "unexpected tensor ranks for an OpenAI CLIP ViT image tower".into(),
            ));
        }
        let vision_width = conv[0];
        let patch = conv[2];
        let grid = (vpos[0].saturating_sub(1) as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid + 1 != vpos[0] {
            return Err(bad(format!(
                "visual.positional_embedding has {} rows, not a square grid + 1",
                vpos[0]
            )));
        }
        Ok(ClipVisionConfig {
            hidden_size: vision_width,
            intermediate_size: vfc[0],
            num_hidden_layers: self
                .count_layers("visual.transformer.resblocks.", ".attn.in_proj_weight"),
            num_attention_heads: vision_width / 64,
            num_channels: conv[1],
            image_size: grid * patch,
            patch_size: patch,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            resnet: None,
        })
    }

    /// A ModifiedResNet's shape, as OpenAI's build_model reads it: blocks per stage counted, the
    /// width from the first block's conv1, the resolution from the attention pool's positions
    /// (a square grid, 32 pixels a cell, plus the mean token).
    fn infer_resnet(&self) -> Result<ClipVisionConfig> {
        let bad = |msg: String| Error::bad_config(&self.path, msg);
        let mut layers = [0; 4];
        for (i, n) in layers.iter_mut().enumerate() {
            *n = self.count_layers(&format!("visual.layer{}.", i + 1), ".conv1.weight");
            if *n == 0 {
                return Err(Error::MissingTensor {
                    name: format!("visual.layer{}.0.conv1.weight", i + 1),
                    path: self.path.clone(),
                });
            }
        }
        let conv = self.require_shape("visual.layer1.0.conv1.weight")?;
        let stem = self.require_shape("visual.conv1.weight")?;
        let pos = self.require_shape("visual.attnpool.positional_embedding")?;
        if conv.len() != 4 || stem.len() != 4 || pos.len() != 2 {
            return Err(bad(
                "unexpected tensor ranks for an OpenAI CLIP ModifiedResNet image tower".into(),
            ));
        }
        let shape = ResNetShape {
            layers,
            width: conv[0],
        };
        let grid = ((pos[0].max(1) - 1) as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid + 1 != pos[0] {
            return Err(bad(format!(
                "visual.attnpool.positional_embedding has {} rows, not a square grid + 1",
                pos[0]
            )));
        }
        if shape.width < 2
            || !shape.width.is_multiple_of(2)
            || !shape.pool_width().is_multiple_of(64)
        {
            return Err(bad(format!(
                "visual.layer1.0.conv1.weight gives a ResNet width of {}; OpenAI's ModifiedResNet needs an even width whose 32 times is a multiple of 64 (its 64-dim attention heads)",
                shape.width
            )));
        }
        Ok(ClipVisionConfig {
            hidden_size: shape.pool_width(),
            intermediate_size: 0,
            num_hidden_layers: layers.iter().sum(),
            num_attention_heads: shape.heads(),
            num_channels: stem[1],
            image_size: grid * 32,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            resnet: Some(shape),
        })
    }

    // ---- role-based accessors used by the model builders ----

    fn block_prefix(&self, tower: Tower, layer: usize) -> String {
        match (self.naming, tower) {
            (Naming::HuggingFace, Tower::Text) => format!("text_model.encoder.layers.{layer}."),
            (Naming::HuggingFace, Tower::Vision) => format!("vision_model.encoder.layers.{layer}."),
            (Naming::OpenAi, Tower::Text) => format!("transformer.resblocks.{layer}."),
            (Naming::OpenAi, Tower::Vision) => format!("visual.transformer.resblocks.{layer}."),
        }
    }

    /// Fused QKV projection of a block: weight (3d, d) and bias (3d), in q, k, v order.
    pub fn block_qkv(&self, tower: Tower, layer: usize, d: usize) -> Result<(Tensor, Tensor)> {
        let p = self.block_prefix(tower, layer);
        match self.naming {
            Naming::OpenAi => Ok((
                self.get(&format!("{p}attn.in_proj_weight"), &[3 * d, d])?,
                self.get(&format!("{p}attn.in_proj_bias"), &[3 * d])?,
            )),
            Naming::HuggingFace => {
                let mut ws = Vec::with_capacity(3);
                let mut bs = Vec::with_capacity(3);
                for n in ["q_proj", "k_proj", "v_proj"] {
                    ws.push(self.get(&format!("{p}self_attn.{n}.weight"), &[d, d])?);
                    bs.push(self.get(&format!("{p}self_attn.{n}.bias"), &[d])?);
                }
                Ok((Tensor::cat(&ws, 0)?, Tensor::cat(&bs, 0)?))
            }
        }
    }

    /// Weight and bias of a named linear/norm inside a block, by its Hugging Face role name
    /// (`self_attn.out_proj`, `layer_norm1`, `layer_norm2`, `mlp.fc1`, `mlp.fc2`).
    pub fn block_param(
        &self,
        tower: Tower,
        layer: usize,
        role: &str,
        wshape: &[usize],
        bshape: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        let p = self.block_prefix(tower, layer);
        let name = match self.naming {
            Naming::HuggingFace => role.to_string(),
            Naming::OpenAi => match role {
                "self_attn.out_proj" => "attn.out_proj".into(),
                "layer_norm1" => "ln_1".into(),
                "layer_norm2" => "ln_2".into(),
                "mlp.fc1" => "mlp.c_fc".into(),
                "mlp.fc2" => "mlp.c_proj".into(),
                other => return Err(Error::Internal(format!("unknown block role {other}"))),
            },
        };
        Ok((
            self.get(&format!("{p}{name}.weight"), wshape)?,
            self.get(&format!("{p}{name}.bias"), bshape)?,
        ))
    }

    /// Top-level tensors by Hugging Face name. OpenAI stores projections as (in, out) for `x @ P`;
    /// they are transposed here to PyTorch's Linear layout (out, in).
    pub fn top(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.naming == Naming::HuggingFace {
            return self.get(hf_name, shape);
        }
        let transposed = |name: &str| -> Result<Tensor> {
            Ok(self.get(name, &[shape[1], shape[0]])?.t()?.contiguous()?)
        };
        match hf_name {
            "text_model.embeddings.token_embedding.weight" => {
                self.get("token_embedding.weight", shape)
            }
            "text_model.embeddings.position_embedding.weight" => {
                self.get("positional_embedding", shape)
            }
            "text_model.final_layer_norm.weight" => self.get("ln_final.weight", shape),
            "text_model.final_layer_norm.bias" => self.get("ln_final.bias", shape),
            "text_projection.weight" => transposed("text_projection"),
            "vision_model.embeddings.class_embedding" => self.get("visual.class_embedding", shape),
            "vision_model.embeddings.patch_embedding.weight" => {
                self.get("visual.conv1.weight", shape)
            }
            "vision_model.embeddings.position_embedding.weight" => {
                self.get("visual.positional_embedding", shape)
            }
            "vision_model.pre_layrnorm.weight" => self.get("visual.ln_pre.weight", shape),
            "vision_model.pre_layrnorm.bias" => self.get("visual.ln_pre.bias", shape),
            "vision_model.post_layernorm.weight" => self.get("visual.ln_post.weight", shape),
            "vision_model.post_layernorm.bias" => self.get("visual.ln_post.bias", shape),
            "visual_projection.weight" => transposed("visual.proj"),
            "logit_scale" => self.get("logit_scale", shape),
            other => Err(Error::Internal(format!("no OpenAI name for {other}"))),
        }
    }

    /// `logit_scale` is a 0-d tensor in most files, (1,) in some: accept both.
    pub fn logit_scale(&self) -> Result<Tensor> {
        let shape = self.require_shape("logit_scale")?;
        let t = self.top("logit_scale", &shape)?;
        if t.elem_count() != 1 {
            return Err(Error::ShapeMismatch {
                name: "logit_scale".into(),
                path: self.path.clone(),
                expected: vec![],
                actual: shape,
            });
        }
        Ok(t.flatten_all()?.get(0)?)
    }
}

/// Whether every value of a weight tensor is finite, in one pass: the sum of the values (in f32
/// at least, where no real weight tensor's sum comes near overflowing) is finite exactly when
/// none is NaN or infinite, barring such an overflow, which the exact check then rules out.
/// Costs one read of the weights at load; see the tests (robust_options.rs) for figures.
fn finite_sum(t: &Tensor) -> Result<bool> {
    let wide = match t.dtype() {
        DType::F64 | DType::F32 => t.clone(),
        _ => t.to_dtype(DType::F32)?,
    };
    let sum = wide.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(sum.is_finite() || super::is_finite(&wide)?)
}
