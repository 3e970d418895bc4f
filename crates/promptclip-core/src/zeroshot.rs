//! Zero-shot CLIP: class names through hand-made templates, optionally several templates
//! ensembled by averaging their normalised text features (CLIP's prompt ensembling, used by the
//! CoOp paper as its zero-shot baseline).
use crate::clip::{l2_normalize, Clip};
use crate::preprocess::ImageSource;
use crate::{Error, Result};
use candle_core::{Tensor, D};

pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Check a class list: non-empty, no empty or duplicate names (after `_` becomes a space).
pub fn validate_class_names(names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Err(Error::InvalidArgument("classNames is empty".into()));
    }
    let cleaned: Vec<String> = names
        .iter()
        .map(|n| n.replace('_', " ").trim().to_string())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, n) in cleaned.iter().enumerate() {
        if n.is_empty() {
            return Err(Error::InvalidArgument(format!("classNames[{i}] is empty")));
        }
        if !seen.insert(n.to_lowercase()) {
            return Err(Error::InvalidArgument(format!(
                "classNames[{i}] `{}` is a duplicate",
                names[i]
            )));
        }
    }
    Ok(cleaned)
}

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
    let names = validate_class_names(class_names)?;
    validate_templates(templates)?;
    let prompts: Vec<String> = names
        .iter()
        .flat_map(|n| templates.iter().map(move |t| t.replacen("{}", n, 1)))
        .collect();
    let feats = l2_normalize(&clip.encode_texts(&prompts)?)?;
    let (k, t, e) = (names.len(), templates.len(), clip.embed_dim());
    let mean = feats.reshape((k, t, e))?.mean(1)?;
    l2_normalize(&mean)
}

/// Features of images read from files or bytes. Decoding runs on all cores; images that fail to
/// decode are reported by index instead of failing the batch.
pub struct EncodedImages {
    /// (N_ok, E), unnormalised, in input order of the successful images.
    pub features: Option<Tensor>,
    /// Input index of each row of `features`.
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, Error)>,
}

pub fn encode_image_sources(
    clip: &Clip,
    sources: &[ImageSource],
    batch_size: usize,
) -> Result<EncodedImages> {
    let batch_size = batch_size.max(1);
    let size = clip.image_config.crop as usize;
    let mut parts = Vec::new();
    let mut indices = Vec::new();
    let mut failures = Vec::new();
    for (chunk_no, chunk) in sources.chunks(batch_size).enumerate() {
        let pixels = crate::preprocess::preprocess_batch(chunk, &clip.image_config);
        let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
        let mut n = 0;
        for (j, r) in pixels.into_iter().enumerate() {
            let index = chunk_no * batch_size + j;
            match r {
                Ok(p) => {
                    data.extend_from_slice(&p);
                    indices.push(index);
                    n += 1;
                }
                Err(e) => failures.push((index, e)),
            }
        }
        if n > 0 {
            let t =
                Tensor::from_vec(data, (n, 3, size, size), &clip.device)?.to_dtype(clip.dtype)?;
            parts.push(clip.encode_image(&t)?);
        }
    }
    let features = if parts.is_empty() {
        None
    } else {
        Some(Tensor::cat(&parts, 0)?)
    };
    Ok(EncodedImages {
        features,
        indices,
        failures,
    })
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
