//! Saving and loading learned prompts: safetensors for tensors, JSON in the file's metadata for
//! everything needed to rebuild the learner (method, M, position, CSC, class names, the CLIP it
//! was trained on, a format version).
use super::coop::{ClassTokenPosition, ContextInit, CoopConfig, PromptLearner};
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
    }
}

pub fn save_prompt(path: &Path, learner: &PromptLearner, clip: &Clip) -> Result<()> {
    let meta = meta_of(learner, clip, "coop");
    let mut md = HashMap::new();
    md.insert("promptclip".to_string(), serde_json::to_string(&meta).map_err(|e| Error::Internal(e.to_string()))?);
    write_safetensors_atomic(path, &[("ctx", learner.ctx.as_tensor())], md)
}

/// Read a prompt file's metadata, checking that it is one.
pub fn read_meta(path: &Path, metadata: &HashMap<String, String>) -> Result<PromptMeta> {
    let not_prompt = || Error::InvalidArgument(format!("{} is not a promptclip prompt file (no `promptclip` metadata)", path.display()));
    let json = metadata.get("promptclip").ok_or_else(not_prompt)?;
    let meta: PromptMeta = serde_json::from_str(json).map_err(|e| Error::InvalidArgument(format!("{}: unreadable prompt metadata: {e}", path.display())))?;
    if meta.format != PROMPT_FORMAT {
        return Err(not_prompt());
    }
    if meta.format_version > PROMPT_FORMAT_VERSION {
        return Err(Error::Unsupported(format!("{}: prompt format version {} is newer than this promptclip ({PROMPT_FORMAT_VERSION})", path.display(), meta.format_version)));
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

pub fn load_prompt(path: &Path, clip: &Clip) -> Result<(PromptLearner, PromptMeta)> {
    let (tensors, metadata) = read_safetensors(path, &clip.device)?;
    let meta = read_meta(path, &metadata)?;
    check_compatible(path, &meta, clip)?;
    let ctx = tensors.get("ctx").ok_or_else(|| Error::MissingTensor { name: "ctx".into(), path: path.to_path_buf() })?;
    let expected: Vec<usize> = if meta.class_specific {
        vec![meta.class_names.len(), meta.n_ctx, clip.text.hidden_size()]
    } else {
        vec![meta.n_ctx, clip.text.hidden_size()]
    };
    if ctx.dims() != expected.as_slice() {
        return Err(Error::ShapeMismatch { name: "ctx".into(), path: path.to_path_buf(), expected, actual: ctx.dims().to_vec() });
    }
    let config = CoopConfig {
        n_ctx: meta.n_ctx,
        class_specific: meta.class_specific,
        position: ClassTokenPosition::parse(&meta.position)?,
        init: if meta.init == "random" { ContextInit::Random { std: 0.02, seed: 0 } } else { ContextInit::Words(meta.init.clone()) },
    };
    let learner = PromptLearner::from_parts(clip, &meta.class_names, config, ctx.to_dtype(candle_core::DType::F32)?, meta.prompt_prefix.clone())?;
    Ok((learner, meta))
}
