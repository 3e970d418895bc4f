//! CLIP's ViT image encoder: patch embedding (a stride-p convolution without bias, computed as
//! one matmul over non-overlapping patches), class token, positions, ln_pre, blocks, ln_post on
//! the class token.
use super::config::ClipVisionConfig;
use super::nn::{EncoderLayer, LayerNorm};
use super::text::load_layers;
use super::weights::{Tower, Weights};
use crate::{Error, Result};
use candle_core::{Module, Tensor};

#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// Patch kernel flattened to (C*p*p, D) so patchify + project is one matmul.
    patch_weight_t: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_ln: LayerNorm,
    pub config: ClipVisionConfig,
}

impl VisionTransformer {
    pub fn load(w: &Weights, config: &ClipVisionConfig) -> Result<Self> {
        let d = config.hidden_size;
        let (c, p) = (config.num_channels, config.patch_size);
        let patch = w.top(
            "vision_model.embeddings.patch_embedding.weight",
            &[d, c, p, p],
        )?;
        let patch_weight_t = patch.reshape((d, c * p * p))?.t()?.contiguous()?;
        let class_embedding = w.top("vision_model.embeddings.class_embedding", &[d])?;
        let position_embedding = w.top(
            "vision_model.embeddings.position_embedding.weight",
            &[config.num_patches() + 1, d],
        )?;
        let eps = config.layer_norm_eps;
        let pre_ln = LayerNorm::new(
            w.top("vision_model.pre_layrnorm.weight", &[d])?,
            w.top("vision_model.pre_layrnorm.bias", &[d])?,
            eps,
        );
        let layers = load_layers(
            w,
            Tower::Vision,
            config.num_hidden_layers,
            d,
            config.intermediate_size,
            config.num_attention_heads,
            eps,
            config.activation(),
        )?;
        let post_ln = LayerNorm::new(
            w.top("vision_model.post_layernorm.weight", &[d])?,
            w.top("vision_model.post_layernorm.bias", &[d])?,
            eps,
        );
        Ok(Self {
            patch_weight_t,
            class_embedding,
            position_embedding,
            pre_ln,
            layers,
            post_ln,
            config: config.clone(),
        })
    }

    /// A copy of the tower's weights on another device.
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            patch_weight_t: self.patch_weight_t.to_device(device)?,
            class_embedding: self.class_embedding.to_device(device)?,
            position_embedding: self.position_embedding.to_device(device)?,
            pre_ln: self.pre_ln.to_device(device)?,
            layers: self
                .layers
                .iter()
                .map(|l| l.to_device(device))
                .collect::<candle_core::Result<_>>()?,
            post_ln: self.post_ln.to_device(device)?,
            config: self.config.clone(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Pixels (B, C, H, W), already normalised, to the pooled, post-layer-normed class token (B, D).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let (p, s) = (self.config.patch_size, self.config.image_size);
        if c != self.config.num_channels || h != s || w != s {
            return Err(Error::InvalidArgument(format!(
                "pixel tensor of shape ({b}, {c}, {h}, {w}); this model takes ({b}, {}, {s}, {s})",
                self.config.num_channels
            )));
        }
        let g = s / p;
        let d = self.hidden_size();
        // (B, C, g, p, g, p) -> (B, g, g, C, p, p): rows are patches in raster order, each
        // flattened in the conv kernel's (C, p, p) order.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let tokens = patches
            .matmul(&self.patch_weight_t)?
            .reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)?;
        // Without gradients on a GPU, when attention is not fused into one kernel (which pads
        // keys itself), pad the tokens to a multiple of 8 (197 -> 200 at ViT-B/16): the
        // attention matmuls then run on aligned tensor-core kernels, several times faster than
        // the unaligned ones. Padding keys are masked, and padding rows are never read. The CPU
        // has no such alignment cliff and would only do 1.5% more work.
        let tokens = g * g + 1;
        let pad = !x.track_op()
            && tokens % 8 != 0
            && x.device().is_cuda()
            && !self.layers.first().is_some_and(|l| l.attn.fuses(&x));
        let (x, valid) = if pad {
            (x.pad_with_zeros(1, 0, 8 - tokens % 8)?, Some(tokens))
        } else {
            (x, None)
        };
        let mut x = self.pre_ln.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, None, valid)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.post_ln.forward(&cls)?)
    }
}
