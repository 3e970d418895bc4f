//! Prompts under the official code's state-dict names: import a file of tensors trained by the
//! official repositories (CoOp, CoCoOp, KgCoOp, multimodal-prompt-learning's VPT, IVLP and MaPLe,
//! PromptSRC), export a learner to one, and start training from one (`initFrom`).
//!
//! The official trainers save Dassl checkpoints (`model.pth.tar-N`, a pickle, which promptclip
//! never reads); `scripts/dassl_to_safetensors.py` turns one into safetensors with the same names.
//! Those names are the official `CustomCLIP`'s (`prompt_learner.ctx`,
//! `image_encoder.transformer.resblocks.1.VPT_shallow`, ...). CoOp, CoCoOp and KgCoOp register
//! only their prompt learner with Dassl, so their checkpoints name `ctx` without the
//! `prompt_learner.` prefix; both forms are read, and DataParallel's `module.` prefix too.
//!
//! Each method states its renames (its `MethodSpec::official`): the learner's own tensor names
//! against the official ones, and the options that an official file's shapes decide (tokens,
//! depths). Everything else in a file (the class-token buffers `token_prefix` and `token_suffix`,
//! the frozen CLIP's weights of a whole-model state dict) is not a learned prompt and is left out.
use super::{spec, BoxedLearner, Learner, MethodSpec, Runtime, METHODS};
use crate::clip::Clip;
use crate::files::{read_safetensors, write_safetensors_atomic};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// One name of a learner's tensors and its official name. A `{}` in both stands for a layer index
/// (official = ours - `shift`: MaPLe's `text_prompt.1` is `compound_prompts_text.0`).
#[derive(Debug, Clone, Copy)]
pub struct Rename {
    pub ours: &'static str,
    pub theirs: &'static str,
    pub shift: usize,
}

/// A rename without a layer index.
pub const fn exact(ours: &'static str, theirs: &'static str) -> Rename {
    Rename {
        ours,
        theirs,
        shift: 0,
    }
}

/// A learner's tensor shapes by its own names.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// How a method's learners read and write the official names.
pub struct Official {
    /// Groups of renames (a method may share one: IVLP names its image prompts as VPT-deep does),
    /// tried in order; the first that matches a name renames it.
    pub renames: &'static [&'static [Rename]],
    /// The options (JSON, camelCase) that the tensors' shapes decide, from the shapes by the
    /// learner's names: CoOp's nCtx from `ctx`, IVLP's depths from how many layers have prompts.
    pub options: fn(&Shapes) -> serde_json::Value,
}

/// The safetensors metadata that an export adds, so that importing it back needs no flags.
const META_METHOD: &str = "promptclip.method";
const META_OPTIONS: &str = "promptclip.options";
const META_CLASSES: &str = "promptclip.classNames";

/// `name` under `from` (a pattern with or without `{}`) renamed to `to`, the index moved by
/// `shift` (negative: down).
fn rename(from: &str, to: &str, name: &str, shift: isize) -> Option<String> {
    let Some((pre, post)) = from.split_once("{}") else {
        return (name == from).then(|| to.to_string());
    };
    let digits = name.strip_prefix(pre)?.strip_suffix(post)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i = digits.parse::<isize>().ok()? + shift;
    (i >= 0).then(|| to.replacen("{}", &i.to_string(), 1))
}

impl Official {
    /// The official name of the learner's tensor `ours`.
    pub fn theirs(&self, ours: &str) -> Option<String> {
        self.renames
            .iter()
            .flat_map(|group| group.iter())
            .find_map(|r| rename(r.ours, r.theirs, ours, -(r.shift as isize)))
    }

    /// The learner's name of the official tensor `theirs`.
    pub fn ours(&self, theirs: &str) -> Option<String> {
        self.renames
            .iter()
            .flat_map(|group| group.iter())
            .find_map(|r| rename(r.theirs, r.ours, theirs, r.shift as isize))
    }
}

/// How many of the names in `shapes` start with `prefix` (deep prompts: one per layer).
pub fn count_prefixed(shapes: &Shapes, prefix: &str) -> usize {
    shapes.keys().filter(|k| k.starts_with(prefix)).count()
}

/// The size of dimension `dim` of the tensor `name`, as JSON (null when the file lacks it: the
/// learner built from the other options then reports the missing tensor by its official name).
pub fn dim_of(shapes: &Shapes, name: &str, dim: usize) -> serde_json::Value {
    shapes
        .get(name)
        .and_then(|s| s.get(dim))
        .map_or(serde_json::Value::Null, |&n| n.into())
}

fn official_of(spec: &MethodSpec) -> Result<&'static Official> {
    spec.official.ok_or_else(|| {
        Error::Unsupported(format!(
            "method `{}` has no official state-dict names; these do: {}",
            spec.name,
            with_official().join(", ")
        ))
    })
}

fn with_official() -> Vec<&'static str> {
    METHODS
        .iter()
        .filter(|s| s.official.is_some())
        .map(|s| s.name)
        .collect()
}

/// An official file's tensors: DataParallel's `module.` prefix dropped, and a prompt learner's
/// own state dict (CoOp's Dassl checkpoints: `ctx`, `meta_net.linear1.weight`) put under
/// `prompt_learner.`, as the whole model names it.
fn normalised(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("module.").map_or(k.clone(), str::to_string),
                v,
            )
        })
        .collect();
    let whole_model = tensors.keys().any(|k| {
        // CLIP-LoRA's factors are the official CLIP's own parameters (OpenAI's module tree).
        [
            "prompt_learner.",
            "image_encoder.",
            "text_encoder.",
            "transformer.",
            "visual.",
        ]
        .iter()
        .any(|p| k.starts_with(p))
    });
    if whole_model {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (format!("prompt_learner.{k}"), v))
        .collect()
}

/// The names in a file that are learned prompts of some method (the rest are buffers or frozen
/// weights), sorted.
fn learned_names(tensors: &HashMap<String, Tensor>) -> BTreeSet<String> {
    tensors
        .keys()
        .filter(|k| {
            METHODS
                .iter()
                .filter_map(|s| s.official)
                .any(|o| o.ours(k).is_some())
        })
        .cloned()
        .collect()
}

/// What an import is asked: the method (inferred from the file's names when absent: the first of
/// the catalogue whose names cover them exactly), the class names, and options beyond the ones the
/// shapes decide (`ctxInit`: the words of the prompt that stay fixed text; a method's loss weights).
pub struct ImportRequest<'a> {
    pub method: Option<&'a str>,
    pub class_names: Option<&'a [String]>,
    pub options: serde_json::Value,
    pub runtime: Runtime,
}

/// A learner from a safetensors file under the official state-dict names.
pub fn import(clip: &Clip, path: &Path, request: ImportRequest<'_>) -> Result<BoxedLearner> {
    let (tensors, metadata) = read_safetensors(path, &clip.device)?;
    crate::files::check_float_tensors(path, &tensors)?;
    if metadata.contains_key(super::io::META_KEY) {
        return Err(Error::InvalidArgument(format!(
            "{} is a promptclip learner file, not one under the official names: load it as it is",
            path.display()
        )));
    }
    if let Some(name) = crate::files::first_non_finite_tensor(&tensors)? {
        return Err(Error::NonFiniteParams(format!(
            "{}: tensor `{name}` holds NaN or infinite values",
            path.display()
        )));
    }
    let tensors = normalised(tensors);
    let learned = learned_names(&tensors);
    if learned.is_empty() {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let shown: Vec<&str> = names.iter().take(6).map(|s| s.as_str()).collect();
        return Err(Error::InvalidArgument(format!(
            "{} holds no learned prompts under the official names (prompt_learner.ctx, \
             image_encoder.VPT, ...); its tensors: {}{}",
            path.display(),
            shown.join(", "),
            if names.len() > 6 { ", ..." } else { "" }
        )));
    }
    // An export's own record of what it was: the defaults of everything the caller leaves out.
    let saved_json = |key: &str| -> Result<Option<serde_json::Value>> {
        metadata
            .get(key)
            .map(|s| {
                serde_json::from_str(s).map_err(|e| {
                    Error::InvalidArgument(format!("{}: metadata `{key}`: {e}", path.display()))
                })
            })
            .transpose()
    };
    let saved_classes: Option<Vec<String>> = saved_json(META_CLASSES)?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "{}: metadata `{META_CLASSES}`: {e}",
                path.display()
            ))
        })?;
    let method = request
        .method
        .or(metadata.get(META_METHOD).map(String::as_str));
    let class_names = match (request.class_names, saved_classes.as_deref()) {
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => {
            return Err(Error::InvalidArgument(format!(
                "{}: the official names carry no class names; give the classes the prompts are for",
                path.display()
            )))
        }
    };
    // The export's options belong to its method: another one named here starts from its defaults.
    let same_method =
        request.method.is_none() || request.method == metadata.get(META_METHOD).map(String::as_str);
    let mut base = match saved_json(META_OPTIONS)? {
        Some(serde_json::Value::Object(m)) if same_method => m,
        _ => serde_json::Map::new(),
    };
    let given = match request.options {
        serde_json::Value::Null => serde_json::Map::new(),
        serde_json::Value::Object(m) => m,
        other => {
            return Err(Error::InvalidArgument(format!(
                "import options must be an object, got {other}"
            )))
        }
    };
    base.extend(given.clone());

    let candidates: Vec<&'static MethodSpec> = match method {
        Some(name) => {
            let s = spec(name)?;
            official_of(s)?;
            vec![s]
        }
        None => METHODS.iter().filter(|s| s.official.is_some()).collect(),
    };
    let mut first_error = None;
    for s in &candidates {
        let official = official_of(s)?;
        // Every learned name of the file must be one of this method's.
        let mut shapes = Shapes::new();
        let mut foreign = vec![];
        for name in &learned {
            match official.ours(name) {
                Some(ours) => {
                    shapes.insert(ours, tensors[name].dims().to_vec());
                }
                None => foreign.push(name.as_str()),
            }
        }
        if !foreign.is_empty() {
            if method.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor `{}` is not one of {}'s prompts (is the file from another method? \
                     leave the method out to infer it)",
                    path.display(),
                    foreign[0],
                    s.name
                )));
            }
            continue;
        }
        let built = build(
            clip,
            path,
            s,
            official,
            &shapes,
            &base,
            &given,
            class_names,
            request.runtime,
        )
        .and_then(|learner| {
            let expected: BTreeSet<String> = learner
                .vars()
                .iter()
                .filter_map(|(n, _)| official.theirs(n))
                .collect();
            if let Some(missing) = expected.difference(&learned).next() {
                return Err(Error::MissingTensor {
                    name: missing.clone(),
                    path: path.to_path_buf(),
                });
            }
            if let Some(extra) = learned.difference(&expected).next() {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor `{extra}` has no place in a {} learner with options {}",
                    path.display(),
                    s.name,
                    learner.meta().options
                )));
            }
            set_vars(path, learner.as_ref(), official, &tensors)?;
            Ok(learner)
        });
        match built {
            Ok(learner) => return Ok(learner),
            Err(e) if method.is_some() => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: no method's official names cover its prompts ({}); methods with official names: {}",
            path.display(),
            learned.iter().cloned().collect::<Vec<_>>().join(", "),
            with_official().join(", ")
        ))
    }))
}

/// The learner of method `s` with the options the shapes decide, refusing a given option that
/// contradicts them.
#[allow(clippy::too_many_arguments)]
fn build(
    clip: &Clip,
    path: &Path,
    s: &MethodSpec,
    official: &Official,
    shapes: &Shapes,
    base: &serde_json::Map<String, serde_json::Value>,
    given: &serde_json::Map<String, serde_json::Value>,
    class_names: &[String],
    runtime: Runtime,
) -> Result<BoxedLearner> {
    let mut options = base.clone();
    if let serde_json::Value::Object(derived) = (official.options)(shapes) {
        for (k, v) in derived {
            if v.is_null() {
                continue;
            }
            if let Some(g) = given.get(&k) {
                if *g != v {
                    return Err(Error::InvalidArgument(format!(
                        "{}: option {k} = {g} was given, but the file's tensors say {k} = {v}",
                        path.display()
                    )));
                }
            }
            options.insert(k, v);
        }
    }
    (s.create)(
        clip,
        class_names,
        serde_json::Value::Object(options),
        runtime,
    )
    .map_err(|e| e.in_file(path))
}

/// Set every trainable tensor of `learner` from `tensors` (official names), checking shapes.
fn set_vars(
    path: &Path,
    learner: &dyn Learner,
    official: &Official,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    for (ours, var) in learner.vars() {
        let theirs = official
            .theirs(&ours)
            .ok_or_else(|| Error::Internal(format!("no official name for `{ours}`")))?;
        let t = tensors.get(&theirs).ok_or_else(|| Error::MissingTensor {
            name: theirs.clone(),
            path: path.to_path_buf(),
        })?;
        set_checked(path, &theirs, &var, t)?;
    }
    Ok(())
}

fn set_checked(path: &Path, name: &str, var: &candle_core::Var, t: &Tensor) -> Result<()> {
    if t.dims() != var.dims() {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            path: path.to_path_buf(),
            expected: var.dims().to_vec(),
            actual: t.dims().to_vec(),
        });
    }
    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    Ok(())
}

/// Write `learner`'s trainable tensors under the official names (fp32, atomically), with its
/// method, options and class names in the metadata (importing the file back needs no flags).
pub fn export(path: &Path, learner: &dyn Learner) -> Result<()> {
    let meta = learner.meta();
    let vars: Vec<(String, Tensor)> = learner
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    write(path, &meta, &vars)
}

/// A promptclip learner file rewritten under the official names (no model needed: only names
/// change).
pub fn export_file(input: &Path, output: &Path) -> Result<()> {
    let (tensors, metadata) = read_safetensors(input, &candle_core::Device::Cpu)?;
    let file = super::io::read_meta(input, &metadata)?;
    let vars = file
        .learner
        .params
        .iter()
        .map(|(n, _)| {
            tensors
                .get(n)
                .map(|t| (n.clone(), t.clone()))
                .ok_or_else(|| Error::MissingTensor {
                    name: n.clone(),
                    path: input.to_path_buf(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    write(output, &file.learner, &vars)
}

fn write(path: &Path, meta: &super::LearnerMeta, vars: &[(String, Tensor)]) -> Result<()> {
    let official = official_of(spec(&meta.method)?)?;
    let mut named = vec![];
    for (ours, t) in vars {
        let theirs = official.theirs(ours).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}'s tensor `{ours}` has no official name (state fitted on data, which the \
                 official code does not keep)",
                meta.method
            ))
        })?;
        if !crate::clip::is_finite(t)? {
            return Err(Error::NonFiniteParams(format!(
                "not exporting {}: `{ours}` holds NaN or infinite values",
                path.display()
            )));
        }
        named.push((theirs, t.to_dtype(DType::F32)?));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let json = |v: &serde_json::Value| v.to_string();
    let md = HashMap::from([
        // What safetensors.torch.save_file writes: torch's readers expect it.
        ("format".to_string(), "pt".to_string()),
        (META_METHOD.to_string(), meta.method.clone()),
        (META_OPTIONS.to_string(), json(&meta.options)),
        (
            META_CLASSES.to_string(),
            json(&serde_json::json!(meta.class_names)),
        ),
    ]);
    write_safetensors_atomic(path, &refs, md)
}

/// Set `learner`'s trainable tensors from a file (a run's `initFrom`): a promptclip learner file
/// by its names, or a file under the official names. Every trainable tensor must be there with
/// its shape, and a file's learned tensor that the learner has no place for is refused (the file
/// is of another method).
pub fn init_from(path: &Path, learner: &dyn Learner, device: &candle_core::Device) -> Result<()> {
    let (tensors, metadata) = read_safetensors(path, device)?;
    crate::files::check_float_tensors(path, &tensors)?;
    let meta = learner.meta();
    let own = metadata.contains_key(super::io::META_KEY);
    let official = spec(&meta.method)?.official;
    let tensors = if own {
        super::io::read_meta(path, &metadata)?;
        tensors
    } else {
        let official = official.ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: not a promptclip learner file, and method `{}` has no official names to read it by",
                path.display(),
                meta.method
            ))
        })?;
        let tensors = normalised(tensors);
        let learned = learned_names(&tensors);
        let mut by_ours = HashMap::new();
        for name in learned {
            let ours = official.ours(&name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: tensor `{name}` is not one of {}'s prompts",
                    path.display(),
                    meta.method
                ))
            })?;
            by_ours.insert(ours, tensors[&name].clone());
        }
        by_ours
    };
    let vars = learner.vars();
    for (ours, var) in &vars {
        let shown = match (own, official) {
            (false, Some(o)) => o.theirs(ours).unwrap_or_else(|| ours.clone()),
            _ => ours.clone(),
        };
        let t = tensors.get(ours).ok_or_else(|| Error::MissingTensor {
            name: shown.clone(),
            path: path.to_path_buf(),
        })?;
        set_checked(path, &shown, var, t)?;
    }
    if !own {
        // A learned tensor the learner has no place for: the file is of another configuration.
        let used: BTreeSet<&String> = vars.iter().map(|(n, _)| n).collect();
        if let Some(extra) = tensors.keys().find(|k| !used.contains(k)) {
            let name = official
                .and_then(|o| o.theirs(extra))
                .unwrap_or_else(|| extra.clone());
            return Err(Error::InvalidArgument(format!(
                "{}: tensor `{name}` has no place in this {} learner (options {})",
                path.display(),
                meta.method,
                meta.options
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_layer_indices_both_ways() {
        static RENAMES: &[&[Rename]] = &[&[
            exact("ctx", "prompt_learner.ctx"),
            Rename {
                ours: "text_prompt.{}",
                theirs: "prompt_learner.compound_prompts_text.{}",
                shift: 1,
            },
        ]];
        let o = Official {
            renames: RENAMES,
            options: |_| serde_json::Value::Null,
        };
        assert_eq!(o.theirs("ctx").as_deref(), Some("prompt_learner.ctx"));
        assert_eq!(
            o.theirs("text_prompt.3").as_deref(),
            Some("prompt_learner.compound_prompts_text.2")
        );
        assert_eq!(
            o.ours("prompt_learner.compound_prompts_text.0").as_deref(),
            Some("text_prompt.1")
        );
        assert_eq!(o.theirs("text_prompt.0"), None);
        assert_eq!(o.ours("prompt_learner.compound_prompts_text.x"), None);
        assert_eq!(o.ours("prompt_learner.token_prefix"), None);
    }
}
