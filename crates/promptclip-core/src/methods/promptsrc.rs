//! PromptSRC, self-regulating prompts (Khattak et al., ICCV 2023; official muzairkhattak/PromptSRC,
//! trainers/promptsrc.py): IVLP's prompts in both towers, regularised towards the frozen CLIP, and
//! averaged over the epochs with Gaussian weights.
//!
//!   loss = CE(logits, y)
//!        + 25 · mean |normalize(g(t_k)) − normalize(mean_templates g_frozen(template(k)))|
//!        + 10 · mean |normalize(f(x)) − normalize(f_frozen(x))|
//!        + sum KL(softmax(zero-shot logits) ‖ softmax(logits)) / (B · K)
//!
//! with logits = exp(logit_scale) normalize(f(x)) normalize(g(t))^T and the zero-shot logits the
//! frozen image features against the frozen text features. The frozen text features are the mean
//! of the unnormalised features over the official 60 ImageNet templates (or the caller's), taken
//! once; the frozen image features are the unprompted tower's of the same images.
//!
//! Gaussian prompt aggregation: after epoch e (1 to N) the prompts times g(e) are added to a running
//! sum, g ∝ exp(−(e − mean)² / (2 std²)) normalised over 1..N; the sum replaces the prompts at the
//! end. The sum is part of the run's checkpoints, so a resumed run ends bit for bit where an
//! uninterrupted one does.
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes, SEED};
use super::ivlp::{IvlpConfig, IvlpLearner};
use super::towers::{self, Features};
use super::{
    Batch, FitData, FitReport, LearnedContext, Learner, LearnerMeta, MethodSpec, Recipe, Runtime,
    Scorer, StepOutput,
};
use crate::clip::{l2_normalize, Clip};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The official trainers/imagenet_templates.py's IMAGENET_TEMPLATES (60 of CLIP's 80), whose
/// mean text features are PromptSRC's frozen text side.
pub const IMAGENET_TEMPLATES: [&str; 60] = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PromptSrcConfig {
    /// Text and image prompt tokens (the official 4 + 4).
    pub n_ctx_text: usize,
    pub n_ctx_vision: usize,
    /// Layers with their own prompts in each tower (the official 9 / 9; default: 9, or every
    /// layer of a shallower tower).
    pub depth_text: Option<usize>,
    pub depth_vision: Option<usize>,
    pub ctx_init: String,
    pub init_std: f64,
    /// Weights of the text and image consistency terms (the official 25 and 10).
    pub text_loss_weight: f64,
    pub image_loss_weight: f64,
    /// The Gaussian over epochs (the official base-to-new 15 and 1; cross-dataset 6 and 10,
    /// few-shot 30 and 30).
    pub gpa_mean: f64,
    pub gpa_std: f64,
    /// The templates whose mean features are the frozen text side (default: the official 60).
    pub templates: Option<Vec<String>>,
    pub seed: u64,
}

impl Default for PromptSrcConfig {
    fn default() -> Self {
        Self {
            n_ctx_text: 4,
            n_ctx_vision: 4,
            depth_text: None,
            depth_vision: None,
            ctx_init: super::coop::PHOTO_CTX_INIT.into(),
            init_std: 0.02,
            text_loss_weight: 25.0,
            image_loss_weight: 10.0,
            gpa_mean: 15.0,
            gpa_std: 1.0,
            templates: None,
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

/// The official depth, where the tower is that deep.
const DEFAULT_DEPTH: usize = 9;

impl PromptSrcConfig {
    /// Both depths resolved, and IVLP's options for the prompts.
    fn resolve(mut self, clip: &Clip) -> Result<(Self, IvlpConfig)> {
        let lt = clip.config.text_config.num_hidden_layers;
        let lv = clip.config.vision_config.num_hidden_layers;
        self.depth_text = Some(self.depth_text.unwrap_or(DEFAULT_DEPTH.min(lt)));
        self.depth_vision = Some(self.depth_vision.unwrap_or(DEFAULT_DEPTH.min(lv)));
        for (name, v) in [
            ("textLossWeight", self.text_loss_weight),
            ("imageLossWeight", self.image_loss_weight),
            ("gpaMean", self.gpa_mean),
        ] {
            if !v.is_finite() || (name != "gpaMean" && v < 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be a finite number{}, got {v}",
                    if name == "gpaMean" {
                        ""
                    } else {
                        " of at least 0"
                    }
                )));
            }
        }
        if !(self.gpa_std.is_finite() && self.gpa_std > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "gpaStd must be a number above 0, got {}",
                self.gpa_std
            )));
        }
        if let Some(t) = &self.templates {
            crate::zeroshot::validate_templates(t)?;
        }
        let ivlp = IvlpConfig {
            n_ctx_text: self.n_ctx_text,
            n_ctx_vision: self.n_ctx_vision,
            depth_text: self.depth_text,
            depth_vision: self.depth_vision,
            ctx_init: self.ctx_init.clone(),
            init_std: self.init_std,
            seed: self.seed,
        };
        Ok((self, ivlp))
    }

    fn templates(&self) -> Vec<String> {
        self.templates
            .clone()
            .unwrap_or_else(|| IMAGENET_TEMPLATES.iter().map(|t| t.to_string()).collect())
    }

    /// g(e) for epochs e = 1..=n, normalised to sum 1 (the official `get_gauss` over 1..N).
    pub fn gauss(&self, n: usize) -> Vec<f64> {
        let (mu, sigma) = (self.gpa_mean, self.gpa_std);
        let g: Vec<f64> = (1..=n)
            .map(|e| {
                (1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt()))
                    * (-0.5 * ((e as f64 - mu) / sigma).powi(2)).exp()
            })
            .collect();
        let sum: f64 = g.iter().sum();
        g.iter().map(|v| v / sum).collect()
    }
}

#[derive(Debug)]
pub struct PromptSrcLearner {
    /// Resolved: both depths as built.
    pub config: PromptSrcConfig,
    /// The prompts: IVLP's.
    pub prompts: IvlpLearner,
    /// (K, E) normalised: the mean over the templates of the frozen features of the learner's
    /// classes, normalised after averaging; made at the first training step (a learner loaded to
    /// predict never needs the 60 x K template encodings).
    frozen_text: OnceLock<Tensor>,
    /// The running sum of the prompts weighted by g(e), over the epochs done, in var order.
    gpa: Mutex<Option<Vec<Tensor>>>,
}

/// The mean over `templates` of the frozen text features (K, E) of `class_names`, unnormalised
/// per template (as the official `fixed_embeddings`), then normalised.
pub fn frozen_text_features(
    clip: &Clip,
    class_names: &[String],
    templates: &[String],
) -> Result<Tensor> {
    let texts = crate::classnames::validate(class_names)?;
    let mut sum: Option<Tensor> = None;
    for t in templates {
        let filled: Vec<String> = texts.iter().map(|n| t.replace("{}", n)).collect();
        let f = clip.encode_texts(&filled)?.to_dtype(clip.head_dtype())?;
        sum = Some(match sum {
            Some(s) => (s + f)?,
            None => f,
        });
    }
    let sum = sum.ok_or_else(|| Error::InvalidArgument("templates is empty".into()))?;
    l2_normalize(&(sum / templates.len() as f64)?)
}

impl PromptSrcLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: PromptSrcConfig) -> Result<Self> {
        let (config, ivlp) = config.resolve(clip)?;
        let prompts = IvlpLearner::new(clip, class_names, ivlp)?;
        Ok(Self::with_prompts(config, prompts))
    }

    fn with_prompts(config: PromptSrcConfig, prompts: IvlpLearner) -> Self {
        Self {
            config,
            prompts,
            frozen_text: OnceLock::new(),
            gpa: Mutex::new(None),
        }
    }

    /// The frozen text side (K, E), normalised: computed once, on first use.
    pub fn frozen_text(&self, clip: &Clip) -> Result<Tensor> {
        if let Some(t) = self.frozen_text.get() {
            return Ok(t.clone());
        }
        let t = frozen_text_features(clip, self.prompts.class_names(), &self.config.templates())?;
        Ok(self.frozen_text.get_or_init(|| t).clone())
    }

    fn gpa(&self) -> std::sync::MutexGuard<'_, Option<Vec<Tensor>>> {
        self.gpa.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Learner for PromptSrcLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.prompts.class_names().to_vec(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        self.prompts.vars()
    }

    fn class_names(&self) -> &[String] {
        self.prompts.class_names()
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        self.prompts.logits(clip, image_features)
    }

    fn batch_loss_and_grads(
        &self,
        clip: &Clip,
        batch: &Batch<'_>,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        let h = clip.head_dtype();
        let scale = (clip.logit_scale as f64).exp();
        // The frozen side: the unprompted tower's features of the same images, and the
        // templates' text features.
        let zs_image_all = l2_normalize(&batch.features()?.to_dtype(h)?)?;
        let fixed = self.frozen_text(clip)?.to_dtype(h)?;
        let zs_logits = (zs_image_all.matmul(&fixed.t()?)? * scale)?;
        let zs_log_p_all = candle_nn::ops::log_softmax(&zs_logits, D::Minus1)?;
        let c = &self.config;
        // Each term is a mean over the images (or does not depend on them), so the image tower
        // may run in chunks (`towers::image_chunks`): the chunk's rows of the frozen side.
        self.prompts
            .step_with(clip, batch.pixels()?, grad_scale, |f: Features<'_>| {
                let (start, n) = (f.rows.start, f.rows.len());
                let zs_image = zs_image_all.narrow(0, start, n)?;
                let zs_log_p = zs_log_p_all.narrow(0, start, n)?;
                let labels = labels.narrow(0, start, n)?;
                let image = l2_normalize(f.image)?;
                let text = l2_normalize(f.text)?;
                let logits = (image.matmul(&text.t()?)? * scale)?;
                let ce = crate::loss::cross_entropy(&logits, &labels)?;
                let l_text = ((&text - &fixed)?.abs()?.mean_all()? * c.text_loss_weight)?;
                let l_image = ((&image - &zs_image)?.abs()?.mean_all()? * c.image_loss_weight)?;
                // F.kl_div(log_softmax(logits), log_softmax(zs), 'sum', log_target) / numel:
                // sum p_zs (log p_zs - log p) / (B K).
                let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
                let kl = (zs_log_p.exp()? * (&zs_log_p - &log_p)?)?.sum_all()?;
                let kl = (kl / logits.elem_count() as f64)?;
                let loss = (((ce + kl)? + l_text)? + l_image)?;
                Ok((loss, logits))
            })
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        self.prompts.scorer(clip, class_names)
    }

    fn learned_context(&self) -> Option<LearnedContext> {
        self.prompts.learned_context()
    }

    fn start_run(&self, resumed: Option<(&HashMap<String, Tensor>, usize)>) -> Result<()> {
        let sum = match resumed {
            None | Some((_, 0)) => None,
            Some((saved, done)) => Some(
                self.vars()
                    .iter()
                    .map(|(name, v)| {
                        let t = saved.get(&format!("gpa.{name}")).ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "the checkpoint of {done} epochs lacks PromptSRC's running prompt aggregate `gpa.{name}`: start afresh"
                            ))
                        })?;
                        if t.dims() != v.dims() {
                            return Err(Error::InvalidArgument(format!(
                                "the checkpoint's `gpa.{name}` has shape {:?}, the learner's {:?}",
                                t.dims(),
                                v.dims()
                            )));
                        }
                        Ok(t.to_dtype(DType::F32)?)
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        *self.gpa() = sum;
        Ok(())
    }

    fn epoch_end(&self, epoch: usize, epochs: usize) -> Result<()> {
        let w = self.config.gauss(epochs)[epoch];
        let mut gpa = self.gpa();
        let weighted = self
            .vars()
            .iter()
            .map(|(_, v)| Ok((v.as_tensor() * w)?))
            .collect::<Result<Vec<_>>>()?;
        *gpa = Some(match gpa.take() {
            None => weighted,
            Some(sum) => sum
                .iter()
                .zip(&weighted)
                .map(|(s, x)| Ok((x + s)?))
                .collect::<Result<_>>()?,
        });
        Ok(())
    }

    fn run_state(&self) -> Vec<(String, Tensor)> {
        match &*self.gpa() {
            Some(sum) => self
                .vars()
                .iter()
                .zip(sum)
                .map(|((name, _), t)| (format!("gpa.{name}"), t.clone()))
                .collect(),
            None => vec![],
        }
    }

    fn finish(&self, _clip: &Clip, _data: &mut dyn FitData) -> Result<Option<FitReport>> {
        let Some(sum) = self.gpa().take() else {
            return Ok(None);
        };
        for ((_, v), t) in self.vars().iter().zip(&sum) {
            v.set(t)?;
        }
        Ok(Some(FitReport {
            summary: format!(
                "prompts averaged over the epochs with Gaussian weights (mean {}, std {})",
                super::shown(self.config.gpa_mean),
                super::shown(self.config.gpa_std)
            ),
            details: serde_json::json!({ "gpaMean": self.config.gpa_mean, "gpaStd": self.config.gpa_std }),
            loss: None,
            accuracy: None,
        }))
    }
}

/// The official `PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`: SGD lr 0.0025, 20 epochs, batch 4
/// (few-shot: 50 epochs), with the CoOp recipe's momentum, weight decay, warmup and cosine.
fn recipe(_: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: 20,
        batch_size: 4,
        lr: 0.0025,
        ..Recipe::default()
    }
}

const NUMBER: OptionKind = OptionKind::Number {
    exclusive_min: None,
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "promptsrc",
    title: "PromptSRC",
    paper: "Khattak, Wasim, Naseer, Khan, Yang, Khan: Self-regulating Prompts: Foundational Model Adaptation without Forgetting (ICCV 2023)",
    takes: Takes::Images,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: None,
    options: &[
        OptionDoc {
            name: "nCtxText",
            kind: OptionKind::Integer { min: 1 },
            doc: "learned text tokens (of ctxInit's) at the input and per deep text layer",
            flag: None,
        },
        OptionDoc {
            name: "nCtxVision",
            kind: OptionKind::Integer { min: 1 },
            doc: "image prompt tokens per layer",
            flag: None,
        },
        OptionDoc {
            name: "depthText",
            kind: OptionKind::Integer { min: 1 },
            doc: "text layers with their own prompts (default 9, or every layer of a shallower tower)",
            flag: None,
        },
        OptionDoc {
            name: "depthVision",
            kind: OptionKind::Integer { min: 1 },
            doc: "image layers with their own prompts (default 9, or every layer of a shallower tower)",
            flag: None,
        },
        OptionDoc {
            name: "ctxInit",
            kind: OptionKind::String,
            doc: "words the text context starts from; its first nCtxText tokens are learned",
            flag: None,
        },
        OptionDoc {
            name: "initStd",
            kind: NUMBER,
            doc: "standard deviation of the deep and image prompts' random initialisation",
            flag: None,
        },
        OptionDoc {
            name: "textLossWeight",
            kind: NUMBER,
            doc: "weight of the L1 pull of the text features towards the frozen templates' (25)",
            flag: None,
        },
        OptionDoc {
            name: "imageLossWeight",
            kind: NUMBER,
            doc: "weight of the L1 pull of the image features towards the frozen tower's (10)",
            flag: None,
        },
        OptionDoc {
            name: "gpaMean",
            kind: NUMBER,
            doc: "mean epoch of the Gaussian prompt aggregation (15)",
            flag: None,
        },
        OptionDoc {
            name: "gpaStd",
            kind: OptionKind::Number {
                exclusive_min: Some(0.0),
            },
            doc: "standard deviation in epochs of the Gaussian prompt aggregation (1)",
            flag: None,
        },
        OptionDoc {
            name: "templates",
            kind: OptionKind::StringList,
            doc: "templates whose mean frozen features the text features are pulled towards (default: the official 60 ImageNet templates)",
            flag: None,
        },
        SEED,
    ],
    defaults: || super::options_json(&PromptSrcConfig::default()),
    recipe,
    create: |clip, names, options, runtime: Runtime| {
        let config: PromptSrcConfig = super::parse_options("promptsrc", options)?;
        let mut l = PromptSrcLearner::new(clip, names, config)?;
        l.prompts.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: PromptSrcConfig = super::parse_options("promptsrc", meta.options.clone())?;
        let (config, ivlp) = config.resolve(clip)?;
        let mut prompts = IvlpLearner::restore(clip, &meta.class_names, ivlp, tensors)?;
        prompts.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(PromptSrcLearner::with_prompts(config, prompts)))
    },
    official: Some(&super::ivlp::OFFICIAL),
};
