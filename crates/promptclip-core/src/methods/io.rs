//! Learner files: safetensors holding the trainable tensors and any state fitted on data, and JSON in the file's metadata with
//! everything needed to rebuild the learner (its [`LearnerMeta`], the CLIP it was learned on, a
//! format version). Any registered method saves and loads through here.
use super::{BoxedLearner, Learner, LearnerMeta, Runtime};
use crate::clip::Clip;
use crate::files::{read_safetensors, write_safetensors_atomic};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const PROMPT_FORMAT: &str = "promptclip.prompt";
/// 2: one metadata struct for every method (camelCase, options as the method's config).
pub const PROMPT_FORMAT_VERSION: u32 = 2;
/// The safetensors metadata key that holds the JSON.
pub(crate) const META_KEY: &str = "promptclip";

/// What a learner file says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptFile {
    pub format: String,
    pub format_version: u32,
    pub clip: ClipIdentity,
    pub learner: LearnerMeta,
}

/// The CLIP a learner was learned on: shapes must match to reuse it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
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

/// The first trainable tensor that holds NaN or an infinity, by name.
pub fn first_non_finite(vars: &[(String, Var)]) -> Result<Option<String>> {
    for (name, v) in vars {
        if !crate::clip::is_finite(v.as_tensor())? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Save a learner of any method, atomically. Non-finite parameters are refused: a file that would
/// only ever predict NaN is worse than none.
pub fn save(path: &Path, learner: &dyn Learner, clip: &Clip) -> Result<()> {
    let vars = learner.vars();
    if let Some(name) = first_non_finite(&vars)? {
        return Err(Error::NonFiniteParams(format!(
            "not saving {}: parameter `{name}` holds NaN or infinite values (the training diverged)",
            path.display()
        )));
    }
    let file = PromptFile {
        format: PROMPT_FORMAT.into(),
        format_version: PROMPT_FORMAT_VERSION,
        clip: ClipIdentity::of(clip),
        learner: learner.meta(),
    };
    let mut md = HashMap::new();
    md.insert(
        META_KEY.to_string(),
        serde_json::to_string(&file).map_err(|e| Error::Internal(e.to_string()))?,
    );
    // The trained tensors, then the state the data decided (a cache), as `meta.params` lists them.
    let tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .chain(learner.state())
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors_atomic(path, &refs, md)
}

/// Read a learner file's metadata, checking that it is one.
pub fn read_meta(path: &Path, metadata: &HashMap<String, String>) -> Result<PromptFile> {
    let not_prompt = || {
        Error::InvalidArgument(format!(
            "{} is not a promptclip learner file (no `{META_KEY}` metadata)",
            path.display()
        ))
    };
    let json = metadata.get(META_KEY).ok_or_else(not_prompt)?;
    let head: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: unreadable learner metadata: {e}",
            path.display()
        ))
    })?;
    if head.get("format").and_then(|f| f.as_str()) != Some(PROMPT_FORMAT) {
        return Err(not_prompt());
    }
    let version = head
        .get("formatVersion")
        .or_else(|| head.get("format_version"));
    let version = version.and_then(|v| v.as_u64()).unwrap_or(0);
    if version != PROMPT_FORMAT_VERSION as u64 {
        return Err(Error::Unsupported(format!(
            "{}: learner format version {version}; this promptclip reads version {PROMPT_FORMAT_VERSION}",
            path.display()
        )));
    }
    serde_json::from_value(head).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: unreadable learner metadata: {e}",
            path.display()
        ))
    })
}

/// Check that a learner learned on `file.clip` can run on `clip`.
pub fn check_compatible(path: &Path, file: &PromptFile, clip: &Clip) -> Result<()> {
    let (saved, here) = (&file.clip, ClipIdentity::of(clip));
    if saved.text_width != here.text_width
        || saved.vocab_size != here.vocab_size
        || saved.embed_dim != here.embed_dim
    {
        return Err(Error::InvalidArgument(format!(
            "{}: learned on a CLIP with text width {}, vocabulary {} and {}-d features ({}); this CLIP has {}, {} and {}: \
             load the CLIP it was learned on (--model)",
            path.display(),
            saved.text_width,
            saved.vocab_size,
            saved.embed_dim,
            saved.source,
            here.text_width,
            here.vocab_size,
            here.embed_dim
        )));
    }
    Ok(())
}

/// Load a learner file of any registered method onto `clip`.
pub fn load(path: &Path, clip: &Clip, runtime: Runtime) -> Result<(BoxedLearner, LearnerMeta)> {
    let (mut tensors, metadata) = read_safetensors(path, &clip.device)?;
    let file = read_meta(path, &metadata)?;
    crate::files::check_float_tensors(path, &tensors)?;
    // `save` never writes non-finite parameters: such a file was damaged or made elsewhere, and
    // would only ever predict NaN.
    if let Some(name) = crate::files::first_non_finite_tensor(&tensors)? {
        return Err(Error::NonFiniteParams(format!(
            "{}: tensor `{name}` holds NaN or infinite values; the learner file is damaged",
            path.display()
        )));
    }
    check_compatible(path, &file, clip)?;
    let meta = file.learner;
    let spec = super::spec(&meta.method).map_err(|_| {
        Error::Unsupported(format!(
            "{}: learner method `{}`",
            path.display(),
            meta.method
        ))
    })?;
    let mut params = HashMap::new();
    for (name, shape) in &meta.params {
        let t = tensors.remove(name).ok_or_else(|| Error::MissingTensor {
            name: name.clone(),
            path: path.to_path_buf(),
        })?;
        if t.dims() != shape.as_slice() {
            return Err(Error::ShapeMismatch {
                name: name.clone(),
                path: path.to_path_buf(),
                expected: shape.clone(),
                actual: t.dims().to_vec(),
            });
        }
        params.insert(name.clone(), t.to_dtype(DType::F32)?);
    }
    // What the method refuses in the file's options or class names names the file (issue 23).
    let learner = (spec.restore)(clip, &meta, &params, runtime).map_err(|e| e.in_file(path))?;
    // The restored learner must describe itself as the file did (same options, same shapes).
    let rebuilt = learner.meta();
    if rebuilt != meta {
        return Err(Error::InvalidArgument(format!(
            "{}: the learner rebuilt from this file differs from its metadata (options {} vs {})",
            path.display(),
            rebuilt.options,
            meta.options
        )));
    }
    Ok((learner, meta))
}
