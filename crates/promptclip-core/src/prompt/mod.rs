//! Prompt learners: CoOp's learned context, assembled in token-embedding space.
//!
//! A CoOp prompt for class k is  t_k = [SOS] [V]_1 ... [V]_M [CLASS_k] . [EOS]  (paper eq. 2),
//! with the context vectors [V]_m learned and every CLIP weight frozen. Following the official
//! code, each class's prompt text "X X ... X {name}." is tokenized and embedded once; its SOS
//! embedding is kept as `prefix` and everything after the M placeholder tokens (class-name
//! tokens, ".", EOS, padding) as `suffix`. The forward pass only concatenates those buffers with
//! the context, so gradients reach the context vectors and nothing else.
pub mod cocoop;
pub mod coop;
pub mod io;

pub use cocoop::{CocoopConfig, CocoopLearner, MetaNet};
pub use coop::{ClassTokenPosition, ContextInit, CoopConfig, PromptLearner};

/// A learned prompt of either method, as stored in a prompt file.
#[derive(Debug)]
pub enum Learner {
    Coop(PromptLearner),
    Cocoop(CocoopLearner),
}

impl Learner {
    /// The context and class buffers (CoCoOp's are CoOp's, plus the Meta-Net).
    pub fn prompt(&self) -> &PromptLearner {
        match self {
            Learner::Coop(l) => l,
            Learner::Cocoop(l) => &l.prompt,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Learner::Coop(_) => "coop",
            Learner::Cocoop(_) => "cocoop",
        }
    }
}

/// Loss, logits and the gradient of each var for prompts built from those vars.
///
/// `prompts` (N, T, d) is the autograd graph from the learner's parameters to the prompt
/// embeddings (cheap: concatenations, CoCoOp's Meta-Net); the text encoder between the prompts
/// and `head` runs its own training pass (`Clip::text_features_train`), and `head` maps the
/// text features (N, E) to (loss, logits) with autograd. The three pieces are chained by hand:
/// d loss / d features from `head`, through the encoder's backward to d loss / d prompts, then
/// through the graph to the vars, by differentiating <prompts, d loss / d prompts>.
pub(crate) fn prompt_loss_and_grads(
    clip: &crate::Clip,
    prompts: &candle_core::Tensor,
    eot: &[usize],
    shared: usize,
    group_size: usize,
    vars: &[(String, candle_core::Var)],
    grad_scale: f64,
    head: impl FnOnce(&candle_core::Tensor) -> crate::Result<(candle_core::Tensor, candle_core::Tensor)>,
) -> crate::Result<(
    candle_core::Tensor,
    candle_core::Tensor,
    Vec<candle_core::Tensor>,
)> {
    let (features, tape) = clip.text_features_train(prompts, eot, shared, group_size)?;
    let features = candle_core::Var::from_tensor(&features)?;
    let (loss, logits) = head(features.as_tensor())?;
    // Loss scaling (fp16): the loss is scaled before its backward pass, so the gradient is already
    // scaled up where it is cast to the features' dtype and enters the encoder's backward pass...
    let d_features = (&loss * grad_scale)?
        .backward()?
        .remove(features.as_tensor())
        .ok_or_else(|| {
            crate::Error::Internal("the loss does not depend on the text features".into())
        })?;
    let d_prompts = clip.text_features_backward(&tape, &d_features)?;
    // Only the surrogate's gradient is used; summing rows first keeps its forward value cheap
    // (candle's whole-tensor sum runs in a single block on the GPU).
    let surrogate = (prompts * d_prompts.to_dtype(prompts.dtype())?.detach())?
        .sum(candle_core::D::Minus1)?
        .sum_all()?;
    let mut grads = surrogate.backward()?;
    // ...and leaves it scaled down again, in the parameters' own dtype (fp32).
    let grads = vars
        .iter()
        .map(|(name, v)| match grads.remove(v.as_tensor()) {
            Some(g) => Ok((g / grad_scale)?),
            None => Err(crate::Error::Internal(format!(
                "no gradient reached `{name}`"
            ))),
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok((loss, logits.detach(), grads))
}

/// Class probabilities of images under a learned prompt, for its own classes or `class_names`.
pub struct Predictions {
    pub num_classes: usize,
    /// Input index of each row of `probs`.
    pub indices: Vec<usize>,
    /// Row-major (indices.len(), num_classes).
    pub probs: Vec<f32>,
    pub failures: Vec<(usize, crate::Error)>,
}

/// Predict in batches of `batch_size` images; `on_progress(done, total)` after each batch.
/// CoOp's class embeddings are computed once; CoCoOp builds K prompts per image, chunked to
/// its memory budget.
pub fn predict(
    clip: &crate::Clip,
    learner: &Learner,
    sources: &[crate::preprocess::ImageSource],
    class_names: Option<&[String]>,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> crate::Result<Predictions> {
    let prompt = learner.prompt();
    let buffers = match class_names {
        Some(names) => prompt.buffers_for(clip, names)?,
        None => prompt.buffers.clone(),
    };
    let k = buffers.class_names.len();
    let coop_classes = match learner {
        Learner::Coop(l) => Some(coop::class_embeddings(l, clip, &buffers)?),
        Learner::Cocoop(_) => None,
    };
    let batch_size = batch_size.max(1);
    let mut out = Predictions {
        num_classes: k,
        indices: vec![],
        probs: vec![],
        failures: vec![],
    };
    for (b, chunk) in sources.chunks(batch_size).enumerate() {
        let enc = crate::zeroshot::encode_image_sources(clip, chunk, batch_size)?;
        out.failures.extend(
            enc.failures
                .into_iter()
                .map(|(i, e)| (b * batch_size + i, e)),
        );
        if let Some(f) = &enc.features {
            let logits = match learner {
                Learner::Cocoop(c) => c.logits_for(clip, f, &buffers)?,
                Learner::Coop(_) => {
                    let classes = coop_classes.as_ref().ok_or_else(|| {
                        crate::Error::Internal("CoOp class embeddings missing".into())
                    })?;
                    clip.logits(f, &classes.to_dtype(f.dtype())?)?
                }
            };
            let probs = candle_nn::ops::softmax(
                &logits.to_dtype(candle_core::DType::F32)?,
                candle_core::D::Minus1,
            )?;
            out.probs.extend(probs.flatten_all()?.to_vec1::<f32>()?);
            out.indices
                .extend(enc.indices.iter().map(|i| b * batch_size + i));
        }
        on_progress(((b + 1) * batch_size).min(sources.len()), sources.len());
    }
    Ok(out)
}
