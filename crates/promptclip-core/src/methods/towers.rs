//! What the learners with prompts inside CLIP's towers share: `step`, one training step through
//! both prompted towers (IVLP, MaPLe, PromptSRC; VPT prompts the image tower only and keeps its
//! own), the text context they start from (`first_words`, `text_context`), and `needs_vit`.
//!
//! In a step both towers run their own training passes, and the pieces are chained by hand as
//! `prompt_loss_and_grads` does for the text side alone: the learner builds its prompt tensors
//! from its vars with a small autograd graph (CoOp's concatenation for the text input; MaPLe's
//! maps for the image prompts); the towers' tapes give the gradients of those tensors; and the
//! vars' gradients come from differentiating sum <tensor, its gradient> over all of them, through
//! that small graph only.
use super::catalogue::Takes;
use super::coop::ClassBuffers;
use super::coop::{CoopConfig, CoopContext};
use super::{Batch, Scorer, StepOutput};
use crate::clip::{Clip, VisionPrompts};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};

/// The text side of a step: prompt embeddings (K, T, d) with their EOT positions, the leading
/// tokens shared by every class (encoded once), and the deep prompts (n, d) of blocks 1...
pub struct TextSide<'a> {
    pub embeds: &'a Tensor,
    pub eot: &'a [usize],
    pub shared: usize,
    pub deep: &'a [Tensor],
}

/// The image side of a step: the batch's pixels and the prompts of the image tower.
pub struct ImageSide<'a> {
    pub pixels: &'a Tensor,
    pub input: &'a Tensor,
    pub deep: &'a [Tensor],
}

/// The features a step's loss reads: the text features (K, E) and the image features (B, E), in
/// the head dtype, as autograd leaves.
pub struct Features<'a> {
    pub text: &'a Tensor,
    pub image: &'a Tensor,
}

/// Loss, logits and the gradient of each var of `vars` for one batch: the text side through the
/// text tower's training pass, the image side through the image tower's, and `head` from their
/// features to (loss, logits) by autograd. Gradients are of the loss times `grad_scale`, divided
/// by it again (fp16 loss scaling).
pub fn step(
    clip: &Clip,
    text: TextSide<'_>,
    image: ImageSide<'_>,
    vars: &[(String, Var)],
    grad_scale: f64,
    head: impl FnOnce(Features<'_>) -> Result<(Tensor, Tensor)>,
) -> Result<StepOutput> {
    let dtype = clip.dtype;
    let text_embeds = text.embeds.to_dtype(dtype)?;
    let text_deep = cast(text.deep, dtype)?;
    let k = text.eot.len();
    let (tf, text_tape) =
        clip.text_features_train_deep(&text_embeds.detach(), text.eot, text.shared, k, &text_deep)?;
    let image_input = image.input.to_dtype(dtype)?;
    let image_deep = cast(image.deep, dtype)?;
    let (imf, image_tape) = clip.image_features_train(
        image.pixels,
        VisionPrompts {
            input: &image_input,
            deep: &image_deep,
        },
    )?;
    let tf = Var::from_tensor(&tf.to_dtype(clip.head_dtype())?)?;
    let imf = Var::from_tensor(&imf.to_dtype(clip.head_dtype())?)?;
    let (loss, logits) = head(Features {
        text: tf.as_tensor(),
        image: imf.as_tensor(),
    })?;
    let mut g = (&loss * grad_scale)?.backward()?;
    let mut take = |v: &Var, what: &str| {
        g.remove(v.as_tensor())
            .ok_or_else(|| Error::Internal(format!("the loss does not depend on the {what}")))
    };
    let d_text = take(&tf, "text features")?;
    let d_image = take(&imf, "image features")?;
    let (d_embeds, d_text_deep) = clip.text_features_backward_deep(&text_tape, &d_text)?;
    let d_vision = clip.image_features_backward(&image_tape, &d_image)?;
    // The surrogate's gradient in the vars is theirs in the loss: sum of <tensor, its gradient>.
    let mut terms = vec![surrogate(text.embeds, &d_embeds)?];
    for (p, d) in text.deep.iter().zip(&d_text_deep) {
        terms.push(surrogate(p, d)?);
    }
    terms.push(surrogate(image.input, &d_vision.input)?);
    for (p, d) in image.deep.iter().zip(&d_vision.deep) {
        terms.push(surrogate(p, d)?);
    }
    let mut grads = Tensor::stack(&terms, 0)?.sum_all()?.backward()?;
    let grads = vars
        .iter()
        .map(|(name, v)| match grads.remove(v.as_tensor()) {
            Some(g) => Ok((g.to_dtype(DType::F32)? / grad_scale)?),
            None => Err(Error::Internal(format!("no gradient reached `{name}`"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StepOutput {
        loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        logits: logits.detach(),
        grads,
    })
}

fn cast(ts: &[Tensor], dtype: DType) -> Result<Vec<Tensor>> {
    ts.iter().map(|t| Ok(t.to_dtype(dtype)?)).collect()
}

/// sum(t * g) with g detached, in t's dtype: its gradient in t is g. Rows are summed first (a
/// whole-tensor sum runs in one block on the GPU).
fn surrogate(t: &Tensor, g: &Tensor) -> Result<Tensor> {
    let g = g.to_dtype(t.dtype())?.detach();
    let s = (t * g)?;
    Ok(if s.rank() > 1 {
        s.sum(D::Minus1)?.sum_all()?
    } else {
        s.sum_all()?
    }
    .to_dtype(DType::F32)?)
}

/// The first `n` token embeddings (n, d) of the words `ctx_init`: where the text context of IVLP,
/// MaPLe and PromptSRC starts (the official `embedding[0, 1:1 + n_ctx]`). `option` names n.
pub fn first_words(clip: &Clip, ctx_init: &str, n: usize, option: &str) -> Result<Tensor> {
    let words = crate::classnames::prompt_text(ctx_init);
    let ids = clip.tokenizer.encode_words(&words)?;
    if ids.len() < n {
        return Err(Error::InvalidArgument(format!(
            "ctxInit `{words}` has {} tokens, fewer than {option} {n}",
            ids.len()
        )));
    }
    let ids = Tensor::new(&ids[..n], &clip.device)?;
    Ok(clip.text.token_embedding.index_select(&ids, 0)?)
}

/// The text input context `ctx` (n, d) in prompts "[SOS] ctx [the rest of ctx_init] {class}."
/// of `class_names`: the words of `ctx_init` past the n learned stay as fixed text.
pub fn text_context(
    clip: &Clip,
    class_names: &[String],
    ctx_init: &str,
    ctx: Tensor,
) -> Result<CoopContext> {
    CoopContext::from_parts(
        clip,
        class_names,
        CoopConfig {
            n_ctx: Some(ctx.dim(0)?),
            ctx_init: Some(crate::classnames::prompt_text(ctx_init)),
            ..CoopConfig::default()
        },
        ctx,
    )
}

/// Why a CLIP cannot take this method, in the user's words: the methods that do work on it.
pub fn needs_vit(clip: &Clip, method: &str) -> Result<()> {
    if clip.has_vit() {
        return Ok(());
    }
    let working: Vec<&str> = super::METHODS
        .iter()
        .filter(|s| s.takes == Takes::ImageFeatures)
        .map(|s| s.name)
        .collect();
    Err(Error::Unsupported(format!(
        "{method} puts tokens inside a ViT image tower, and this CLIP's is a ResNet; the methods that work on it: {}",
        working.join(", ")
    )))
}

/// The error for asking a learner whose prompts are inside the image tower to score features
/// cached from the frozen tower.
pub fn needs_images(method: &str) -> Error {
    Error::Internal(format!(
        "{method} scores images (its prompts are inside the image tower), not cached image features"
    ))
}

/// A batch's pixels through a learner's prompted image tower (`image_features`), against text
/// features (K, E) computed once.
pub struct ImageScorer<'a, F> {
    pub clip: &'a Clip,
    pub method: &'static str,
    pub text: Tensor,
    pub image_features: F,
}

impl<F: Fn(&Tensor) -> Result<Tensor>> Scorer for ImageScorer<'_, F> {
    fn logits(&self, _image_features: &Tensor) -> Result<Tensor> {
        Err(needs_images(self.method))
    }

    fn batch_logits(&self, batch: &Batch<'_>) -> Result<Tensor> {
        let h = self.clip.head_dtype();
        let f = (self.image_features)(batch.pixels()?)?;
        self.clip.logits(&f.to_dtype(h)?, &self.text.to_dtype(h)?)
    }
}

/// The prompts of `context`'s own classes (K, used, d), cut after the last EOT (later positions
/// cannot change a causal encoder read at EOT): CoOp's concatenation, differentiable in ctx.
pub fn own_prompts(context: &CoopContext) -> Result<Tensor> {
    let b = &context.buffers;
    let used = b.eot.iter().max().map_or(1, |e| e + 1);
    Ok(context
        .assemble(context.ctx.as_tensor(), b)?
        .narrow(1, 0, used)?)
}

/// Text features (K, E) of a class list's prompts with `context` at the input and the deep text
/// prompts `deep` (no gradients).
pub fn prompted_text_features(
    clip: &Clip,
    context: &CoopContext,
    deep: &[Var],
    buffers: &ClassBuffers,
) -> Result<Tensor> {
    let prompts = context.assemble(context.ctx.as_tensor(), buffers)?;
    let deep = deep
        .iter()
        .map(|v| Ok(v.as_tensor().to_dtype(clip.dtype)?))
        .collect::<Result<Vec<_>>>()?;
    clip.encode_text_embeds_prompted(&prompts.to_dtype(clip.dtype)?, &buffers.eot, &deep)
}
