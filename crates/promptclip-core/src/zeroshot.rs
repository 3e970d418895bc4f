//! Zero-shot CLIP: class names through hand-made templates, optionally several templates
//! ensembled by averaging their normalised text features (CLIP's prompt ensembling, used by the
//! CoOp paper as its zero-shot baseline).
use crate::clip::{l2_normalize, Clip};
use crate::{Error, Result};
use candle_core::{Tensor, D};

/// The hand-made template of most datasets (CoOp's zero-shot baseline; KgCoOp's anchor).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

pub fn validate_templates(templates: &[String]) -> Result<()> {
    if templates.is_empty() {
        return Err(Error::InvalidArgument("templates is empty".into()));
    }
    for (i, t) in templates.iter().enumerate() {
        if t.matches("{}").count() != 1 {
            return Err(Error::InvalidArgument(format!(
                "templates[{i}] `{t}` must contain `{{}}` exactly once"
            )));
        }
    }
    Ok(())
}

/// Normalised class embeddings (K, E): for each class, the mean of its normalised template
/// features, normalised again.
pub fn class_embeddings(
    clip: &Clip,
    class_names: &[String],
    templates: &[String],
) -> Result<Tensor> {
    let names = crate::classnames::validate(class_names)?;
    validate_templates(templates)?;
    let prompts: Vec<String> = names
        .iter()
        .flat_map(|n| templates.iter().map(move |t| t.replacen("{}", n, 1)))
        .collect();
    // Every prompt must fit CLIP's context: a cut one scores the wrong text (issue 23).
    for (p, prompt) in prompts.iter().enumerate() {
        let (i, j) = (p / templates.len(), p % templates.len());
        clip.tokenizer.encode_fitting(prompt, || {
            format!(
                "the prompt of classNames[{i}] `{}` with templates[{j}] `{}`",
                class_names[i], templates[j]
            )
        })?;
    }
    let feats = l2_normalize(&clip.encode_texts(&prompts)?)?;
    let (k, t, e) = (names.len(), templates.len(), clip.embed_dim());
    let mean = feats.reshape((k, t, e))?.mean(1)?;
    l2_normalize(&mean)
}

/// Probabilities (B, K): softmax over exp(logit_scale) * cos(image, class).
pub fn probabilities(
    clip: &Clip,
    image_features: &Tensor,
    class_embeddings: &Tensor,
) -> Result<Tensor> {
    let logits = clip.logits(image_features, class_embeddings)?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
}
