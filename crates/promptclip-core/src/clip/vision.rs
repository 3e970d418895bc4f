//! CLIP's ViT image encoder: patch embedding (a stride-p convolution without bias, computed as
//! one matmul over non-overlapping patches), class token, positions, ln_pre, blocks, ln_post on
//! the class token; optionally with learned prompt tokens inside (`VisionPrompts`), and a
//! training pass that gives their gradients (`forward_train`, `VisionTape`).
use super::config::ClipVisionConfig;
use super::lora::{BlockLoraGrads, TowerLora};
use super::nn::{prompt_rows_sum, replace_rows, EncoderLayer, LayerNorm, StreamTape};
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
        self.forward_prompted(pixels, None)
    }

    /// The tokens (B, 1 + g², D) before ln_pre: the class token and the patches, with positions.
    fn tokens(&self, pixels: &Tensor) -> Result<Tensor> {
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
        Ok(Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.position_embedding)?)
    }

    /// `forward` with learned tokens inside the tower (see [`VisionPrompts`]).
    pub fn forward_prompted(
        &self,
        pixels: &Tensor,
        prompts: Option<VisionPrompts<'_>>,
    ) -> Result<Tensor> {
        let x = self.tokens(pixels)?;
        // The prompts' positions: after the class token and the patches.
        let at = x.dim(1)?;
        let x = match prompts {
            Some(p) => {
                p.check(self)?;
                append(&x, p.input)?
            }
            None => x,
        };
        // Without gradients on a GPU, when attention is not fused into one kernel (which pads
        // keys itself), pad the tokens to a multiple of 8 (197 -> 200 at ViT-B/16): the
        // attention matmuls then run on aligned tensor-core kernels, several times faster than
        // the unaligned ones. Padding keys are masked, and padding rows are never read. The CPU
        // has no such alignment cliff and would only do 1.5% more work.
        let tokens = x.dim(1)?;
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
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(deep) = prompts.and_then(|p| p.deep_at(i)) {
                x = replace_rows(&x, at, deep)?;
            }
            x = layer.forward(&x, None, valid)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.post_ln.forward(&cls)?)
    }

    /// The tower's training pass with prompts: the pooled class token (B, D), as
    /// `forward_prompted` computes it, and the tape for the prompts' gradients. It keeps what the
    /// backward needs per block, as the text tower's `forward_train` does, and nothing of the
    /// frozen weights' gradients.
    pub fn forward_train(
        &self,
        pixels: &Tensor,
        prompts: VisionPrompts<'_>,
    ) -> Result<(Tensor, VisionTape<'_>)> {
        self.forward_train_lora(pixels, Some(prompts), None)
    }

    /// The training pass with prompts, low-rank updates of the blocks' projections (`lora`), or
    /// both; the tape's `backward_all` gives the gradients of each.
    pub fn forward_train_lora(
        &self,
        pixels: &Tensor,
        prompts: Option<VisionPrompts<'_>>,
        lora: Option<&TowerLora>,
    ) -> Result<(Tensor, VisionTape<'_>)> {
        if let Some(p) = &prompts {
            p.check(self)?;
        }
        if let Some(l) = lora {
            super::lora::check_blocks(self.layers.len(), l, "image")?;
        }
        let x = self.tokens(&pixels.detach())?;
        let at = x.dim(1)?;
        let input = match &prompts {
            Some(p) => append(&x, &p.input.detach())?,
            None => x,
        };
        let mut s = self.pre_ln.forward(&input)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(deep) = prompts.as_ref().and_then(|p| p.deep_at(i)) {
                s = replace_rows(&s, at, &deep.detach())?;
            }
            let pass = lora.and_then(|l| l.pass(i, 0));
            let (q, k, v, mut block_lora) = layer.qkv_train_lora(&s, pass)?;
            let (merged, probs) = layer.attn.core(&q, &k, &v, None, None)?;
            let (y, mid, h) = layer.finish_train_lora(&s, &merged, pass, &mut block_lora)?;
            let h = h.ok_or_else(|| Error::Internal("fc1 pre-activation not kept".into()))?;
            layers.push(StreamTape {
                x: s,
                q,
                k,
                v,
                probs,
                mid,
                h,
                lora: block_lora,
            });
            s = y;
        }
        let pooled_in = s.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let pooled = self.post_ln.forward(&pooled_in)?;
        let tape = VisionTape {
            model: self,
            input,
            layers,
            pooled_in,
            at,
            n: match &prompts {
                Some(p) => p.input.dim(0)?,
                None => 0,
            },
            deep: prompts.as_ref().map_or(0, |p| p.deep.len()),
            lora: lora.cloned(),
        };
        Ok((pooled, tape))
    }

    /// This tower with `lora`'s updates folded into copies of the adapted weights.
    pub fn merged(&self, lora: &TowerLora) -> Result<Self> {
        Ok(Self {
            layers: super::lora_blocks::merged_layers(&self.layers, lora, "image")?,
            ..self.clone()
        })
    }
}

/// Learned tokens inside the image tower (VPT-deep, IVLP, MaPLe, PromptSRC): `input` (n, D) is
/// appended after the patch tokens, after the positional embedding and before ln_pre; `deep[i]`
/// (n, D) replaces the previous block's outputs at those positions at the input of block i + 1
/// (blocks past the last deep prompt keep what flows in). The class token is still what is read.
#[derive(Debug, Clone, Copy)]
pub struct VisionPrompts<'a> {
    pub input: &'a Tensor,
    pub deep: &'a [Tensor],
}

impl<'a> VisionPrompts<'a> {
    /// The deep prompt at the input of block `i` (block 0 reads the input prompts).
    fn deep_at(&self, i: usize) -> Option<&'a Tensor> {
        i.checked_sub(1).and_then(|j| self.deep.get(j))
    }

    fn check(&self, tower: &VisionTransformer) -> Result<()> {
        let d = tower.hidden_size();
        let n = match self.input.dims() {
            &[n, w] if n > 0 && w == d => n,
            other => {
                return Err(Error::InvalidArgument(format!(
                "vision prompts of shape {other:?}; this image tower takes (n, {d}), n at least 1"
            )))
            }
        };
        if self.deep.len() >= tower.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "{} deep vision prompts for an image tower of {} blocks (at most {})",
                self.deep.len(),
                tower.layers.len(),
                tower.layers.len() - 1
            )));
        }
        if let Some((i, p)) = self
            .deep
            .iter()
            .enumerate()
            .find(|(_, p)| p.dims() != [n, d])
        {
            return Err(Error::InvalidArgument(format!(
                "deep vision prompt {} has shape {:?}; the input prompts' is ({n}, {d})",
                i + 1,
                p.dims()
            )));
        }
        Ok(())
    }
}

/// x (B, T, D) with `p` (n, D), in x's dtype, after its T tokens: (B, T + n, D).
fn append(x: &Tensor, p: &Tensor) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    let n = p.dim(0)?;
    let p = p
        .to_dtype(x.dtype())?
        .unsqueeze(0)?
        .broadcast_as((b, n, d))?;
    Ok(Tensor::cat(&[x, &p], 1)?)
}

/// What `VisionTransformer::forward_train` keeps for the backward pass.
pub struct VisionTape<'a> {
    model: &'a VisionTransformer,
    /// ln_pre's input, the prompts appended.
    input: Tensor,
    layers: Vec<StreamTape>,
    /// The class token before ln_post (B, D).
    pooled_in: Tensor,
    /// Where the prompts sit, how many, and how many blocks replaced theirs.
    at: usize,
    n: usize,
    deep: usize,
    /// The low-rank updates the pass ran with.
    lora: Option<TowerLora>,
}

/// The gradients of a [`VisionPrompts`]' tokens, in the model's dtype.
#[derive(Debug)]
pub struct VisionPromptGrads {
    /// (n, D).
    pub input: Tensor,
    /// (n, D) each, as `VisionPrompts::deep`.
    pub deep: Vec<Tensor>,
}

impl VisionTape<'_> {
    /// The prompts' gradients for the gradient of the pooled output (B, D), summed over the
    /// batch. A deep prompt's gradient is its block input's at the prompt positions; the previous
    /// block's outputs there were dropped, so no gradient flows to them.
    pub fn backward(&self, d_pooled: &Tensor) -> Result<VisionPromptGrads> {
        self.backward_all(d_pooled)?
            .0
            .ok_or_else(|| Error::Internal("a training pass without prompts".into()))
    }

    /// The prompts' gradients (when the pass had prompts) and those of the low-rank factors it ran
    /// with (one entry per block; empty without updates), summed over the batch.
    pub fn backward_all(
        &self,
        d_pooled: &Tensor,
    ) -> Result<(Option<VisionPromptGrads>, Vec<BlockLoraGrads>)> {
        let m = self.model;
        let lora = self.lora.as_ref();
        let mut lora_grads = lora.map_or_else(Vec::new, TowerLora::no_grads);
        let (b, t, d) = self.input.dims3()?;
        let d_cls = m
            .post_ln
            .backward(&self.pooled_in, &d_pooled.to_dtype(self.pooled_in.dtype())?)?;
        let mut ds = Tensor::cat(
            &[
                &d_cls.unsqueeze(1)?,
                &Tensor::zeros((b, t - 1, d), d_cls.dtype(), d_cls.device())?,
            ],
            1,
        )?;
        let mut deep = vec![None; self.deep];
        for (i, (layer, tape)) in m.layers.iter().zip(&self.layers).enumerate().rev() {
            let pass = lora.and_then(|l| l.pass(i, 0));
            let mut no_grads = BlockLoraGrads::default();
            let grads = lora_grads.get_mut(i).unwrap_or(&mut no_grads);
            let (d_mid, d_merged) = layer.finish_backward_lora(tape, &ds, pass, grads)?;
            let (d_q, d_k, d_v) =
                layer
                    .attn
                    .core_backward(&tape.q, &tape.k, &tape.v, &tape.probs, &d_merged)?;
            if i == 0 && self.n == 0 {
                // Nothing before the first block learns: its input's gradient is not needed.
                layer.input_backward_lora(tape, &d_mid, &d_q, &d_k, &d_v, 0, pass, grads)?;
                break;
            }
            ds = layer.input_backward_lora(tape, &d_mid, &d_q, &d_k, &d_v, 0, pass, grads)?;
            if let Some(j) = i.checked_sub(1).filter(|&j| j < self.deep) {
                deep[j] = Some(prompt_rows_sum(&ds, self.at, self.n)?);
                ds = replace_rows(
                    &ds,
                    self.at,
                    &Tensor::zeros((self.n, d), ds.dtype(), ds.device())?,
                )?;
            }
        }
        if self.n == 0 {
            return Ok((None, lora_grads));
        }
        let d_input = m.pre_ln.backward(&self.input, &ds)?;
        let prompts = VisionPromptGrads {
            input: prompt_rows_sum(&d_input, self.at, self.n)?,
            deep: deep
                .into_iter()
                .map(|g| g.ok_or_else(|| Error::Internal("a deep prompt got no gradient".into())))
                .collect::<Result<_>>()?,
        };
        Ok((Some(prompts), lora_grads))
    }
}
