//! Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter's cache with its keys fine-tuned (the
//! official main.py, run_tip_adapter_F). The keys become a trainable linear layer initialised
//! from the cache, trained with alpha and beta held at their initial values:
//!
//!   logits = 100 f Wᵀ + alpha₀ exp(-beta₀ (1 - f Kᵀ)) values,   K trainable (N, E)
//!
//! by AdamW (lr 0.001, eps 1e-4, weight decay 0.01), batch 256, cosine per batch over 20 epochs
//! on augmented crops; then alpha and beta are searched on the validation split with the trained
//! keys. The official code keeps the epoch with the best *test* accuracy; this one keeps the last
//! state and chooses alpha and beta on validation only, never on test data.
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes};
use super::tip_adapter::{
    choose, chosen, clip_logits, normalized, Cache, CacheModel, TipAdapterConfig, ALPHA,
    ALPHA_SCALE, ALPHA_STEPS, AUGMENT_PASSES, BETA, BETA_SCALE, BETA_STEPS, CACHE_CROP_SCALE,
    TEMPLATES,
};
use super::{
    FitData, FitReport, Learner, LearnerMeta, MethodSpec, OptimizerKind, Recipe, Runtime, Scorer,
    StepOutput,
};
use crate::clip::Clip;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TipAdapterFConfig {
    #[serde(flatten)]
    pub cache: TipAdapterConfig,
    /// alpha and beta while the keys train (the official init_alpha, init_beta).
    pub init_alpha: f64,
    pub init_beta: f64,
}

impl Default for TipAdapterFConfig {
    fn default() -> Self {
        Self {
            cache: TipAdapterConfig::default(),
            init_alpha: 1.0,
            init_beta: 1.0,
        }
    }
}

#[derive(Debug)]
pub struct TipAdapterF {
    pub config: TipAdapterFConfig,
    pub model: CacheModel,
}

impl TipAdapterF {
    pub fn new(
        clip: &Clip,
        class_names: &[String],
        config: TipAdapterFConfig,
        cache: Option<Cache>,
    ) -> Result<Self> {
        config.cache.validate()?;
        for (name, v) in [
            ("initAlpha", config.init_alpha),
            ("initBeta", config.init_beta),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be a finite number, at least 0, got {v}"
                )));
            }
        }
        let model = CacheModel::new(clip, class_names, &config.cache.templates, cache)?;
        Ok(Self { config, model })
    }
}

impl Learner for TipAdapterF {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.model.class_names().to_vec(),
            options: super::options_json(&self.config),
            params: self.model.shapes(),
        }
    }

    /// The cache keys, once the cache is built.
    fn vars(&self) -> Vec<(String, Var)> {
        self.model
            .cache()
            .map(|c| vec![("cacheKeys".to_string(), c.keys)])
            .unwrap_or_default()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.model
            .cache()
            .and_then(|c| c.state().ok())
            .unwrap_or_default()
    }

    fn class_names(&self) -> &[String] {
        self.model.class_names()
    }

    fn logits(&self, _clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        self.model.logits(image_features)
    }

    /// The step's loss and d loss / d keys, the backward pass written out (the official's
    /// autograd graph, without its bookkeeping): with A = f Kᵀ, E = exp(-beta (1 - A)),
    /// logits = 100 f Wᵀ + alpha E values and G = (softmax(logits) - onehot) / B,
    ///   dE = alpha G valuesᵀ,   dA = beta dE ⊙ E,   dK = dAᵀ f.
    /// Everything runs in f32 (the keys' dtype), so no loss scaling is needed.
    fn loss_and_grads_scaled(
        &self,
        _clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        _grad_scale: f64,
    ) -> Result<StepOutput> {
        let cache = self.model.cache().ok_or_else(|| {
            Error::Internal("Tip-Adapter-F trains once its cache is built".into())
        })?;
        let (alpha, beta) = (cache.alpha, cache.beta);
        let f = normalized(image_features)?; // (B, E)
        let keys = cache.keys.as_tensor().detach(); // (N, E)
        let affinity = f.matmul(&keys.t()?)?; // (B, N)
        let e = (&affinity * beta)?.affine(-1.0, beta)?.neg()?.exp()?; // (B, N)
        let logits = (clip_logits(&f, self.model.text())? + (e.matmul(&cache.values)? * alpha)?)?; // (B, K)
        let loss = crate::loss::cross_entropy(&logits, labels)?.to_scalar::<f32>()?;
        let b = f.dim(0)?;
        let onehot = labels
            .to_dtype(DType::U32)?
            .unsqueeze(1)?
            .broadcast_eq(
                &Tensor::arange(0u32, logits.dim(1)? as u32, logits.device())?.unsqueeze(0)?,
            )?
            .to_dtype(DType::F32)?;
        let g = ((candle_nn::ops::softmax_last_dim(&logits)? - onehot)? / b as f64)?; // (B, K)
        let d_e = (g.matmul(&cache.values.t()?)? * alpha)?; // (B, N)
        let d_a = ((d_e * &e)? * beta)?; // (B, N)
        let d_keys = d_a.t()?.matmul(&f)?; // (N, E)
        Ok(StepOutput {
            loss,
            logits,
            grads: vec![d_keys],
        })
    }

    fn scorer<'a>(
        &'a self,
        _clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        self.model.scorer("a Tip-Adapter-F", class_names)
    }

    /// The cache, as Tip-Adapter's, with alpha and beta at their initial values for training.
    fn prepare(&self, _clip: &Clip, data: &mut dyn FitData) -> Result<Option<FitReport>> {
        // Before the epochs: a search that cannot run would otherwise fail the run at its end.
        let mut cache = self
            .model
            .build(data, &self.config.cache, "Tip-Adapter-F")?;
        (cache.alpha, cache.beta) = (self.config.init_alpha, self.config.init_beta);
        let (size, passes) = (cache.keys.dims()[0], self.config.cache.augment_passes);
        self.model.set_cache(cache)?;
        Ok(Some(FitReport {
            summary: format!(
                "a cache of {size} images ({passes} augmented passes), its keys trained with alpha {} and beta {}",
                self.config.init_alpha, self.config.init_beta
            ),
            details: serde_json::json!({ "cacheSize": size, "augmentPasses": passes }),
            loss: None,
            accuracy: None,
        }))
    }

    /// alpha and beta on validation with the trained keys.
    fn finish(&self, _clip: &Clip, data: &mut dyn FitData) -> Result<Option<FitReport>> {
        let mut cache = self
            .model
            .cache()
            .ok_or_else(|| Error::Internal("Tip-Adapter-F finished without a cache".into()))?;
        let ((alpha, beta), details) = choose(
            data,
            self.model.text(),
            &cache,
            &self.config.cache,
            "Tip-Adapter-F",
        )?;
        (cache.alpha, cache.beta) = (alpha, beta);
        self.model.set_cache(cache)?;
        Ok(Some(FitReport {
            summary: format!("with the trained keys: {}", chosen(&details)),
            details,
            loss: None,
            accuracy: None,
        }))
    }
}

const INIT_ALPHA: OptionDoc = OptionDoc {
    name: "initAlpha",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "the cache's weight while the keys train",
    flag: None,
};
const INIT_BETA: OptionDoc = OptionDoc {
    name: "initBeta",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "the affinity's sharpness while the keys train",
    flag: None,
};

/// The official run_tip_adapter_F: AdamW (lr 0.001, eps 1e-4, torch's weight decay 0.01), batch
/// 256, CosineAnnealingLR over epochs x batches stepped per batch (no warmup), 20 epochs (its
/// EuroSAT config: 100), crops as its cache's (scale 0.5 to 1).
fn recipe(r: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: if r.dataset == Some("eurosat") {
            100
        } else {
            20
        },
        batch_size: 256,
        lr: 0.001,
        optimizer: OptimizerKind::Adamw,
        weight_decay: 0.01,
        eps: 1e-4,
        warmup_epochs: 0,
        lr_per_step: true,
        crop_scale: Some(CACHE_CROP_SCALE),
        ..Recipe::default()
    }
}

pub const SPEC: MethodSpec = MethodSpec {
    name: "tip-adapter-f",
    title: "Tip-Adapter-F",
    paper: "Zhang, Zhang, Fang, Gao, Li, Dai, Qiao, Li: Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification (ECCV 2022)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::Sgd,
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
        INIT_ALPHA,
        INIT_BETA,
    ],
    defaults: || super::options_json(&TipAdapterFConfig::default()),
    recipe,
    create: |clip, names, options, _runtime: Runtime| {
        let config: TipAdapterFConfig = super::parse_options("tip-adapter-f", options)?;
        Ok(Box::new(TipAdapterF::new(clip, names, config, None)?))
    },
    restore: |clip, meta, tensors, _runtime| {
        let config: TipAdapterFConfig =
            super::parse_options("tip-adapter-f", meta.options.clone())?;
        let cache = Cache::restore(tensors)?;
        Ok(Box::new(TipAdapterF::new(
            clip,
            &meta.class_names,
            config,
            cache,
        )?))
    },
    official: None,
};
