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
use crate::clip::{Clip, VisionPromptGrads, VisionPrompts};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use std::ops::Range;

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

/// The features a chunk of a step's loss reads: the text features (K, E) and the image features
/// (n, E) of the batch's images `rows`, in the head dtype, as autograd leaves.
pub struct Features<'a> {
    pub text: &'a Tensor,
    pub image: &'a Tensor,
    pub rows: Range<usize>,
}

/// The runtime's memory budget in bytes.
pub fn budget_bytes(runtime: super::Runtime) -> usize {
    runtime.memory_budget_mb.saturating_mul(1 << 20)
}

/// Images per pass of the image tower's training pass: as many as `budget_bytes` of tape hold
/// (at least one), so that a batch's activations stay within the learner's memory budget.
pub fn image_chunk(clip: &Clip, batch: usize, prompts: usize, budget_bytes: usize) -> usize {
    (budget_bytes / clip.image_tape_bytes(prompts).max(1)).clamp(1, batch.max(1))
}

/// The image side of a step, in chunks of `chunk` images: each chunk through the tower's training
/// pass, `head` from its features (a leaf) and rows to (loss, logits), the chunk's loss weighted
/// by its share of the batch, its backward pass (where `other` takes the gradients of the head's
/// other leaves), and the tower's backward pass; the chunk's tape is then freed. The loss must be
/// a mean over the batch's images plus terms that do not depend on them (cross-entropy,
/// PromptSRC's), so that the weighted chunks sum to the whole batch's loss and gradients.
/// Returns the prompts' gradients, the loss (f32) and the logits (B, K), detached.
pub fn image_chunks(
    clip: &Clip,
    image: &ImageSide<'_>,
    chunk: usize,
    grad_scale: f64,
    head: impl Fn(&Tensor, Range<usize>) -> Result<(Tensor, Tensor)>,
    mut other: impl FnMut(&mut candle_core::backprop::GradStore) -> Result<()>,
) -> Result<(VisionPromptGrads, f32, Tensor)> {
    let dtype = clip.dtype;
    let image_input = image.input.to_dtype(dtype)?;
    let image_deep = cast(image.deep, dtype)?;
    let b = image.pixels.dim(0)?;
    let chunk = chunk.clamp(1, b.max(1));
    let (mut grads, mut loss, mut logits) = (None::<VisionPromptGrads>, 0f32, vec![]);
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let pixels = if n == b {
            image.pixels.clone()
        } else {
            image.pixels.narrow(0, start, n)?
        };
        let prompts = VisionPrompts {
            input: &image_input,
            deep: &image_deep,
        };
        let (imf, tape) = clip.image_features_train(&pixels, prompts)?;
        let imf = Var::from_tensor(&imf.to_dtype(clip.head_dtype())?)?;
        let (chunk_loss, chunk_logits) = head(imf.as_tensor(), start..start + n)?;
        // A whole batch in one chunk weighs 1 exactly: the same numbers as without chunking.
        let share = n as f64 / b as f64;
        let mut g = (&chunk_loss * (grad_scale * share))?.backward()?;
        let d_image = g.remove(imf.as_tensor()).ok_or_else(|| {
            Error::Internal("the loss does not depend on the image features".into())
        })?;
        other(&mut g)?;
        let d = clip.image_features_backward(&tape, &d_image)?;
        drop(tape);
        grads = Some(match grads {
            None => d,
            Some(acc) => VisionPromptGrads {
                input: (acc.input + d.input)?,
                deep: acc
                    .deep
                    .iter()
                    .zip(&d.deep)
                    .map(|(a, x)| Ok((a + x)?))
                    .collect::<Result<Vec<_>>>()?,
            },
        });
        loss += chunk_loss.to_dtype(DType::F32)?.to_scalar::<f32>()? * share as f32;
        logits.push(chunk_logits.detach());
    }
    let grads = grads.ok_or_else(|| Error::Internal("an empty batch".into()))?;
    let logits = if logits.len() == 1 {
        logits.remove(0)
    } else {
        Tensor::cat(&logits, 0)?
    };
    Ok((grads, loss, logits))
}

/// Loss, logits and the gradient of each var of `vars` for one batch: the text side through the
/// text tower's training pass (once), the image side through the image tower's in chunks of
/// `chunk` images (`image_chunks`), and `head` from their features to (loss, logits) by autograd.
/// Gradients are of the loss times `grad_scale`, divided by it again (fp16 loss scaling).
pub fn step(
    clip: &Clip,
    text: TextSide<'_>,
    image: ImageSide<'_>,
    vars: &[(String, Var)],
    grad_scale: f64,
    chunk: usize,
    head: impl Fn(Features<'_>) -> Result<(Tensor, Tensor)>,
) -> Result<StepOutput> {
    let dtype = clip.dtype;
    let text_embeds = text.embeds.to_dtype(dtype)?;
    let text_deep = cast(text.deep, dtype)?;
    let k = text.eot.len();
    let (tf, text_tape) =
        clip.text_features_train_deep(&text_embeds.detach(), text.eot, text.shared, k, &text_deep)?;
    let tf = Var::from_tensor(&tf.to_dtype(clip.head_dtype())?)?;
    let mut d_text: Option<Tensor> = None;
    let (d_vision, loss, logits) = image_chunks(
        clip,
        &image,
        chunk,
        grad_scale,
        |imf, rows| {
            head(Features {
                text: tf.as_tensor(),
                image: imf,
                rows,
            })
        },
        |g| {
            let d = g.remove(tf.as_tensor()).ok_or_else(|| {
                Error::Internal("the loss does not depend on the text features".into())
            })?;
            d_text = Some(match d_text.take() {
                None => d,
                Some(acc) => (acc + d)?,
            });
            Ok(())
        },
    )?;
    let d_text = d_text.ok_or_else(|| Error::Internal("an empty batch".into()))?;
    let (d_embeds, d_text_deep) = clip.text_features_backward_deep(&text_tape, &d_text)?;
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
        loss,
        logits,
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
