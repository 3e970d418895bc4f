//! CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck on CLIP's image feature, trained
//! while both towers stay frozen, scored against the hand-made prompt's text features:
//!
//!   A(f) = ReLU(W2 ReLU(W1 f)),   f' = ratio A(f) + (1 - ratio) f,
//!   logits = exp(logit_scale) normalize(f') normalize(g(template(class)))^T
//!
//! with W1 (E/reduction x E) and W2 (E x E/reduction), no biases (the official `Adapter`; its file
//! hard-codes E = 1024, RN50: here E is the model's). The adapter never sees class names, so the
//! learner scores any class list: new names only need their text features.
use super::catalogue::{coop_recipe, ClassBinding, Fitting, OptionDoc, OptionKind, Takes, SEED};
use super::{Learner, LearnerMeta, MethodSpec, Runtime, Scorer};
use crate::clip::Clip;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClipAdapterConfig {
    /// The residual ratio: f' = ratio A(f) + (1 - ratio) f (the official 0.2).
    pub ratio: f64,
    /// The bottleneck's reduction: hidden width = E / reduction (the official 4).
    pub reduction: usize,
    /// The hand-made template of the text side, `{}` for the class name.
    pub template: String,
    /// Seed of W1 and W2's initialisation (torch.nn.Linear's: U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    pub seed: u64,
}

impl Default for ClipAdapterConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            reduction: 4,
            template: crate::zeroshot::DEFAULT_TEMPLATE.into(),
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

#[derive(Debug)]
pub struct ClipAdapter {
    pub config: ClipAdapterConfig,
    class_names: Vec<String>,
    /// W1, (E / reduction, E).
    pub fc1: Var,
    /// W2, (E, E / reduction).
    pub fc2: Var,
    /// (K, E) normalised, frozen: the template's text features of the learner's own classes.
    text: Tensor,
}

/// torch.nn.Linear's default initialisation, kaiming_uniform_(a = sqrt(5)) = U(+-1/sqrt(fan_in)),
/// from the core's seeded generator.
fn linear_init(rng: &mut Rng, out: usize, fan_in: usize, clip: &Clip) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let data: Vec<f32> = (0..out * fan_in)
        .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
        .collect();
    Ok(Tensor::from_vec(data, (out, fan_in), &clip.device)?)
}

impl ClipAdapter {
    pub fn new(clip: &Clip, class_names: &[String], config: ClipAdapterConfig) -> Result<Self> {
        let e = clip.embed_dim();
        let hidden = Self::hidden(e, &config)?;
        let mut rng = Rng::new(config.seed);
        let fc1 = linear_init(&mut rng, hidden, e, clip)?; // (E/r, E)
        let fc2 = linear_init(&mut rng, e, hidden, clip)?; // (E, E/r)
        Self::from_parts(clip, class_names, config, fc1, fc2)
    }

    /// The bottleneck's width for image features of size `e`, or why the options cannot build one.
    fn hidden(e: usize, config: &ClipAdapterConfig) -> Result<usize> {
        if !(config.ratio.is_finite() && (0.0..=1.0).contains(&config.ratio)) {
            return Err(Error::InvalidArgument(format!(
                "ratio must be a number from 0 to 1, got {}",
                config.ratio
            )));
        }
        if config.reduction == 0 || config.reduction > e {
            return Err(Error::InvalidArgument(format!(
                "reduction must be from 1 to the image feature size {e}, got {}",
                config.reduction
            )));
        }
        Ok(e / config.reduction)
    }

    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        config: ClipAdapterConfig,
        fc1: Tensor,
        fc2: Tensor,
    ) -> Result<Self> {
        let e = clip.embed_dim();
        let hidden = Self::hidden(e, &config)?;
        for (name, t, shape) in [("fc1", &fc1, [hidden, e]), ("fc2", &fc2, [e, hidden])] {
            if t.dims() != shape {
                return Err(Error::InvalidArgument(format!(
                    "CLIP-Adapter `{name}` has shape {:?}; this CLIP (image features of {e}, reduction {}) needs {shape:?}",
                    t.dims(),
                    config.reduction
                )));
            }
        }
        let text = Self::text_features(clip, class_names, &config.template)?;
        Ok(Self {
            class_names: class_names.to_vec(),
            fc1: Var::from_tensor(&fc1.to_dtype(DType::F32)?)?,
            fc2: Var::from_tensor(&fc2.to_dtype(DType::F32)?)?,
            text,
            config,
        })
    }

    fn text_features(clip: &Clip, class_names: &[String], template: &str) -> Result<Tensor> {
        let t = crate::zeroshot::class_embeddings(clip, class_names, &[template.to_string()])?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// f' = ratio A(f) + (1 - ratio) f for image features (B, E), in f32, differentiable in W1, W2.
    pub fn adapt(&self, image_features: &Tensor) -> Result<Tensor> {
        let f = image_features.to_dtype(DType::F32)?;
        let h = f.matmul(&self.fc1.as_tensor().t()?)?.relu()?; // (B, E/r)
        let a = h.matmul(&self.fc2.as_tensor().t()?)?.relu()?; // (B, E)
        Ok(((a * self.config.ratio)? + (f * (1.0 - self.config.ratio))?)?)
    }
}

/// The adapter applied to the images, scored against text features (K, E).
struct AdapterScorer<'a> {
    adapter: &'a ClipAdapter,
    clip: &'a Clip,
    text: Tensor,
}

impl Scorer for AdapterScorer<'_> {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        self.clip
            .logits(&self.adapter.adapt(image_features)?, &self.text)
    }
}

impl Learner for ClipAdapter {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.class_names.clone(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![
            ("fc1".into(), self.fc1.clone()),
            ("fc2".into(), self.fc2.clone()),
        ]
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        clip.logits(&self.adapt(image_features)?, &self.text)
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        let text = match class_names {
            Some(names) if names != self.class_names.as_slice() => {
                Self::text_features(clip, names, &self.config.template)?
            }
            _ => self.text.clone(),
        };
        Ok(Box::new(AdapterScorer {
            adapter: self,
            clip,
            text,
        }))
    }
}

const RATIO: OptionDoc = OptionDoc {
    name: "ratio",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "residual ratio: adapted feature = ratio * adapter(f) + (1 - ratio) * f, from 0 to 1",
    flag: Some("--adapter-ratio"),
};
const REDUCTION: OptionDoc = OptionDoc {
    name: "reduction",
    kind: OptionKind::Integer { min: 1 },
    doc: "bottleneck reduction: hidden width = image feature size / reduction",
    flag: None,
};
const TEMPLATE: OptionDoc = OptionDoc {
    name: "template",
    kind: OptionKind::String,
    doc: "the hand-made template of the text side, {} for the class name",
    flag: None,
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "clip-adapter",
    title: "CLIP-Adapter",
    paper: "Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao: CLIP-Adapter: Better Vision-Language Models with Feature Adapters (IJCV 2024)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: Some("template"),
    options: &[RATIO, REDUCTION, TEMPLATE, SEED],
    defaults: || super::options_json(&ClipAdapterConfig::default()),
    // The official trainer takes Dassl's optimiser and schedule from the CoOp configs: CoOp's
    // recipe, its epochs by shots included.
    recipe: coop_recipe,
    create: |clip, names, options, _runtime: Runtime| {
        let config: ClipAdapterConfig = super::parse_options("clip-adapter", options)?;
        Ok(Box::new(ClipAdapter::new(clip, names, config)?))
    },
    restore: |clip, meta, tensors, _runtime| {
        let config: ClipAdapterConfig = super::parse_options("clip-adapter", meta.options.clone())?;
        Ok(Box::new(ClipAdapter::from_parts(
            clip,
            &meta.class_names,
            config,
            super::saved(tensors, "fc1")?,
            super::saved(tensors, "fc2")?,
        )?))
    },
    official: None,
};
