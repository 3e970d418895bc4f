//! CLIP: both towers, their projections and the logit scale, loaded from a Hugging Face folder or
//! an OpenAI-named safetensors file.
pub mod config;
pub mod lora;
pub mod lora_blocks;
pub mod nn;
pub mod random;
pub mod resnet;
pub mod text;
pub mod vision;
pub mod weights;

use crate::preprocess::ImageConfig;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
pub use config::ResNetShape;
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use lora::{BlockLora, BlockLoraGrads, LowRank, TowerLora};
use nn::Linear;
pub use resnet::ModifiedResNet;
use std::path::{Path, PathBuf};
pub use text::{TextTape, TextTransformer};
pub use vision::{VisionPromptGrads, VisionPrompts, VisionTape, VisionTransformer};
use weights::{Naming, Weights};

#[derive(Debug, Clone)]
pub struct Clip {
    pub text: TextTransformer,
    pub vision: VisionTower,
    text_projection: Linear,
    /// log of the temperature's inverse; logits use `logit_scale.exp()` (~100 in real models).
    pub logit_scale: f32,
    pub config: ClipConfig,
    pub tokenizer: ClipTokenizer,
    pub image_config: ImageConfig,
    pub naming: Naming,
    /// The weights file the model was read from (recorded in prompt checkpoints).
    pub source: PathBuf,
    pub device: Device,
    /// Compute dtype of the weights and activations.
    pub dtype: DType,
}

/// Where the pieces of a checkpoint live.
struct CheckpointFiles {
    weights: PathBuf,
    dir: PathBuf,
}

fn locate(path: &Path) -> Result<CheckpointFiles> {
    if !path.exists() {
        return Err(Error::FileNotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        let st = path.join("model.safetensors");
        if st.is_file() {
            return Ok(CheckpointFiles {
                weights: st,
                dir: path.to_path_buf(),
            });
        }
        if path.join("pytorch_model.bin").is_file() {
            return Err(Error::Unsupported(format!(
                "{}: only safetensors weights are read; convert pytorch_model.bin to model.safetensors",
                path.display()
            )));
        }
        return Err(Error::FileNotFound(st));
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(CheckpointFiles {
        weights: path.to_path_buf(),
        dir,
    })
}

impl Clip {
    /// Load from a Hugging Face CLIP folder (config.json, model.safetensors, tokenizer files,
    /// optional preprocessor_config.json) or from one safetensors file with OpenAI's parameter
    /// names (configuration inferred from shapes, CLIP's bundled vocabulary).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(path, device, DType::F32)
    }

    /// Load with another compute dtype (F64 for finite-difference checks, F16/BF16 on GPUs).
    pub fn load_with_dtype(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let files = locate(path)?;
        let w = Weights::open(&files.weights, device, dtype)?;
        let config = match w.naming {
            Naming::HuggingFace => {
                let cfg = files.dir.join("config.json");
                if !cfg.is_file() {
                    return Err(Error::FileNotFound(cfg));
                }
                ClipConfig::from_hf_file(&cfg)?
            }
            Naming::OpenAi => w.infer_openai_config()?,
        };
        let text = TextTransformer::load(&w, &config.text_config)?;
        let e = config.projection_dim;
        let vision = VisionTower::load(&w, &config.vision_config, e)?;
        let text_projection = Linear::new(
            w.top(
                "text_projection.weight",
                &[e, config.text_config.hidden_size],
            )?,
            None,
        )?;
        let logit_scale = w.logit_scale()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        // exp(logit_scale) multiplies every logit: beyond ~88 it overflows f32 (real models clamp
        // it at ln 100 = 4.6).
        if !(logit_scale.is_finite() && logit_scale.exp().is_finite()) {
            return Err(Error::NonFiniteParams(format!(
                "{}: tensor `logit_scale` is {logit_scale}, whose exp (the logits' scale) is not finite",
                files.weights.display()
            )));
        }
        let tokenizer = ClipTokenizer::from_dir_or_bundled(
            &files.dir,
            config.text_config.max_position_embeddings,
        )?;
        if tokenizer.vocab_size() > config.text_config.vocab_size {
            return Err(Error::bad_config(
                &files.weights,
                format!(
                    "tokenizer has {} tokens but the token embedding only {}",
                    tokenizer.vocab_size(),
                    config.text_config.vocab_size
                ),
            ));
        }
        let image_config = ImageConfig::from_dir(&files.dir, config.vision_config.image_size)?;
        Ok(Self {
            text,
            vision,
            text_projection,
            logit_scale,
            config,
            tokenizer,
            image_config,
            naming: w.naming,
            source: files.weights,
            device: device.clone(),
            dtype,
        })
    }

    /// The dtype of the small computations after the encoders (normalisation, logits, loss):
    /// f32 whatever the weights' dtype, as PyTorch's autocast does, or f64 for an f64 model.
    pub fn head_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Image features (B, E), not normalised: the image tower's pooled output, projected.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// The ViT image tower and its projection, for the methods that put tokens inside it.
    fn vit(&self) -> Result<(&VisionTransformer, &Linear)> {
        match &self.vision {
            VisionTower::Vit {
                encoder,
                projection,
            } => Ok((encoder, projection)),
            VisionTower::ResNet(_) => Err(Error::Unsupported(
                "this CLIP's image tower is a ResNet, which has no tokens to prompt".into(),
            )),
        }
    }

    /// Whether the image tower is a ViT (the towers that take prompts inside).
    pub fn has_vit(&self) -> bool {
        matches!(self.vision, VisionTower::Vit { .. })
    }

    /// Image features (B, E), not normalised, with learned tokens inside the image tower (a ViT).
    pub fn encode_image_prompted(
        &self,
        pixels: &Tensor,
        prompts: VisionPrompts<'_>,
    ) -> Result<Tensor> {
        let (encoder, projection) = self.vit()?;
        Ok(projection.forward(&encoder.forward_prompted(pixels, Some(prompts))?)?)
    }

    /// Image features (B, E) through the image tower's training pass with `prompts` (see
    /// `VisionTransformer::forward_train`), and its tape for `image_features_backward`.
    pub fn image_features_train(
        &self,
        pixels: &Tensor,
        prompts: VisionPrompts<'_>,
    ) -> Result<(Tensor, VisionTape<'_>)> {
        let (encoder, projection) = self.vit()?;
        let (pooled, tape) = encoder.forward_train(pixels, prompts)?;
        Ok((projection.forward(&pooled)?, tape))
    }

    /// Bytes one image's `image_features_train` tape keeps with `prompts` tokens appended: per
    /// block its input, queries, keys, values, the block's midpoint and fc1's output (T x width
    /// each, fc1's T x intermediate) and the attention probabilities (heads x T x T), in the
    /// model's dtype. What a memory budget divides to chunk a batch.
    pub fn image_tape_bytes(&self, prompts: usize) -> usize {
        let v = &self.config.vision_config;
        let t = v.num_patches() + 1 + prompts;
        let per_block =
            t * (6 * v.hidden_size + v.intermediate_size) + v.num_attention_heads * t * t;
        v.num_hidden_layers * per_block * self.dtype.size_in_bytes()
    }

    /// The prompts' gradients (summed over the batch) for that of the features of
    /// `image_features_train`.
    pub fn image_features_backward(
        &self,
        tape: &VisionTape<'_>,
        d_features: &Tensor,
    ) -> Result<VisionPromptGrads> {
        let (_, projection) = self.vit()?;
        tape.backward(&projection.backward_input(&d_features.to_dtype(self.dtype)?)?)
    }

    /// Image features (B, E) through the image tower's training pass with low-rank updates of its
    /// blocks (see `VisionTransformer::forward_train_lora`), and its tape for `image_lora_backward`.
    pub fn image_features_train_lora(
        &self,
        pixels: &Tensor,
        lora: &TowerLora,
    ) -> Result<(Tensor, VisionTape<'_>)> {
        let (encoder, projection) = self.vit()?;
        let (pooled, tape) = encoder.forward_train_lora(pixels, None, Some(lora))?;
        Ok((projection.forward(&pooled)?, tape))
    }

    /// The low-rank factors' gradients (one entry per image block, summed over the batch) for
    /// that of the features of `image_features_train_lora`.
    pub fn image_lora_backward(
        &self,
        tape: &VisionTape<'_>,
        d_features: &Tensor,
    ) -> Result<Vec<BlockLoraGrads>> {
        let (_, projection) = self.vit()?;
        Ok(tape
            .backward_all(&projection.backward_input(&d_features.to_dtype(self.dtype)?)?)?
            .1)
    }

    /// Text features (N, E) of token embeddings (N, T, d) through the text tower's training pass
    /// with low-rank updates of its blocks, and its tape for `text_lora_backward`.
    pub fn text_features_train_lora(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        lora: &TowerLora,
    ) -> Result<(Tensor, TextTape<'_>)> {
        let align = if embeds.device().is_cuda() { 8 } else { 1 };
        let n = eot.len();
        let (pooled, tape) =
            self.text
                .forward_train_lora(embeds, eot, 0, n.max(1), align, &[], Some(lora))?;
        Ok((self.text_projection.forward(&pooled)?, tape))
    }

    /// The low-rank factors' gradients (one entry per text block) for that of the features of
    /// `text_features_train_lora`.
    pub fn text_lora_backward(
        &self,
        tape: &TextTape<'_>,
        d_features: &Tensor,
    ) -> Result<Vec<BlockLoraGrads>> {
        Ok(tape
            .backward_all(
                &self
                    .text_projection
                    .backward_input(&d_features.to_dtype(self.dtype)?)?,
            )?
            .lora)
    }

    /// This CLIP with low-rank updates folded into copies of the adapted weights of either tower
    /// (the model itself is unchanged): a LoRA learner's predictions at the frozen model's cost.
    pub fn with_lora(&self, text: Option<&TowerLora>, vision: Option<&TowerLora>) -> Result<Clip> {
        let mut out = self.clone();
        if let Some(l) = text {
            out.text = self.text.merged(l)?;
        }
        if let Some(l) = vision {
            let (encoder, projection) = self.vit()?;
            out.vision = VisionTower::Vit {
                encoder: encoder.merged(l)?,
                projection: projection.clone(),
            };
        }
        Ok(out)
    }

    /// The image side on `device` (a copy of its weights when that is another device), with the
    /// preprocessing that goes with it: what the training input pipeline encodes crops with.
    pub fn image_encoder(&self, device: &Device) -> Result<ImageEncoder> {
        let same = device.same_device(&self.device);
        if !same {
            // The copy runs on the other device's stream: the weights must be in place first.
            self.device.synchronize()?;
        }
        Ok(ImageEncoder {
            vision: if same {
                self.vision.clone()
            } else {
                self.vision.to_device(device)?
            },
            image_config: self.image_config.clone(),
            device: device.clone(),
            dtype: self.dtype,
        })
    }

    /// Text features (B, E) from token embeddings and EOT positions (differentiable).
    pub fn encode_text_embeds(&self, embeds: &Tensor, eot: &[usize]) -> Result<Tensor> {
        Ok(self
            .text_projection
            .forward(&self.text.forward_embeds(embeds, eot)?)?)
    }

    /// Text features of sequences sharing their first `shared` tokens within groups (see
    /// `TextTransformer::forward_embeds_shared`); equal to `encode_text_embeds`.
    pub fn encode_text_embeds_shared(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group: &[usize],
    ) -> Result<Tensor> {
        Ok(self.text_projection.forward(
            &self
                .text
                .forward_embeds_shared(embeds, eot, shared, group)?,
        )?)
    }

    /// Text features (N, E) through the text encoder's training pass (see
    /// `TextTransformer::forward_train`), and its tape for `text_features_backward`.
    pub fn text_features_train(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
    ) -> Result<(Tensor, TextTape<'_>)> {
        let (pooled, tape) = self.text.forward_train(embeds, eot, shared, group_size)?;
        Ok((self.text_projection.forward(&pooled)?, tape))
    }

    /// Text features (B, E) with deep prompts in the text tower (see
    /// `TextTransformer::forward_embeds_prompted`; no sharing of prefixes).
    pub fn encode_text_embeds_prompted(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        deep: &[Tensor],
    ) -> Result<Tensor> {
        Ok(self
            .text_projection
            .forward(&self.text.forward_embeds_prompted(embeds, eot, deep)?)?)
    }

    /// `text_features_train` with deep prompts in the text tower (see
    /// `TextTransformer::forward_train_deep`); `text_features_backward_deep` gives their gradients.
    pub fn text_features_train_deep(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
        deep: &[Tensor],
    ) -> Result<(Tensor, TextTape<'_>)> {
        let align = if embeds.device().is_cuda() { 8 } else { 1 };
        let (pooled, tape) = self
            .text
            .forward_train_deep(embeds, eot, shared, group_size, align, deep)?;
        Ok((self.text_projection.forward(&pooled)?, tape))
    }

    /// The gradients of the embeddings and of the deep prompts given to
    /// `text_features_train_deep`, for that of its features.
    pub fn text_features_backward_deep(
        &self,
        tape: &TextTape<'_>,
        d_features: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        tape.backward_deep(
            &self
                .text_projection
                .backward_input(&d_features.to_dtype(self.dtype)?)?,
        )
    }

    /// The gradient of the embeddings given to `text_features_train`, for that of its features.
    pub fn text_features_backward(
        &self,
        tape: &TextTape<'_>,
        d_features: &Tensor,
    ) -> Result<Tensor> {
        tape.backward(
            &self
                .text_projection
                .backward_input(&d_features.to_dtype(self.dtype)?)?,
        )
    }

    /// Text features (B, E) from token ids (B, T) and EOT positions.
    pub fn encode_text_ids(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.encode_text_embeds(&self.text.embed_tokens(ids)?, eot)
    }

    /// Tokenize and encode strings, in chunks so memory stays bounded for long class lists.
    pub fn encode_texts(&self, texts: &[String]) -> Result<Tensor> {
        const CHUNK: usize = 256;
        if texts.is_empty() {
            return Err(Error::InvalidArgument("no texts to encode".into()));
        }
        let mut parts = Vec::new();
        for chunk in texts.chunks(CHUNK) {
            let batch = self.tokenizer.encode_batch(chunk)?;
            let ids = batch.ids_tensor(&self.device)?;
            parts.push(self.encode_text_ids(&ids, &batch.eot)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// CLIP logits: exp(logit_scale) * normalize(image) @ normalize(text)^T, shape (B, K).
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(image_features)?;
        let txt = l2_normalize(text_features)?;
        Ok((img.matmul(&txt.t()?)? * (self.logit_scale as f64).exp())?)
    }
}

/// CLIP's image tower with its projection to the joint embedding.
#[derive(Debug, Clone)]
pub enum VisionTower {
    /// A ViT's pooled class token, then the visual projection.
    Vit {
        encoder: VisionTransformer,
        projection: Linear,
    },
    /// A ModifiedResNet, whose attention pool projects to the joint embedding itself.
    ResNet(ModifiedResNet),
}

impl VisionTower {
    fn load(w: &Weights, config: &ClipVisionConfig, embed_dim: usize) -> Result<Self> {
        if let Some(shape) = config.resnet {
            return Ok(Self::ResNet(ModifiedResNet::load(
                w,
                shape,
                config.image_size,
                config.num_channels,
                embed_dim,
            )?));
        }
        Ok(Self::Vit {
            encoder: VisionTransformer::load(w, config)?,
            projection: Linear::new(
                w.top("visual_projection.weight", &[embed_dim, config.hidden_size])?,
                None,
            )?,
        })
    }

    /// Pixels (B, C, S, S), already normalised, to image features (B, E), not normalised.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        match self {
            Self::Vit {
                encoder,
                projection,
            } => Ok(projection.forward(&encoder.forward(pixels)?)?),
            Self::ResNet(resnet) => resnet.forward(pixels),
        }
    }

    /// A copy of the tower's weights on another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(match self {
            Self::Vit {
                encoder,
                projection,
            } => Self::Vit {
                encoder: encoder.to_device(device)?,
                projection: projection.to_device(device)?,
            },
            Self::ResNet(resnet) => Self::ResNet(resnet.to_device(device)?),
        })
    }
}

/// CLIP's image tower and projection on their own (see `Clip::image_encoder`).
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    vision: VisionTower,
    pub image_config: ImageConfig,
    pub device: Device,
    pub dtype: DType,
}

impl ImageEncoder {
    /// Features (B, E) of 8-bit crops (B, S, S, 3), normalised on this encoder's device.
    pub fn encode_crops(&self, crops: Tensor) -> Result<Tensor> {
        self.encode_pixels(&self.pixels_of_crops(crops)?)
    }

    /// The model's input (B, 3, S, S) in its dtype, on this encoder's device, from 8-bit crops
    /// (B, S, S, 3): the mean and std normalisation of its preprocessing.
    pub fn pixels_of_crops(&self, crops: Tensor) -> Result<Tensor> {
        let c = &self.image_config;
        Ok(crate::kernels::normalize_pixels(
            &crops.to_device(&self.device)?,
            c.mean,
            c.std,
            self.dtype,
        )?)
    }

    /// Features (B, E) of preprocessed pixels (B, 3, S, S).
    pub fn encode_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixels)
    }
}

/// Whether every element is finite: |x| <= MAX holds for every finite x and for neither NaN nor
/// the infinities (compared in f32, or in f64 for f64 tensors, so half-precision infinities show).
pub fn is_finite(t: &Tensor) -> Result<bool> {
    let (t, max) = match t.dtype() {
        DType::F64 => (t.clone(), f64::MAX),
        _ => (t.to_dtype(DType::F32)?, f32::MAX as f64),
    };
    let ok = t
        .abs()?
        .le(max)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(ok as usize == t.elem_count())
}

/// Divide each row by its L2 norm (differentiable).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}
