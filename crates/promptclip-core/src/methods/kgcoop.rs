//! KgCoOp (Yao et al., CVPR 2023): CoOp with a knowledge-guided term that keeps the learned
//! prompts' text features near those of the hand-made prompt, so that they forget less of what
//! CLIP knows about classes never seen in training:
//!
//!   loss = CE(logits, y) + w * (1 - mean_k cos(g(t_k), g(t_k^clip)))
//!
//! where g(t_k) are the learned prompts' text features and g(t_k^clip) the frozen text features of
//! the template filled with class k. Prediction is CoOp's.
use super::catalogue::{
    ClassBinding, Fitting, OptionDoc, OptionKind, Takes, CLASS_SPECIFIC, CTX_INIT_PHOTO, INIT_STD,
    N_CTX, POSITION, SEED,
};
use super::coop::{CoopConfig, CoopContext, PHOTO_CTX_INIT};
use super::{Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer, StepOutput};
use crate::clip::{l2_normalize, Clip};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

/// KgCoOp's options: CoOp's (context from "a photo of a" by default, as its scripts) plus the
/// weight of the knowledge-guided term and the hand-made template it anchors to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KgcoopConfig {
    #[serde(flatten)]
    pub context: CoopConfig,
    /// w, the weight of 1 - mean cosine (8.0 in the official scripts).
    pub w: f64,
    /// The hand-made template, `{}` standing for the class name (the dataset's, as in zero-shot).
    pub template: String,
}

impl Default for KgcoopConfig {
    fn default() -> Self {
        Self {
            context: CoopConfig::default(),
            w: 8.0,
            template: crate::zeroshot::DEFAULT_TEMPLATE.into(),
        }
    }
}

#[derive(Debug)]
pub struct KgcoopLearner {
    pub context: CoopContext,
    pub w: f64,
    pub template: String,
    /// (K, E) normalised, frozen: g(t_k^clip) of the learner's own classes.
    pub clip_text: Tensor,
}

impl KgcoopLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: KgcoopConfig) -> Result<Self> {
        let context = CoopContext::with_default_init(
            clip,
            class_names,
            config.context,
            Some(PHOTO_CTX_INIT),
        )?;
        Self::from_parts(clip, context, config.w, config.template)
    }

    pub fn from_parts(clip: &Clip, context: CoopContext, w: f64, template: String) -> Result<Self> {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "w must be a non-negative number, got {w}"
            )));
        }
        let templates = [template.clone()];
        let clip_text = crate::zeroshot::class_embeddings(clip, context.class_names(), &templates)?;
        Ok(Self {
            context,
            w,
            template,
            clip_text: clip_text.to_dtype(DType::F32)?,
        })
    }

    pub fn config(&self) -> KgcoopConfig {
        KgcoopConfig {
            context: self.context.config.clone(),
            w: self.w,
            template: self.template.clone(),
        }
    }

    /// w * (1 - mean_k cos(g(t_k), g(t_k^clip))) for text features (K, E), in f32.
    pub fn knowledge_term(&self, text_features: &Tensor) -> Result<Tensor> {
        let text = l2_normalize(&text_features.to_dtype(DType::F32)?)?;
        let mean_cos = (text * &self.clip_text)?.sum(D::Minus1)?.mean_all()?;
        Ok(((1.0 - mean_cos)? * self.w)?)
    }
}

impl Learner for KgcoopLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.context.class_names().to_vec(),
            options: super::options_json(&self.config()),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        Learner::vars(&self.context)
    }

    fn class_names(&self) -> &[String] {
        self.context.class_names()
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        Learner::logits(&self.context, clip, image_features)
    }

    fn loss_and_grads_scaled(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        let term = |text: &Tensor| self.knowledge_term(text);
        self.context.step(
            clip,
            image_features,
            labels,
            grad_scale,
            &self.vars(),
            Some(&term),
        )
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        Ok(Box::new(self.context.embedding_scorer(clip, class_names)?))
    }

    fn learned_context(&self) -> Option<super::LearnedContext> {
        Some(self.context.learned())
    }

    fn scores_any_classes(&self) -> bool {
        !self.context.config.class_specific
    }
}

const W: OptionDoc = OptionDoc {
    name: "w",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "weight of the knowledge-guided term, 1 - mean cosine to the hand-made prompt's features (at least 0)",
    flag: Some("--kg-weight"),
};
const TEMPLATE: OptionDoc = OptionDoc {
    name: "template",
    kind: OptionKind::String,
    doc: "the hand-made template the learned prompts are pulled towards, {} for the class name",
    flag: None,
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "kgcoop",
    title: "KgCoOp",
    paper: "Yao, Zhang, Xu: Visual-Language Prompt Tuning with Knowledge-guided Context Optimization (CVPR 2023)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: Some("template"),
    options: &[N_CTX, CTX_INIT_PHOTO, CLASS_SPECIFIC, POSITION, W, TEMPLATE, INIT_STD, SEED],
    defaults: || super::options_json(&KgcoopConfig::default()),
    recipe: |_| Recipe::default(),
    create: |clip, names, options, _runtime: Runtime| {
        let config: KgcoopConfig = super::parse_options("kgcoop", options)?;
        Ok(Box::new(KgcoopLearner::new(clip, names, config)?))
    },
    restore: |clip, meta, tensors, _runtime| {
        let config: KgcoopConfig = super::parse_options("kgcoop", meta.options.clone())?;
        let ctx = super::saved(tensors, "ctx")?;
        let context = CoopContext::from_parts(clip, &meta.class_names, config.context, ctx)?;
        Ok(Box::new(KgcoopLearner::from_parts(
            clip,
            context,
            config.w,
            config.template,
        )?))
    },
    official: Some(&super::coop::OFFICIAL),
};
