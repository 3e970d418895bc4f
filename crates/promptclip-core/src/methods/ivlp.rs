//! IVLP, independent vision-language prompting (the baseline of Khattak et al.'s MaPLe, CVPR
//! 2023; official multimodal-prompt-learning, trainers/independentVL.py): prompts in both towers,
//! at the input and in each layer up to a depth, with no coupling between them.
//!
//!   text:  t_k = [SOS] [V]_1..[V]_n [fixed words] [CLASS_k] . [EOS]     (K, L, d_t)
//!          (n learned of the init words "a photo of a": "[V1 V2] of a {class}.")
//!          rows 1..1+n replaced by T_i at the input of text block i, 1 <= i < depth_text
//!   image: x_0 = ln_pre(cat[CLS + pos, patches + pos, P_0]); the last n_v rows replaced by P_i at
//!          the input of image block i, 1 <= i < depth_vision
//!   logits = exp(logit_scale) normalize(f(x)) normalize(g(t_k))^T
//!
//! The deep prompts are N(0, 0.02); the text input context starts from the init words. Every
//! prompt is class-agnostic, so the learner scores any class list (base-to-new).
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes, SEED};
use super::coop::{ClassBuffers, CoopContext};
use super::official::{self, Official, Rename};
use super::towers::{self, needs_vit, Features, ImageSide, TextSide};
use super::StepOutput;
use super::{Batch, LearnedContext, Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer};
use crate::clip::{Clip, VisionPrompts};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IvlpConfig {
    /// Text prompt tokens (the official 2).
    pub n_ctx_text: usize,
    /// Image prompt tokens (the official 2).
    pub n_ctx_vision: usize,
    /// Text layers with their own prompts, from the input (default: every layer, the official 12).
    pub depth_text: Option<usize>,
    /// Image layers with their own prompts (default: every layer).
    pub depth_vision: Option<usize>,
    /// The words the text input context starts from; its first `nCtxText` tokens are learned and
    /// the rest stay in every prompt as fixed text.
    pub ctx_init: String,
    /// Standard deviation of the deep and image prompts' random initialisation.
    pub init_std: f64,
    pub seed: u64,
}

impl Default for IvlpConfig {
    fn default() -> Self {
        Self {
            n_ctx_text: 2,
            n_ctx_vision: 2,
            depth_text: None,
            depth_vision: None,
            ctx_init: super::coop::PHOTO_CTX_INIT.into(),
            init_std: 0.02,
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

#[derive(Debug)]
pub struct IvlpLearner {
    /// Resolved: both depths as built.
    pub config: IvlpConfig,
    /// The text input context (n, d_t) and the class buffers around it.
    pub context: CoopContext,
    /// T_1 .. T_{depth_text - 1}, (n, d_t) each.
    pub text_deep: Vec<Var>,
    /// P_0 .. P_{depth_vision - 1}, (n_v, d_v) each.
    pub vision: Vec<Var>,
    /// Tape bytes the image tower's training pass may keep at once (the runtime's memory
    /// budget): a batch runs through it in chunks that fit (`towers::image_chunk`).
    pub image_budget: usize,
}

/// The resolved depths, or why the options do not fit this CLIP.
fn depths(clip: &Clip, config: &IvlpConfig) -> Result<(usize, usize)> {
    let (lt, lv) = (
        clip.config.text_config.num_hidden_layers,
        clip.config.vision_config.num_hidden_layers,
    );
    let (dt, dv) = (
        config.depth_text.unwrap_or(lt),
        config.depth_vision.unwrap_or(lv),
    );
    for (name, n) in [
        ("nCtxText", config.n_ctx_text),
        ("nCtxVision", config.n_ctx_vision),
    ] {
        if n == 0 {
            return Err(Error::InvalidArgument(format!("{name} must be at least 1")));
        }
    }
    if dt == 0 || dt > lt {
        return Err(Error::InvalidArgument(format!(
            "depthText must be from 1 to the text tower's {lt} layers, got {dt}"
        )));
    }
    if dv == 0 || dv > lv {
        return Err(Error::InvalidArgument(format!(
            "depthVision must be from 1 to the image tower's {lv} layers, got {dv}"
        )));
    }
    if !(config.init_std.is_finite() && config.init_std >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "initStd must be a non-negative number, got {}",
            config.init_std
        )));
    }
    Ok((dt, dv))
}

/// The name of a prompt in learner files and checkpoints.
fn text_name(i: usize) -> String {
    format!("text_prompt.{i}")
}
fn vision_name(i: usize) -> String {
    format!("vision_prompt.{i}")
}

impl IvlpLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: IvlpConfig) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let (dt, dv) = depths(clip, &config)?;
        let ctx = towers::first_words(clip, &config.ctx_init, config.n_ctx_text, "nCtxText")?;
        let (d_t, d_v) = (
            clip.text.hidden_size(),
            clip.config.vision_config.hidden_size,
        );
        let mut rng = Rng::new(config.seed);
        let mut randn = |n: usize, d: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                rng.normal_vec(n * d, config.init_std),
                (n, d),
                &clip.device,
            )?)
        };
        let text_deep = (1..dt)
            .map(|_| randn(config.n_ctx_text, d_t))
            .collect::<Result<Vec<_>>>()?;
        let vision = (0..dv)
            .map(|_| randn(config.n_ctx_vision, d_v))
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(clip, class_names, config, ctx, text_deep, vision)
    }

    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        mut config: IvlpConfig,
        ctx: Tensor,
        text_deep: Vec<Tensor>,
        vision: Vec<Tensor>,
    ) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let (dt, dv) = depths(clip, &config)?;
        config.depth_text = Some(dt);
        config.depth_vision = Some(dv);
        let (d_t, d_v) = (
            clip.text.hidden_size(),
            clip.config.vision_config.hidden_size,
        );
        let expect = |what: String, t: &Tensor, shape: [usize; 2]| -> Result<()> {
            if t.dims() != shape {
                return Err(Error::InvalidArgument(format!(
                    "IVLP `{what}` has shape {:?}; this CLIP and these options need {shape:?}",
                    t.dims()
                )));
            }
            Ok(())
        };
        expect("ctx".into(), &ctx, [config.n_ctx_text, d_t])?;
        if text_deep.len() + 1 != dt || vision.len() != dv {
            return Err(Error::InvalidArgument(format!(
                "{} deep text prompts and {} image prompts for depths {dt} and {dv}",
                text_deep.len(),
                vision.len()
            )));
        }
        for (i, t) in text_deep.iter().enumerate() {
            expect(text_name(i + 1), t, [config.n_ctx_text, d_t])?;
        }
        for (i, t) in vision.iter().enumerate() {
            expect(vision_name(i), t, [config.n_ctx_vision, d_v])?;
        }
        let context = towers::text_context(clip, class_names, &config.ctx_init, ctx)?;
        let var = |t: &Tensor| Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        Ok(Self {
            config,
            context,
            text_deep: text_deep.iter().map(var).collect::<Result<_>>()?,
            vision: vision.iter().map(var).collect::<Result<_>>()?,
            image_budget: towers::budget_bytes(Runtime::default()),
        })
    }

    /// A learner from saved tensors under its var names.
    pub(crate) fn restore(
        clip: &Clip,
        class_names: &[String],
        config: IvlpConfig,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<Self> {
        let (dt, dv) = depths(clip, &config)?;
        let text_deep = (1..dt)
            .map(|i| super::saved(tensors, &text_name(i)))
            .collect::<Result<Vec<_>>>()?;
        let vision = (0..dv)
            .map(|i| super::saved(tensors, &vision_name(i)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(
            clip,
            class_names,
            config,
            super::saved(tensors, "ctx")?,
            text_deep,
            vision,
        )
    }

    fn tensors(vars: &[Var], clip: &Clip) -> Result<Vec<Tensor>> {
        vars.iter()
            .map(|v| Ok(v.as_tensor().to_dtype(clip.dtype)?))
            .collect()
    }

    /// Text features (K, E) of a class list's prompts (no gradients).
    pub fn text_features(&self, clip: &Clip, buffers: &ClassBuffers) -> Result<Tensor> {
        towers::prompted_text_features(clip, &self.context, &self.text_deep, buffers)
    }

    /// Image features (B, E) of pixels with the image prompts (no gradients).
    pub fn image_features(&self, clip: &Clip, pixels: &Tensor) -> Result<Tensor> {
        let p = Self::tensors(&self.vision, clip)?;
        clip.encode_image_prompted(
            pixels,
            VisionPrompts {
                input: &p[0],
                deep: &p[1..],
            },
        )
    }
}

impl IvlpLearner {
    /// One step through both prompted towers, `head` mapping the text features of the learner's
    /// classes and the batch's image features to (loss, logits); PromptSRC's loss is another head.
    pub(crate) fn step_with(
        &self,
        clip: &Clip,
        pixels: &Tensor,
        grad_scale: f64,
        head: impl Fn(Features<'_>) -> Result<(Tensor, Tensor)>,
    ) -> Result<StepOutput> {
        let b = &self.context.buffers;
        let prompts = towers::own_prompts(&self.context)?;
        let text_deep: Vec<Tensor> = self
            .text_deep
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        let vision: Vec<Tensor> = self.vision.iter().map(|v| v.as_tensor().clone()).collect();
        towers::step(
            clip,
            TextSide {
                embeds: &prompts,
                eot: &b.eot,
                shared: self.context.shared_len(),
                deep: &text_deep,
            },
            ImageSide {
                pixels,
                input: &vision[0],
                deep: &vision[1..],
            },
            &self.vars(),
            grad_scale,
            towers::image_chunk(clip, pixels.dim(0)?, vision[0].dim(0)?, self.image_budget),
            head,
        )
    }
}

impl Learner for IvlpLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.context.class_names().to_vec(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![("ctx".to_string(), self.context.ctx.clone())];
        v.extend(
            self.text_deep
                .iter()
                .enumerate()
                .map(|(i, p)| (text_name(i + 1), p.clone())),
        );
        v.extend(
            self.vision
                .iter()
                .enumerate()
                .map(|(i, p)| (vision_name(i), p.clone())),
        );
        v
    }

    fn class_names(&self) -> &[String] {
        self.context.class_names()
    }

    fn logits(&self, _clip: &Clip, _image_features: &Tensor) -> Result<Tensor> {
        Err(towers::needs_images(SPEC.name))
    }

    fn batch_loss_and_grads(
        &self,
        clip: &Clip,
        batch: &Batch<'_>,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        self.step_with(clip, batch.pixels()?, grad_scale, |f: Features<'_>| {
            let logits = clip.logits(f.image, f.text)?;
            let labels = labels.narrow(0, f.rows.start, f.rows.len())?;
            Ok((crate::loss::cross_entropy(&logits, &labels)?, logits))
        })
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        let buffers = match class_names {
            Some(names) => self.context.buffers_for(clip, names)?,
            None => self.context.buffers.clone(),
        };
        Ok(Box::new(towers::ImageScorer {
            clip,
            method: SPEC.name,
            text: self.text_features(clip, &buffers)?,
            image_features: move |pixels: &Tensor| self.image_features(clip, pixels),
        }))
    }

    fn learned_context(&self) -> Option<LearnedContext> {
        Some(self.context.learned())
    }
}

const N_CTX_TEXT: OptionDoc = OptionDoc {
    name: "nCtxText",
    kind: OptionKind::Integer { min: 1 },
    doc: "learned text tokens (of ctxInit's) at the input and per deep text layer",
    flag: None,
};
const N_CTX_VISION: OptionDoc = OptionDoc {
    name: "nCtxVision",
    kind: OptionKind::Integer { min: 1 },
    doc: "image prompt tokens per layer",
    flag: None,
};
const DEPTH_TEXT: OptionDoc = OptionDoc {
    name: "depthText",
    kind: OptionKind::Integer { min: 1 },
    doc: "text layers with their own prompts, from the input (default: every layer)",
    flag: None,
};
const DEPTH_VISION: OptionDoc = OptionDoc {
    name: "depthVision",
    kind: OptionKind::Integer { min: 1 },
    doc: "image layers with their own prompts, from the input (default: every layer)",
    flag: None,
};
const CTX_INIT: OptionDoc = OptionDoc {
    name: "ctxInit",
    kind: OptionKind::String,
    doc: "words the text context starts from; its first nCtxText tokens are learned, the rest stay as fixed text",
    flag: None,
};
const INIT_STD: OptionDoc = OptionDoc {
    name: "initStd",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "standard deviation of the deep and image prompts' random initialisation",
    flag: None,
};

/// The official `IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml`: SGD lr 0.0035, 5 epochs, batch 4, with
/// the CoOp recipe's momentum, weight decay, warmup and cosine.
fn recipe(_: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: 5,
        batch_size: 4,
        lr: 0.0035,
        ..Recipe::default()
    }
}

/// The official IVLP's names (multimodal-prompt-learning's IVLP trainer): the text input context
/// is the prompt learner's `ctx`, layer i's text prompts the text encoder's block i's
/// `VPT_shallow`; the image side as VPT-deep's (`vpt::IMAGE_RENAMES`). PromptSRC's are the same.
pub static OFFICIAL: Official = Official {
    renames: &[
        &[
            official::exact("ctx", "prompt_learner.ctx"),
            Rename {
                ours: "text_prompt.{}",
                theirs: "text_encoder.transformer.resblocks.{}.VPT_shallow",
                shift: 0,
            },
        ],
        super::vpt::IMAGE_RENAMES,
    ],
    options: |shapes| {
        serde_json::json!({
            "nCtxText": official::dim_of(shapes, "ctx", 0),
            "nCtxVision": official::dim_of(shapes, "vision_prompt.0", 0),
            "depthText": 1 + official::count_prefixed(shapes, "text_prompt."),
            "depthVision": official::count_prefixed(shapes, "vision_prompt."),
        })
    },
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "ivlp",
    title: "IVLP",
    paper: "Independent vision-language prompting, the baseline of Khattak, Rasheed, Maaz, Khan, Khan: MaPLe: Multi-modal Prompt Learning (CVPR 2023)",
    takes: Takes::Images,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: None,
    options: &[
        N_CTX_TEXT,
        N_CTX_VISION,
        DEPTH_TEXT,
        DEPTH_VISION,
        CTX_INIT,
        INIT_STD,
        SEED,
    ],
    defaults: || super::options_json(&IvlpConfig::default()),
    recipe,
    create: |clip, names, options, runtime: Runtime| {
        let config: IvlpConfig = super::parse_options("ivlp", options)?;
        let mut l = IvlpLearner::new(clip, names, config)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: IvlpConfig = super::parse_options("ivlp", meta.options.clone())?;
        let mut l = IvlpLearner::restore(clip, &meta.class_names, config, tensors)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    official: Some(&OFFICIAL),
};
