//! Methods: what a learner on a frozen CLIP is, and the registry of the ones promptclip has.
//!
//! A method is one module here that implements [`Learner`] and registers one [`MethodSpec`] in
//! [`METHODS`]; the trainer, prompt files, checkpoints, prediction and the Node binding go through
//! this seam and know no method by name. The spec is also the method's catalogue entry
//! ([`catalogue`]): what TypeScript knows of a method, it reads from there.
//!
//! - `coop`: learned context vectors in token-embedding space (Zhou et al., IJCV 2022);
//! - `cocoop`: CoOp plus a Meta-Net that shifts the context per image (CVPR 2022);
//! - `kgcoop`: CoOp plus a pull towards the hand-made prompt's text features (CVPR 2023);
//! - `linear-probe`: logistic regression on image features (CoOp's baseline);
//! - `clip-adapter`: a residual bottleneck on the image feature (Gao et al., IJCV 2024);
//! - `tip-adapter`: a training-free cache of the few-shot features (Zhang et al., ECCV 2022);
//! - `tip-adapter-f`: the same cache with its keys fine-tuned;
//! - `vpt`: VPT-deep, learned tokens inside the image tower (Jia et al., ECCV 2022);
//! - `ivlp`: independent prompts inside both towers (MaPLe's baseline, CVPR 2023);
//! - `maple`: prompts in both towers, the image tower's mapped from the text's (CVPR 2023);
//! - `promptsrc`: IVLP regularised towards the frozen CLIP, prompts averaged over epochs (ICCV 2023);
//! - `clip-lora`: low-rank updates of both towers' attention projections (CVPR Workshops 2024).
//!
//! A learner's life: `create` (shapes from the model and options), an optional `prepare` that
//! sees the training and validation data and may allocate state (a cache, a closed-form fit),
//! SGD epochs when its catalogue entry says it trains by SGD, an optional `finish` (a search on
//! validation), then prediction. Its forward reads a [`Batch`]: the images, and lazily their
//! frozen features.
//!
//! Dependencies point one way: methods use the CLIP model; training uses methods (and gives
//! them its data through [`FitData`]).
pub mod batch;
pub mod catalogue;
pub mod clip_adapter;
pub mod clip_lora;
pub mod cocoop;
pub mod context;
pub mod coop;
pub mod io;
pub mod ivlp;
pub mod kgcoop;
pub mod linear_probe;
pub mod maple;
pub mod official;
pub mod promptsrc;
pub mod tip_adapter;
pub mod tip_adapter_f;
pub mod towers;
pub mod vpt;

use crate::clip::Clip;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub use batch::{Batch, FrozenTower};
pub use cocoop::{CocoopConfig, CocoopLearner, MetaNet};
pub use context::LearnedContext;
pub use coop::{ClassTokenPosition, CoopConfig, CoopContext};
pub use kgcoop::{KgcoopConfig, KgcoopLearner};
pub use linear_probe::{LinearProbe, LinearProbeConfig};

/// The optimiser of a recipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (momentum and weight decay).
    #[default]
    Sgd,
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw,
}

/// A method's training defaults: what its paper's scripts set. The shared recipe is Dassl's for
/// CoOp (SGD with momentum 0.9 and weight decay 5e-4, one constant warmup epoch, then cosine per
/// epoch); a method whose official code trains otherwise says so here (Tip-Adapter-F: AdamW,
/// cosine per batch, no warmup).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub weight_decay: f64,
    /// AdamW's epsilon (unused by SGD).
    pub eps: f64,
    /// Epochs at the constant warmup rate (1e-5) before the cosine.
    pub warmup_epochs: usize,
    /// Anneal after every batch (T_max = epochs x batches) instead of every epoch.
    pub lr_per_step: bool,
    /// The random resized crop's scale range, where the official code's differs from Dassl's
    /// (0.08, 1) (a model's own training crop, where it has one, still comes first).
    pub crop_scale: Option<(f64, f64)>,
    /// A run of this many steps per shot instead of whole epochs (CLIP-LoRA: 500 x shots
    /// iterations, the last epoch cut short); the cosine then anneals over those steps.
    pub steps_per_shot: Option<usize>,
    /// Where the cosine ends (torch's `eta_min`; Dassl's 0).
    pub min_lr: f64,
}

impl Default for Recipe {
    /// CoOp's: SGD, lr 0.002 and batch 32. Its scripts train 50 to 200 epochs depending on the
    /// shots; 50 is the 1-shot and ImageNet setting.
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 32,
            lr: 0.002,
            optimizer: OptimizerKind::Sgd,
            weight_decay: 5e-4,
            eps: 1e-8,
            warmup_epochs: 1,
            lr_per_step: false,
            crop_scale: None,
            steps_per_shot: None,
            min_lr: 0.0,
        }
    }
}

/// The one description of a learner: written into prompt files and checkpoints, compared on
/// resume, and shown to users as `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnerMeta {
    /// The registry name ("coop", "cocoop", "kgcoop", "linear-probe").
    pub method: String,
    /// The class names as the caller gave them (labels echo these; prompts use their cleaned
    /// text, see `crate::classnames`).
    pub class_names: Vec<String>,
    /// The method's options, resolved (defaults filled in, M as built): its config serialised.
    pub options: serde_json::Value,
    /// Shape of each trainable tensor, by name.
    pub params: Vec<(String, Vec<usize>)>,
}

/// A learner bound to one class list, scoring batches of images.
pub trait Scorer {
    /// Logits (B, K) for image features (B, E), without gradients.
    fn logits(&self, image_features: &Tensor) -> Result<Tensor>;

    /// Logits (B, K) of a batch: by default of its frozen features; a method that runs the image
    /// encoder itself scores the batch's pixels.
    fn batch_logits(&self, batch: &Batch<'_>) -> Result<Tensor> {
        self.logits(&batch.features()?)
    }
}

/// Loss, logits (detached) and the gradient of each trainable tensor, for one batch.
pub struct StepOutput {
    pub loss: f32,
    pub logits: Tensor,
    pub grads: Vec<Tensor>,
}

/// The training and validation data as a method's `prepare` and `finish` see it, from the
/// trainer: the usable training images (after skipUnreadable) with their labels, and their
/// frozen features on request, computed once.
pub trait FitData {
    /// Labels of the training images, in the order of every feature row below.
    fn labels(&self) -> &[usize];
    /// Center-crop image features (N, E), unnormalised.
    fn features(&mut self) -> Result<Tensor>;
    /// Features (P, N, E) of `passes` augmented views of every training image (random resized
    /// crop with `crop_scale`, the run's ratio and flip), each pass its own random stream of the
    /// run's seed.
    fn augmented_features(&mut self, passes: usize, crop_scale: (f64, f64)) -> Result<Tensor>;
    /// The validation split's center-crop features and labels, if the run has one.
    fn validation(&mut self) -> Result<Option<(Tensor, Vec<usize>)>>;
    /// `Err(Cancelled)` once the run is cancelled (long preparations check it between stages).
    fn check_cancelled(&self) -> Result<()>;
}

/// What a preparation or a closing search reports (the linear probe's C search, Tip-Adapter's
/// alpha and beta).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FitReport {
    /// One line in the user's words: what was fitted and chosen ("C = 0.3, searched on the
    /// validation split").
    pub summary: String,
    /// Free-form, method-specific details.
    pub details: serde_json::Value,
    /// Training loss and accuracy (%) of the fitted model, when the fit computes them.
    pub loss: Option<f32>,
    pub accuracy: Option<f32>,
}

/// A learner on a frozen CLIP.
pub trait Learner: Send + Sync + std::fmt::Debug {
    /// Registry name and resolved options; see [`LearnerMeta`].
    fn meta(&self) -> LearnerMeta;

    /// The trainable tensors, by name (also their names in prompt files and checkpoints).
    fn vars(&self) -> Vec<(String, Var)>;

    /// The class list the learner was built for.
    fn class_names(&self) -> &[String];

    /// Logits (B, K) of image features against the learner's own classes, differentiable in
    /// `vars()` (used by tests and by the default `loss_and_grads_scaled`).
    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor>;

    /// Mean loss of a batch with the backward pass run on the loss times `grad_scale` and the
    /// gradients divided by it again (fp16 loss scaling). This default builds the whole graph with
    /// autograd; prompt methods override it with the text encoder's own backward pass.
    fn loss_and_grads_scaled(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        let logits = self.logits(clip, image_features)?;
        let loss = crate::loss::cross_entropy(&logits, labels)?;
        let grads = (&loss * grad_scale)?.backward()?;
        let grads = self
            .vars()
            .iter()
            .map(|(name, v)| match grads.get(v.as_tensor()) {
                Some(g) => Ok((g / grad_scale)?),
                None => Err(Error::Internal(format!("no gradient reached `{name}`"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StepOutput {
            loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
            logits: logits.detach(),
            grads,
        })
    }

    /// The same without loss scaling.
    fn loss_and_grads(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
    ) -> Result<StepOutput> {
        self.loss_and_grads_scaled(clip, image_features, labels, 1.0)
    }

    /// The learner applied to `class_names` (its own when `None`). Prompt methods rebuild the
    /// class-token buffers for new names; methods whose parameters belong to their classes refuse
    /// a different list.
    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>>;

    /// The learned text context, for methods that have one (`context()`, `interpret()`).
    fn learned_context(&self) -> Option<LearnedContext> {
        None
    }

    /// What the learner's forward reads from a batch: its catalogue entry's `takes`.
    fn takes(&self) -> catalogue::Takes {
        spec(&self.meta().method).map_or(catalogue::Takes::ImageFeatures, |s| s.takes)
    }

    /// How the learner is fitted: its catalogue entry's `fitting` (SGD epochs, or one fit).
    fn fitting(&self) -> catalogue::Fitting {
        spec(&self.meta().method).map_or(catalogue::Fitting::Sgd, |s| s.fitting)
    }

    /// Whether [`Learner::scorer`] takes class names the learner was not fitted on: the method's
    /// class binding, unless its options tie the parameters to classes (class-specific context).
    fn scores_any_classes(&self) -> bool {
        spec(&self.meta().method).is_ok_and(|s| s.classes == catalogue::ClassBinding::AnyClasses)
    }

    /// Tensors saved with the learner that SGD does not train (Tip-Adapter's cache values), by
    /// name; their shapes are listed in `meta().params` after `vars()`'.
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![]
    }

    /// Before any SGD step: fit what the data decides (a closed-form fit, a cache). The default
    /// does nothing. A method whose catalogue entry says `FeatureFit` is done after this.
    fn prepare(&self, _clip: &Clip, _data: &mut dyn FitData) -> Result<Option<FitReport>> {
        Ok(None)
    }

    /// Before the first SGD epoch of a run: a learner that keeps state across the run's epochs
    /// (PromptSRC's running prompt aggregate) starts it afresh (`resumed` None) or from a
    /// checkpoint's `run_state` and its completed epochs. The default keeps nothing.
    fn start_run(&self, _resumed: Option<(&HashMap<String, Tensor>, usize)>) -> Result<()> {
        Ok(())
    }

    /// After each SGD epoch (`epoch` from 0, of `epochs`), before its checkpoint. The default
    /// does nothing.
    fn epoch_end(&self, _epoch: usize, _epochs: usize) -> Result<()> {
        Ok(())
    }

    /// The run's state kept across epochs, by name: written into checkpoints so that a resumed
    /// run ends bit for bit where an uninterrupted one does (not saved with the learner).
    fn run_state(&self) -> Vec<(String, Tensor)> {
        vec![]
    }

    /// After the last SGD step (a resumed run too): choose what validation decides (Tip-Adapter-F's
    /// alpha and beta). The default does nothing.
    fn finish(&self, _clip: &Clip, _data: &mut dyn FitData) -> Result<Option<FitReport>> {
        Ok(None)
    }

    /// Mean loss of a batch and its gradients (see [`Learner::loss_and_grads_scaled`]): what the
    /// trainer calls. The default reads the batch's frozen features; a method that runs the image
    /// encoder itself reads its pixels.
    fn batch_loss_and_grads(
        &self,
        clip: &Clip,
        batch: &Batch<'_>,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        self.loss_and_grads_scaled(clip, &batch.features()?, labels, grad_scale)
    }
}

/// A number as a one-line account shows it: 4 significant digits, shortest form (0.238, not
/// 0.23800000000000002; 100000, not 100000.0; 0.000001).
pub fn shown(v: f64) -> String {
    let rounded: f64 = format!("{v:.3e}").parse().unwrap_or(v);
    format!("{rounded}")
}

/// A learner of any method.
pub type BoxedLearner = Box<dyn Learner>;

/// Runtime settings that are not part of what a learner is (not saved with it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Runtime {
    /// Activation memory (MiB) a training step may keep at once: the text encoder's when a method
    /// builds prompts per image (CoCoOp), the image tower's tape when a method puts prompts inside
    /// it (VPT, IVLP, MaPLe, PromptSRC); batches are chunked to fit.
    pub memory_budget_mb: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            memory_budget_mb: 2048,
        }
    }
}

/// One registry entry: what the method is (its catalogue entry, see [`catalogue`]) and how to
/// build its learner from options or from a saved file.
pub struct MethodSpec {
    pub name: &'static str,
    /// As tables and reports print it ("CoOp").
    pub title: &'static str,
    /// Authors, title and venue of the paper.
    pub paper: &'static str,
    pub takes: catalogue::Takes,
    pub fitting: catalogue::Fitting,
    pub classes: catalogue::ClassBinding,
    /// Whether fitting uses a validation split (to choose hyperparameters).
    pub uses_validation: bool,
    /// The options that, when all set, make the validation split unneeded (the linear probe's C).
    pub validation_unless: &'static [&'static str],
    /// The option that takes the dataset's hand-made template, if any.
    pub template_option: Option<&'static str>,
    /// The options users may set, documented (the config's other fields are internal).
    pub options: &'static [catalogue::OptionDoc],
    /// The options' defaults: the config's `Default`, serialised.
    pub defaults: fn() -> serde_json::Value,
    /// The training recipe for a protocol's shots and dataset (any shots: a plain `fit`).
    pub recipe: fn(catalogue::RecipeFor<'_>) -> Recipe,
    /// A new learner for `class_names` from the method's options (JSON; missing fields take the
    /// method's defaults, unknown ones are refused).
    pub create: fn(&Clip, &[String], serde_json::Value, Runtime) -> Result<BoxedLearner>,
    /// A learner from saved metadata and tensors (shapes already checked against `meta.params`).
    pub restore: fn(&Clip, &LearnerMeta, &HashMap<String, Tensor>, Runtime) -> Result<BoxedLearner>,
    /// Its tensors under the official code's state-dict names, for importing and exporting
    /// prompts trained there ([`official`]); None for methods whose official code keeps no such
    /// file (the adapters' caches are fitted on data, the linear probe is scikit-learn's).
    pub official: Option<&'static official::Official>,
}

/// Every method promptclip has, in the order tables list them: the baseline, then by year.
pub static METHODS: &[MethodSpec] = &[
    linear_probe::SPEC,
    coop::SPEC,
    cocoop::SPEC,
    kgcoop::SPEC,
    clip_adapter::SPEC,
    tip_adapter::SPEC,
    tip_adapter_f::SPEC,
    vpt::SPEC,
    ivlp::SPEC,
    maple::SPEC,
    promptsrc::SPEC,
    clip_lora::SPEC,
];

pub fn spec(name: &str) -> Result<&'static MethodSpec> {
    METHODS.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = METHODS.iter().map(|s| s.name).collect();
        Error::InvalidArgument(format!(
            "method `{name}`: expected one of {}",
            known.join(", ")
        ))
    })
}

/// The recipe of `learner`'s method for a protocol's shots and dataset.
pub fn recipe_of(learner: &dyn Learner, r: catalogue::RecipeFor<'_>) -> Result<Recipe> {
    Ok((spec(&learner.meta().method)?.recipe)(r))
}

/// A new learner of method `name`.
pub fn create(
    clip: &Clip,
    name: &str,
    class_names: &[String],
    options: serde_json::Value,
    runtime: Runtime,
) -> Result<BoxedLearner> {
    (spec(name)?.create)(clip, class_names, options, runtime)
}

/// A method's options from JSON: missing fields take the defaults, a wrong type or an unknown
/// field is an error that names the field. (Unknown fields are found by comparing with the
/// parsed options serialised back, because serde's own check does not work with the flattened
/// context options that CoCoOp and KgCoOp share with CoOp.)
pub fn parse_options<T: serde::de::DeserializeOwned + Serialize>(
    what: &str,
    options: serde_json::Value,
) -> Result<T> {
    let options = if options.is_null() {
        serde_json::json!({})
    } else {
        options
    };
    // serde would read an array positionally, as the fields in declaration order.
    if !options.is_object() {
        return Err(Error::InvalidArgument(format!(
            "{what} options must be an object, got {options}"
        )));
    }
    let parsed: T = serde_path_to_error::deserialize(options.clone()).map_err(|e| {
        // Inside the flattened context options serde loses the path (it reports `.`): the field
        // at fault is then the given one that fails on its own.
        let path = match (e.path().iter().next(), options.as_object()) {
            (None, Some(given)) => given.iter().find(|(k, v)| {
                let alone: serde_json::Map<String, serde_json::Value> =
                    [((*k).clone(), (*v).clone())].into_iter().collect();
                serde_json::from_value::<T>(serde_json::Value::Object(alone)).is_err()
            }),
            _ => None,
        }
        .map_or_else(|| e.path().to_string(), |(k, _)| k.clone());
        let given = options.get(&path).and_then(|v| v.as_f64());
        match given {
            Some(v) if expects_whole(&e.inner().to_string()) => Error::InvalidArgument(format!(
                "{what} options: {path}: must be a whole number from 0 to {}, got {v}",
                u32::MAX
            )),
            _ => Error::InvalidArgument(format!("{what} options: {path}: {}", e.inner())),
        }
    })?;
    let known = options_json(&parsed);
    if let (Some(given), Some(known)) = (options.as_object(), known.as_object()) {
        if let Some(field) = given.keys().find(|k| !known.contains_key(*k)) {
            let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(Error::InvalidArgument(format!(
                "{what} options: unknown field `{field}`, expected one of {}",
                names.join(", ")
            )));
        }
    }
    Ok(parsed)
}

/// Whether serde refused a number for an unsigned integer field. JavaScript numbers reach the
/// core as JSON: whole numbers up to 2^32 - 1 as integers, negative ones as negative integers,
/// and anything else (fractions, and whole numbers of 2^32 and above) as floats, which the
/// integer fields refuse rather than truncate or wrap. NaN and the infinities have no JSON form
/// and are refused before this (by the binding, or when a config is validated).
fn expects_whole(serde_message: &str) -> bool {
    ["expected usize", "expected u64", "expected u32"]
        .iter()
        .any(|t| serde_message.contains(t))
}

/// A config back to the JSON stored in [`LearnerMeta::options`].
pub(crate) fn options_json<T: Serialize>(config: &T) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

/// A restored tensor by name (`io` has checked every name and shape in `meta.params`; a file
/// whose `params` leave out one its method needs is damaged, not a bug).
pub(crate) fn saved(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors.get(name).cloned().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the learner's metadata does not list its tensor `{name}` among its params"
        ))
    })
}

pub(crate) fn param_shapes(vars: &[(String, Var)]) -> Vec<(String, Vec<usize>)> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect()
}

/// Loss, logits and the gradient of each var for prompts built from those vars.
///
/// `prompts` (N, T, d) is the autograd graph from the learner's parameters to the prompt
/// embeddings (cheap: concatenations, CoCoOp's Meta-Net); the text encoder between the prompts
/// and `head` runs its own training pass (`Clip::text_features_train`), and `head` maps the
/// text features (N, E) to (loss, logits) with autograd. The three pieces are chained by hand:
/// d loss / d features from `head`, through the encoder's backward to d loss / d prompts, then
/// through the graph to the vars, by differentiating <prompts, d loss / d prompts>.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prompt_loss_and_grads(
    clip: &Clip,
    prompts: &Tensor,
    eot: &[usize],
    shared: usize,
    group_size: usize,
    vars: &[(String, Var)],
    grad_scale: f64,
    head: impl FnOnce(&Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
    let (features, tape) = clip.text_features_train(prompts, eot, shared, group_size)?;
    let features = Var::from_tensor(&features)?;
    let (loss, logits) = head(features.as_tensor())?;
    // Loss scaling (fp16): the loss is scaled before its backward pass, so the gradient is already
    // scaled up where it is cast to the features' dtype and enters the encoder's backward pass...
    let d_features = (&loss * grad_scale)?
        .backward()?
        .remove(features.as_tensor())
        .ok_or_else(|| Error::Internal("the loss does not depend on the text features".into()))?;
    let d_prompts = clip.text_features_backward(&tape, &d_features)?;
    // Only the surrogate's gradient is used; summing rows first keeps its forward value cheap
    // (candle's whole-tensor sum runs in a single block on the GPU).
    let surrogate = (prompts * d_prompts.to_dtype(prompts.dtype())?.detach())?
        .sum(D::Minus1)?
        .sum_all()?;
    let mut grads = surrogate.backward()?;
    // ...and leaves it scaled down again, in the parameters' own dtype (fp32).
    let grads = vars
        .iter()
        .map(|(name, v)| match grads.remove(v.as_tensor()) {
            Some(g) => Ok((g / grad_scale)?),
            None => Err(Error::Internal(format!("no gradient reached `{name}`"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, logits.detach(), grads))
}

/// Class probabilities of images under a learner, for its own classes or `class_names`.
pub struct Predictions {
    pub num_classes: usize,
    /// Input index of each row of `probs`.
    pub indices: Vec<usize>,
    /// Row-major (indices.len(), num_classes).
    pub probs: Vec<f32>,
    pub failures: Vec<(usize, Error)>,
}

/// Predict in batches of `batch_size` images; `on_progress(done, total)` after each batch.
pub fn predict(
    clip: &Clip,
    learner: &dyn Learner,
    sources: &[crate::preprocess::ImageSource],
    class_names: Option<&[String]>,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Predictions> {
    let mut report = |done, total| {
        on_progress(done, total);
        Ok(())
    };
    predict_with_progress(clip, learner, sources, class_names, batch_size, &mut report)
}

/// `predict`, where an error from `on_progress` stops the work between batches and becomes the
/// call's (the binding stops this way once a JavaScript progress callback has thrown).
pub fn predict_with_progress(
    clip: &Clip,
    learner: &dyn Learner,
    sources: &[crate::preprocess::ImageSource],
    class_names: Option<&[String]>,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Predictions> {
    let scorer = learner.scorer(clip, class_names)?;
    let num_classes = class_names.map_or(learner.class_names().len(), |n| n.len());
    // A huge batch size runs in chunks that fit memory (issue 23).
    let batch_size = crate::features::inference_batch_size(
        clip,
        batch_size,
        crate::features::INFERENCE_MEMORY_BUDGET_MB,
    );
    let mut out = Predictions {
        num_classes,
        indices: vec![],
        probs: vec![],
        failures: vec![],
    };
    for (b, chunk) in sources.chunks(batch_size).enumerate() {
        let p = crate::features::preprocess_chunk(clip, chunk)?;
        out.failures
            .extend(p.failures.into_iter().map(|(i, e)| (b * batch_size + i, e)));
        if let Some(pixels) = p.pixels {
            // The learner scores the images: its own forward reads their pixels or features.
            let batch = Batch::of_pixels(pixels, FrozenTower::Clip(clip), batch_size)?;
            let logits = scorer.batch_logits(&batch)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
            out.probs.extend(probs.flatten_all()?.to_vec1::<f32>()?);
            out.indices
                .extend(p.indices.iter().map(|i| b * batch_size + i));
        }
        on_progress(((b + 1) * batch_size).min(sources.len()), sources.len())?;
    }
    Ok(out)
}
