//! Tip-Adapter (Zhang et al., ECCV 2022), training-free: a key-value cache of the few-shot
//! training set beside zero-shot CLIP (the official utils.py and main.py):
//!
//!   keys   = normalize(mean over P augmented passes of the raw image features)   (N, E)
//!   values = one_hot(labels)                                                      (N, K)
//!   logits = 100 f Wᵀ + alpha exp(-beta (1 - f keysᵀ)) values,   f = normalize(image feature)
//!
//! with W the classifier of the hand-made templates (each normalised, averaged, normalised
//! again) and the fixed 100 of the official code, not the model's logit scale. alpha and beta are
//! searched on the validation split (beta the outer loop, alpha the inner, the first strictly
//! better accuracy wins) unless both are given. The cache holds only the classes it was fitted
//! on: the learner cannot score new class names (without a cache, before `fit`, it is zero-shot
//! CLIP with those templates).
//!
//! Tip-Adapter-F (`tip_adapter_f`) fine-tunes the keys; the cache, the logits and the search
//! here are shared with it.
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes};
use super::coop::own_classes_only;
use super::{FitData, FitReport, Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer};
use crate::clip::{l2_normalize, Clip};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;

/// The official cache's augmentation: RandomResizedCrop(scale=(0.5, 1)) and a flip.
pub const CACHE_CROP_SCALE: (f64, f64) = (0.5, 1.0);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TipAdapterConfig {
    /// The hand-made templates of the zero-shot classifier, `{}` for the class name.
    pub templates: Vec<String>,
    /// Augmented passes over the training images whose features the keys average (the
    /// official 10).
    pub augment_passes: usize,
    /// The cache's weight; `None`: searched on the validation split.
    pub alpha: Option<f64>,
    /// The affinity's sharpness; `None`: searched on the validation split.
    pub beta: Option<f64>,
    /// The search grid: beta_i = 0.1 + i (betaScale - 0.1) / betaSteps for i < betaSteps, alpha
    /// alike (the official search_scale [7, 3] and search_step [200, 20] of ImageNet's config).
    pub beta_scale: f64,
    pub alpha_scale: f64,
    pub beta_steps: usize,
    pub alpha_steps: usize,
}

impl Default for TipAdapterConfig {
    fn default() -> Self {
        Self {
            templates: vec![crate::zeroshot::DEFAULT_TEMPLATE.into()],
            augment_passes: 10,
            alpha: None,
            beta: None,
            beta_scale: 7.0,
            alpha_scale: 3.0,
            beta_steps: 200,
            alpha_steps: 20,
        }
    }
}

impl TipAdapterConfig {
    pub fn validate(&self) -> Result<()> {
        crate::zeroshot::validate_templates(&self.templates)?;
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.augment_passes == 0 {
            return bad("augmentPasses must be at least 1, got 0".into());
        }
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return bad(format!(
                        "{name} must be a finite number, at least 0, got {v}"
                    ));
                }
            }
        }
        for (name, v) in [
            ("betaScale", self.beta_scale),
            ("alphaScale", self.alpha_scale),
        ] {
            if !(v.is_finite() && v > 0.1) {
                return bad(format!("{name} must be a finite number above 0.1, got {v}"));
            }
        }
        for (name, v) in [
            ("betaSteps", self.beta_steps),
            ("alphaSteps", self.alpha_steps),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1, got 0"));
            }
        }
        Ok(())
    }

    /// Whether alpha and beta are searched on validation (one of them is not given).
    pub fn searches(&self) -> bool {
        self.alpha.is_none() || self.beta.is_none()
    }

    /// The betas searched: the grid, or the one given.
    pub fn betas(&self) -> Vec<f64> {
        self.beta
            .map_or_else(|| grid(self.beta_scale, self.beta_steps), |b| vec![b])
    }

    /// The alphas searched: the grid, or the one given.
    pub fn alphas(&self) -> Vec<f64> {
        self.alpha
            .map_or_else(|| grid(self.alpha_scale, self.alpha_steps), |a| vec![a])
    }
}

/// The cache: its keys (trainable in Tip-Adapter-F), its values and the chosen alpha and beta.
#[derive(Debug, Clone)]
pub struct Cache {
    /// (N, E), normalised rows.
    pub keys: Var,
    /// (N, K) one-hot, f32.
    pub values: Tensor,
    pub alpha: f64,
    pub beta: f64,
}

impl Cache {
    /// The cache of a learner's training data: keys from the augmented passes' features
    /// (P, N, E), values from the labels.
    pub fn build(augmented: &Tensor, labels: &[usize], k: usize) -> Result<Self> {
        // The mean of the raw features, then normalised (not the mean of normalised features).
        let keys = l2_normalize(&augmented.to_dtype(DType::F32)?.mean(0)?)?;
        let values = one_hot(labels, k, keys.device())?;
        Ok(Self {
            keys: Var::from_tensor(&keys)?,
            values,
            alpha: 1.0,
            beta: 1.0,
        })
    }

    /// The saved tensors (`cacheValues`, `alphaBeta`; the keys are named by the learner).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let ab = Tensor::new(&[self.alpha as f32, self.beta as f32], self.values.device())?;
        Ok(vec![
            ("cacheValues".into(), self.values.clone()),
            ("alphaBeta".into(), ab),
        ])
    }

    pub fn restore(tensors: &HashMap<String, Tensor>) -> Result<Option<Self>> {
        let (Some(keys), Some(values), Some(ab)) = (
            tensors.get("cacheKeys"),
            tensors.get("cacheValues"),
            tensors.get("alphaBeta"),
        ) else {
            return Ok(None);
        };
        let ab = ab.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if ab.len() != 2 || keys.dim(0)? != values.dim(0)? {
            return Err(Error::InvalidArgument(format!(
                "a Tip-Adapter cache needs as many keys as values and alpha and beta, got {:?} keys, {:?} values and {} numbers",
                keys.dims(),
                values.dims(),
                ab.len()
            )));
        }
        Ok(Some(Self {
            keys: Var::from_tensor(&keys.to_dtype(DType::F32)?)?,
            values: values.to_dtype(DType::F32)?,
            alpha: ab[0] as f64,
            beta: ab[1] as f64,
        }))
    }

    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        vec![
            ("cacheKeys".into(), self.keys.dims().to_vec()),
            ("cacheValues".into(), self.values.dims().to_vec()),
            ("alphaBeta".into(), vec![2]),
        ]
    }
}

/// (N, K) one-hot rows of `labels`, f32.
fn one_hot(labels: &[usize], k: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * k];
    for (i, &l) in labels.iter().enumerate() {
        v[i * k + l] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), k), device)?)
}

/// exp(-beta (1 - affinity)) values: the official `((-1) * (beta - beta * affinity)).exp() @
/// cache_values`, in its order of operations.
pub fn cache_logits(affinity: &Tensor, values: &Tensor, beta: f64) -> Result<Tensor> {
    let scaled = (affinity * beta)?; // beta * affinity
    let inner = scaled.affine(-1.0, beta)?; // beta - beta * affinity
    Ok(inner.neg()?.exp()?.matmul(values)?)
}

/// Zero-shot logits with the fixed 100: 100 f Wᵀ for normalised features f (B, E).
pub fn clip_logits(features: &Tensor, text: &Tensor) -> Result<Tensor> {
    Ok((features.matmul(&text.t()?)? * 100.0)?)
}

/// Tip-Adapter's logits for normalised features (B, E) with keys (N, E), differentiable in the
/// keys: 100 f Wᵀ + alpha exp(-beta (1 - f keysᵀ)) values.
pub fn tip_logits(
    features: &Tensor,
    text: &Tensor,
    cache: &Cache,
    keys: &Tensor,
) -> Result<Tensor> {
    let affinity = features.matmul(&keys.t()?)?; // (B, N)
    let clip = clip_logits(features, text)?; // (B, K)
    Ok((clip + (cache_logits(&affinity, &cache.values, cache.beta)? * cache.alpha)?)?)
}

/// Image features (B, E) of any dtype as the official code scores them: f32, normalised.
pub fn normalized(image_features: &Tensor) -> Result<Tensor> {
    l2_normalize(&image_features.to_dtype(DType::F32)?)
}

/// The grid `[0.1 + i (scale - 0.1) / steps for i < steps]`, as the official computes it.
pub fn grid(scale: f64, steps: usize) -> Vec<f64> {
    (0..steps)
        .map(|i| i as f64 * (scale - 0.1) / steps as f64 + 0.1)
        .collect()
}

/// What the search on validation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub alpha: f64,
    pub beta: f64,
    /// Validation accuracy (%) at the best point.
    pub accuracy: f64,
    /// Every grid point's accuracy, [beta][alpha].
    pub grid: Vec<Vec<f64>>,
}

/// The official `search_hp`: for beta in the betas (outer), for alpha in the alphas (inner), the
/// validation accuracy of the logits; only a strictly higher accuracy replaces the best, which
/// starts at accuracy 0 with alpha = beta = 0. `features` are normalised (V, E).
pub fn search(
    features: &Tensor,
    labels: &[usize],
    text: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    betas: &[f64],
    alphas: &[f64],
) -> Result<Search> {
    let affinity = features.matmul(&keys.t()?)?; // (V, N)
    let zero_shot = clip_logits(features, text)?.to_vec2::<f32>()?; // (V, K)
    let mut best = Search {
        alpha: 0.0,
        beta: 0.0,
        accuracy: 0.0,
        grid: Vec::with_capacity(betas.len()),
    };
    for &beta in betas {
        // The cache's logits depend on beta only: once per beta, as alpha scales them.
        let cached = cache_logits(&affinity, values, beta)?.to_vec2::<f32>()?;
        let mut row = Vec::with_capacity(alphas.len());
        for &alpha in alphas {
            let a = alpha as f32;
            let correct = zero_shot
                .iter()
                .zip(&cached)
                .zip(labels)
                .filter(|((z, c), &l)| {
                    let logits = z.iter().zip(c.iter()).map(|(z, c)| z + c * a);
                    argmax(logits) == l
                })
                .count();
            let acc = 100.0 * correct as f64 / labels.len() as f64;
            row.push(acc);
            if acc > best.accuracy {
                (best.accuracy, best.beta, best.alpha) = (acc, beta, alpha);
            }
        }
        best.grid.push(row);
    }
    Ok(best)
}

/// The first index of the largest value (torch's topk(1) on distinct values).
fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// alpha and beta of `config` where given, the search on validation otherwise; and what to report.
pub fn choose(
    data: &mut dyn FitData,
    text: &Tensor,
    cache: &Cache,
    config: &TipAdapterConfig,
    what: &str,
) -> Result<((f64, f64), serde_json::Value)> {
    if let (Some(alpha), Some(beta)) = (config.alpha, config.beta) {
        return Ok((
            (alpha, beta),
            serde_json::json!({ "alpha": alpha, "beta": beta }),
        ));
    }
    let (features, labels) = data.validation()?.ok_or_else(|| missing_validation(what))?;
    data.check_cancelled()?;
    let features = normalized(&features)?;
    // A given alpha or beta is kept: the grid of the other is searched with it.
    let (betas, alphas) = (config.betas(), config.alphas());
    let s = search(
        &features,
        &labels,
        text,
        cache.keys.as_tensor(),
        &cache.values,
        &betas,
        &alphas,
    )?;
    let details = serde_json::json!({
        "alpha": s.alpha,
        "beta": s.beta,
        "validationAccuracy": s.accuracy,
        "searched": { "betas": betas.len(), "alphas": alphas.len() },
    });
    Ok(((s.alpha, s.beta), details))
}

pub fn missing_validation(what: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} searches alpha and beta on a validation set: pass one, or set both alpha and beta"
    ))
}

/// What Tip-Adapter and Tip-Adapter-F share: the class list, the templates' classifier and the
/// cache, allocated by `prepare` (its size is the training set's), scoring only those classes.
#[derive(Debug)]
pub struct CacheModel {
    class_names: Vec<String>,
    /// (K, E) normalised: the templates' classifier of the learner's own classes.
    text: Tensor,
    cache: RwLock<Option<Cache>>,
}

impl CacheModel {
    pub fn new(
        clip: &Clip,
        class_names: &[String],
        templates: &[String],
        cache: Option<Cache>,
    ) -> Result<Self> {
        let text = classifier(clip, class_names, templates)?;
        if let Some(c) = &cache {
            check_cache(c, clip, class_names.len())?;
        }
        Ok(Self {
            class_names: class_names.to_vec(),
            text,
            cache: RwLock::new(cache),
        })
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The templates' classifier (K, E).
    pub fn text(&self) -> &Tensor {
        &self.text
    }

    /// The fitted cache, if any.
    pub fn cache(&self) -> Option<Cache> {
        self.cache.read().ok().and_then(|c| c.clone())
    }

    pub fn set_cache(&self, cache: Cache) -> Result<()> {
        *self
            .cache
            .write()
            .map_err(|_| Error::Internal("the Tip-Adapter cache lock".into()))? = Some(cache);
        Ok(())
    }

    /// The cache's tensors as `meta().params` lists them (none before a fit).
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.cache().map(|c| c.shapes()).unwrap_or_default()
    }

    /// Logits of image features (B, E) against the learner's classes, differentiable in the
    /// keys; without a cache, zero-shot CLIP with the templates.
    pub fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        let f = normalized(image_features)?;
        match self.cache() {
            Some(c) => tip_logits(&f, &self.text, &c, c.keys.as_tensor()),
            None => clip_logits(&f, &self.text),
        }
    }

    /// The scorer of the learner's own classes (`what` names the learner when another list is
    /// asked for).
    pub fn scorer(
        &self,
        what: &str,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + '_>> {
        match class_names {
            Some(names) if names != self.class_names.as_slice() => {
                Err(cache_classes_only(what, &self.class_names))
            }
            _ => Ok(Box::new(CacheScorer(self))),
        }
    }

    /// A cache from `config.augmentPasses` augmented passes over the training images (alpha and
    /// beta at 1), refused before any work when the search that follows would have no
    /// validation split (`what` names the learner).
    pub fn build(
        &self,
        data: &mut dyn FitData,
        config: &TipAdapterConfig,
        what: &str,
    ) -> Result<Cache> {
        if config.searches() && data.validation()?.is_none() {
            return Err(missing_validation(what));
        }
        let augmented = data.augmented_features(config.augment_passes, CACHE_CROP_SCALE)?;
        Cache::build(&augmented, data.labels(), self.class_names.len())
    }
}

struct CacheScorer<'a>(&'a CacheModel);

impl Scorer for CacheScorer<'_> {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        Ok(self.0.logits(image_features)?.detach())
    }
}

#[derive(Debug)]
pub struct TipAdapter {
    pub config: TipAdapterConfig,
    pub model: CacheModel,
}

impl TipAdapter {
    pub fn new(clip: &Clip, class_names: &[String], config: TipAdapterConfig) -> Result<Self> {
        Self::with_cache(clip, class_names, config, None)
    }

    pub fn with_cache(
        clip: &Clip,
        class_names: &[String],
        config: TipAdapterConfig,
        cache: Option<Cache>,
    ) -> Result<Self> {
        config.validate()?;
        let model = CacheModel::new(clip, class_names, &config.templates, cache)?;
        Ok(Self { config, model })
    }
}

/// The templates' classifier (K, E), f32: CLIP's prompt ensembling, as the official
/// `clip_classifier` (class names with '_' read as spaces).
pub fn classifier(clip: &Clip, class_names: &[String], templates: &[String]) -> Result<Tensor> {
    Ok(crate::zeroshot::class_embeddings(clip, class_names, templates)?.to_dtype(DType::F32)?)
}

/// A restored cache must fit the model and the classes.
pub fn check_cache(cache: &Cache, clip: &Clip, k: usize) -> Result<()> {
    let (e, keys, values) = (clip.embed_dim(), cache.keys.dims(), cache.values.dims());
    if keys.len() != 2 || keys[1] != e || values != [keys[0], k] {
        return Err(Error::InvalidArgument(format!(
            "the Tip-Adapter cache has keys {keys:?} and values {values:?}; this CLIP and class list need (N, {e}) and (N, {k})"
        )));
    }
    Ok(())
}

/// The cache's classes only: a different class list has no keys in the cache.
pub fn cache_classes_only(what: &str, own: &[String]) -> Error {
    let e = own_classes_only(what, own);
    Error::InvalidArgument(format!(
        "{e}: its cache holds only the few-shot images of those classes (use zero-shot CLIP, or a prompt method such as coop, for new class names)"
    ))
}

impl Learner for TipAdapter {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.model.class_names().to_vec(),
            options: super::options_json(&self.config),
            params: self.model.shapes(),
        }
    }

    /// Nothing is trained: the cache is state.
    fn vars(&self) -> Vec<(String, Var)> {
        vec![]
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let Some(c) = self.model.cache() else {
            return vec![];
        };
        let mut out = vec![("cacheKeys".to_string(), c.keys.as_tensor().clone())];
        out.extend(c.state().unwrap_or_default());
        out
    }

    fn class_names(&self) -> &[String] {
        self.model.class_names()
    }

    fn logits(&self, _clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        self.model.logits(image_features)
    }

    fn scorer<'a>(
        &'a self,
        _clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        self.model.scorer("a Tip-Adapter", class_names)
    }

    /// The cache from `augmentPasses` augmented passes, then alpha and beta.
    fn prepare(&self, _clip: &Clip, data: &mut dyn FitData) -> Result<Option<FitReport>> {
        let mut cache = self.model.build(data, &self.config, "Tip-Adapter")?;
        let ((alpha, beta), mut details) =
            choose(data, self.model.text(), &cache, &self.config, "Tip-Adapter")?;
        (cache.alpha, cache.beta) = (alpha, beta);
        let size = cache.keys.dims()[0];
        details["cacheSize"] = size.into();
        details["augmentPasses"] = self.config.augment_passes.into();
        let summary = format!(
            "a cache of {size} images ({} augmented passes); {}",
            self.config.augment_passes,
            chosen(&details)
        );
        self.model.set_cache(cache)?;
        Ok(Some(FitReport {
            summary,
            details,
            loss: None,
            accuracy: None,
        }))
    }
}

/// alpha and beta as `choose` reports them, in words.
pub fn chosen(details: &serde_json::Value) -> String {
    let number = |k: &str| super::shown(details[k].as_f64().unwrap_or(f64::NAN));
    let (a, b) = (number("alpha"), number("beta"));
    match details["validationAccuracy"].as_f64() {
        Some(acc) => {
            format!("alpha {a} and beta {b}, searched on the validation split (accuracy {acc:.1}%)")
        }
        None => format!("alpha {a} and beta {b}, as given"),
    }
}

pub(crate) const TEMPLATES: OptionDoc = OptionDoc {
    name: "templates",
    kind: OptionKind::StringList,
    doc:
        "the zero-shot classifier's hand-made templates, {} for the class name (several: ensembled)",
    flag: None,
};
pub(crate) const AUGMENT_PASSES: OptionDoc = OptionDoc {
    name: "augmentPasses",
    kind: OptionKind::Integer { min: 1 },
    doc: "augmented passes over the training images whose features the cache keys average",
    flag: Some("--augment-passes"),
};
pub(crate) const ALPHA: OptionDoc = OptionDoc {
    name: "alpha",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "the cache's weight (default: searched on the validation split)",
    flag: Some("--alpha"),
};
pub(crate) const BETA: OptionDoc = OptionDoc {
    name: "beta",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "the affinity's sharpness (default: searched on the validation split)",
    flag: Some("--beta"),
};
pub(crate) const BETA_SCALE: OptionDoc = OptionDoc {
    name: "betaScale",
    kind: OptionKind::Number {
        exclusive_min: Some(0.1),
    },
    doc: "the beta grid's upper end (the official search_scale[0])",
    flag: None,
};
pub(crate) const ALPHA_SCALE: OptionDoc = OptionDoc {
    name: "alphaScale",
    kind: OptionKind::Number {
        exclusive_min: Some(0.1),
    },
    doc: "the alpha grid's upper end (the official search_scale[1])",
    flag: None,
};
pub(crate) const BETA_STEPS: OptionDoc = OptionDoc {
    name: "betaSteps",
    kind: OptionKind::Integer { min: 1 },
    doc: "points of the beta grid (the official search_step[0])",
    flag: None,
};
pub(crate) const ALPHA_STEPS: OptionDoc = OptionDoc {
    name: "alphaSteps",
    kind: OptionKind::Integer { min: 1 },
    doc: "points of the alpha grid (the official search_step[1])",
    flag: None,
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "tip-adapter",
    title: "Tip-Adapter",
    paper: "Zhang, Zhang, Fang, Gao, Li, Dai, Qiao, Li: Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification (ECCV 2022)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::FeatureFit,
    classes: ClassBinding::OwnClasses,
    uses_validation: true,
    validation_unless: &["alpha", "beta"],
    template_option: Some("templates"),
    options: &[
        TEMPLATES,
        AUGMENT_PASSES,
        ALPHA,
        BETA,
        BETA_SCALE,
        ALPHA_SCALE,
        BETA_STEPS,
        ALPHA_STEPS,
    ],
    defaults: || super::options_json(&TipAdapterConfig::default()),
    recipe: |_: RecipeFor<'_>| Recipe::default(),
    create: |clip, names, options, _runtime: Runtime| {
        let config: TipAdapterConfig = super::parse_options("tip-adapter", options)?;
        Ok(Box::new(TipAdapter::new(clip, names, config)?))
    },
    restore: |clip, meta, tensors, _runtime| {
        let config: TipAdapterConfig = super::parse_options("tip-adapter", meta.options.clone())?;
        let cache = Cache::restore(tensors)?;
        Ok(Box::new(TipAdapter::with_cache(
            clip,
            &meta.class_names,
            config,
            cache,
        )?))
    },
    official: None,
};
