//! Saving and loading learned prompts: safetensors for tensors, JSON in the file's metadata for
//! everything needed to rebuild the learner (method, M, position, CSC, class names, the CLIP it
//! was trained on, a format version).
use super::cocoop::{CocoopConfig, CocoopLearner, MetaNet};
use super::coop::{ClassTokenPosition, ContextInit, CoopConfig, PromptLearner};
use super::Learner;
use crate::clip::Clip;
use crate::files::{read_safetensors, write_safetensors_atomic};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const PROMPT_FORMAT: &str = "promptclip.prompt";
pub const PROMPT_FORMAT_VERSION: u32 = 1;

/// What a prompt file says about itself (stored as JSON in the safetensors metadata).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptMeta {
    pub format: String,
    pub format_version: u32,
    /// "coop" (or "cocoop").
    pub method: String,
    pub n_ctx: usize,
    pub class_specific: bool,
    pub position: String,
    /// "random" or the init words.
    pub init: String,
    pub prompt_prefix: String,
    pub class_names: Vec<String>,
    pub clip: ClipIdentity,
    /// CoCoOp only: the Meta-Net's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_net: Option<MetaNetMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetaNetMeta {
    pub vis_dim: usize,
    pub hidden: usize,
    pub ratio: usize,
}

/// The CLIP a prompt was learned on: shapes must match to reuse the context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClipIdentity {
    pub source: String,
    pub text_width: usize,
    pub embed_dim: usize,
    pub vocab_size: usize,
}

impl ClipIdentity {
    pub fn of(clip: &Clip) -> Self {
        Self {
            source: clip.source.display().to_string(),
            text_width: clip.text.hidden_size(),
            embed_dim: clip.embed_dim(),
            vocab_size: clip.config.text_config.vocab_size,
        }
    }
}

pub fn meta_of(learner: &PromptLearner, clip: &Clip, method: &str) -> PromptMeta {
    let c = &learner.config;
    PromptMeta {
        format: PROMPT_FORMAT.into(),
        format_version: PROMPT_FORMAT_VERSION,
        method: method.into(),
        n_ctx: c.n_ctx,
        class_specific: c.class_specific,
        position: c.position.as_str().into(),
        init: match &c.init {
            ContextInit::Random { .. } => "random".into(),
            ContextInit::Words(w) => w.clone(),
        },
        prompt_prefix: learner.prompt_prefix().to_string(),
        class_names: learner.buffers.class_names.clone(),
        clip: ClipIdentity::of(clip),
        meta_net: None,
    }
}

pub fn save_prompt(path: &Path, learner: &PromptLearner, clip: &Clip) -> Result<()> {
    save_parts(path, learner, None, clip)
}

/// Save either method: `ctx` (+ `meta.*` for CoCoOp) and the JSON metadata, atomically.
pub fn save_learner(path: &Path, learner: &Learner, clip: &Clip) -> Result<()> {
    match learner {
        Learner::Coop(l) => save_parts(path, l, None, clip),
        Learner::Cocoop(c) => save_parts(path, &c.prompt, Some(c), clip),
    }
}

fn save_parts(
    path: &Path,
    prompt: &PromptLearner,
    cocoop: Option<&CocoopLearner>,
    clip: &Clip,
) -> Result<()> {
    let mut meta = meta_of(
        prompt,
        clip,
        if cocoop.is_some() { "cocoop" } else { "coop" },
    );
    let mut tensors: Vec<(String, candle_core::Tensor)> =
        vec![("ctx".into(), prompt.ctx.as_tensor().clone())];
    if let Some(c) = cocoop {
        meta.meta_net = Some(MetaNetMeta {
            vis_dim: clip.embed_dim(),
            hidden: c.meta.hidden(),
            ratio: c.config.ratio,
        });
        tensors.extend(
            c.meta
                .named()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().clone())),
        );
    }
    let mut md = HashMap::new();
    md.insert(
        "promptclip".to_string(),
        serde_json::to_string(&meta).map_err(|e| Error::Internal(e.to_string()))?,
    );
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors_atomic(path, &refs, md)
}

/// Read a prompt file's metadata, checking that it is one.
pub fn read_meta(path: &Path, metadata: &HashMap<String, String>) -> Result<PromptMeta> {
    let not_prompt = || {
        Error::InvalidArgument(format!(
            "{} is not a promptclip prompt file (no `promptclip` metadata)",
            path.display()
        ))
    };
    let json = metadata.get("promptclip").ok_or_else(not_prompt)?;
    let meta: PromptMeta = serde_json::from_str(json).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: unreadable prompt metadata: {e}",
            path.display()
        ))
    })?;
    if meta.format != PROMPT_FORMAT {
        return Err(not_prompt());
    }
    if meta.format_version > PROMPT_FORMAT_VERSION {
        return Err(Error::Unsupported(format!(
            "{}: prompt format version {} is newer than this promptclip ({PROMPT_FORMAT_VERSION})",
            path.display(),
            meta.format_version
        )));
    }
    Ok(meta)
}

/// Check that a prompt learned on `meta.clip` can run on `clip`.
pub fn check_compatible(path: &Path, meta: &PromptMeta, clip: &Clip) -> Result<()> {
    let here = ClipIdentity::of(clip);
    if meta.clip.text_width != here.text_width || meta.clip.vocab_size != here.vocab_size {
        return Err(Error::InvalidArgument(format!(
            "{}: prompt was learned on a CLIP with text width {} (vocabulary {}), this CLIP has text width {} (vocabulary {})",
            path.display(), meta.clip.text_width, meta.clip.vocab_size, here.text_width, here.vocab_size
        )));
    }
    Ok(())
}

/// Load a CoOp prompt file (a CoCoOp file is refused with a pointer to `load_learner`).
pub fn load_prompt(path: &Path, clip: &Clip) -> Result<(PromptLearner, PromptMeta)> {
    match load_learner(path, clip)? {
        (Learner::Coop(l), meta) => Ok((l, meta)),
        (Learner::Cocoop(_), _) => Err(Error::InvalidArgument(format!(
            "{} holds a CoCoOp prompt, not CoOp",
            path.display()
        ))),
    }
}

/// Load a prompt file of either method onto `clip`.
pub fn load_learner(path: &Path, clip: &Clip) -> Result<(Learner, PromptMeta)> {
    let (tensors, metadata) = read_safetensors(path, &clip.device)?;
    let meta = read_meta(path, &metadata)?;
    check_compatible(path, &meta, clip)?;
    let get = |name: &str, expected: Vec<usize>| -> Result<candle_core::Tensor> {
        let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            path: path.to_path_buf(),
        })?;
        if t.dims() != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                path: path.to_path_buf(),
                expected,
                actual: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(candle_core::DType::F32)?)
    };
    let d = clip.text.hidden_size();
    let ctx_shape = if meta.class_specific {
        vec![meta.class_names.len(), meta.n_ctx, d]
    } else {
        vec![meta.n_ctx, d]
    };
    let ctx = get("ctx", ctx_shape)?;
    let config = CoopConfig {
        n_ctx: meta.n_ctx,
        class_specific: meta.class_specific,
        position: ClassTokenPosition::parse(&meta.position)?,
        init: if meta.init == "random" {
            ContextInit::Random { std: 0.02, seed: 0 }
        } else {
            ContextInit::Words(meta.init.clone())
        },
    };
    let prompt = PromptLearner::from_parts(
        clip,
        &meta.class_names,
        config.clone(),
        ctx,
        meta.prompt_prefix.clone(),
    )?;
    let learner = match meta.method.as_str() {
        "coop" => Learner::Coop(prompt),
        "cocoop" => {
            let m = meta.meta_net.clone().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: CoCoOp prompt without Meta-Net metadata",
                    path.display()
                ))
            })?;
            if m.vis_dim != clip.embed_dim() {
                return Err(Error::InvalidArgument(format!(
                    "{}: Meta-Net takes {}-d image features, this CLIP gives {}",
                    path.display(),
                    m.vis_dim,
                    clip.embed_dim()
                )));
            }
            let var = |name: &str, shape: Vec<usize>| -> Result<candle_core::Var> {
                Ok(candle_core::Var::from_tensor(&get(name, shape)?)?)
            };
            let meta_net = MetaNet {
                linear1_weight: var("meta.linear1.weight", vec![m.hidden, m.vis_dim])?,
                linear1_bias: var("meta.linear1.bias", vec![m.hidden])?,
                linear2_weight: var("meta.linear2.weight", vec![d, m.hidden])?,
                linear2_bias: var("meta.linear2.bias", vec![d])?,
            };
            Learner::Cocoop(CocoopLearner::from_parts(
                prompt,
                meta_net,
                CocoopConfig {
                    coop: config,
                    ratio: m.ratio,
                    ..CocoopConfig::default()
                },
            ))
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{}: prompt method `{other}`",
                path.display()
            )))
        }
    };
    Ok((learner, meta))
}
