//! MaPLe, multi-modal prompt learning (Khattak et al., CVPR 2023; official
//! multimodal-prompt-learning, trainers/maple.py): prompts in both towers, the image tower's
//! coupled to the text tower's by linear maps, so that one set of prompts learns both.
//!
//!   text:  t_k = [SOS] ctx [fixed words] [CLASS_k] . [EOS], ctx (n, d_t) the first n of "a photo of a"
//!          rows 1..1+n replaced by T_i at the input of text block i, 1 <= i < depth
//!   image: P_0 = ctx W_0^T + b_0,  P_i = T_i W_i^T + b_i    (d_t -> d_v)            (n, d_v)
//!          x_0 = ln_pre(cat[CLS + pos, patches + pos, P_0]); the last n rows replaced by P_i
//!          at the input of image block i, 1 <= i < depth
//!   logits = exp(logit_scale) normalize(f(x)) normalize(g(t_k))^T
//!
//! T_i are N(0, 0.02); W_0, b_0 are torch.nn.Linear's initialisation, and every W_i, b_i a copy
//! of one such Linear (the official `_get_clones`): they start equal and train apart. The text
//! prompts get gradients through both towers. Widths come from the model (the official code
//! hard-codes ViT-B/16's 512 and 768).
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
pub struct MapleConfig {
    /// Prompt tokens in each tower (the official 2).
    pub n_ctx: usize,
    /// Layers of both towers with their own prompts, from the input (the official 9 of ViT-B/16's
    /// 12; default: 9, or every layer of a shallower model).
    pub depth: Option<usize>,
    /// The words the text context starts from; its first `nCtx` tokens are learned.
    pub ctx_init: String,
    /// Standard deviation of the deep text prompts' initialisation.
    pub init_std: f64,
    pub seed: u64,
}

impl Default for MapleConfig {
    fn default() -> Self {
        Self {
            n_ctx: 2,
            depth: None,
            ctx_init: super::coop::PHOTO_CTX_INIT.into(),
            init_std: 0.02,
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

/// The official depth, where the model is that deep.
const DEFAULT_DEPTH: usize = 9;

/// A linear map d_t -> d_v: weight (d_v, d_t) and bias (d_v).
#[derive(Debug)]
pub struct Coupling {
    pub weight: Var,
    pub bias: Var,
}

impl Coupling {
    /// x W^T + b for text prompts x (n, d_t): (n, d_v), differentiable in x, W and b.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

#[derive(Debug)]
pub struct MapleLearner {
    /// Resolved: `depth` as built.
    pub config: MapleConfig,
    pub context: CoopContext,
    /// T_1 .. T_{depth-1}, (n, d_t) each.
    pub text_deep: Vec<Var>,
    /// W_0 (applied to ctx) .. W_{depth-1} (applied to T_i).
    pub couplings: Vec<Coupling>,
    /// Tape bytes the image tower's training pass may keep at once (the runtime's memory
    /// budget): a batch runs through it in chunks that fit (`towers::image_chunk`).
    pub image_budget: usize,
}

fn depth_of(clip: &Clip, config: &MapleConfig) -> Result<usize> {
    let layers = clip
        .config
        .text_config
        .num_hidden_layers
        .min(clip.config.vision_config.num_hidden_layers);
    let depth = config.depth.unwrap_or(DEFAULT_DEPTH.min(layers));
    if config.n_ctx == 0 {
        return Err(Error::InvalidArgument("nCtx must be at least 1".into()));
    }
    if depth == 0 || depth > layers {
        return Err(Error::InvalidArgument(format!(
            "depth must be from 1 to {layers}, the layers of the shallower tower, got {depth}"
        )));
    }
    if !(config.init_std.is_finite() && config.init_std >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "initStd must be a non-negative number, got {}",
            config.init_std
        )));
    }
    Ok(depth)
}

fn text_name(i: usize) -> String {
    format!("text_prompt.{i}")
}
fn coupling_names(i: usize) -> (String, String) {
    (format!("coupling.{i}.weight"), format!("coupling.{i}.bias"))
}

/// torch.nn.Linear's default initialisation of (out, fan_in) and its bias: U(+-1/sqrt(fan_in)).
fn linear_init(rng: &mut Rng, out: usize, fan_in: usize, clip: &Clip) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut u = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect()
    };
    let w = Tensor::from_vec(u(out * fan_in), (out, fan_in), &clip.device)?;
    let b = Tensor::from_vec(u(out), out, &clip.device)?;
    Ok((w, b))
}

impl MapleLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: MapleConfig) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let depth = depth_of(clip, &config)?;
        let ctx = towers::first_words(clip, &config.ctx_init, config.n_ctx, "nCtx")?;
        let (d_t, d_v) = (
            clip.text.hidden_size(),
            clip.config.vision_config.hidden_size,
        );
        let mut rng = Rng::new(config.seed);
        let text_deep = (1..depth)
            .map(|_| {
                Ok(Tensor::from_vec(
                    rng.normal_vec(config.n_ctx * d_t, config.init_std),
                    (config.n_ctx, d_t),
                    &clip.device,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        // W_0, then one Linear cloned for every deeper layer.
        let first = linear_init(&mut rng, d_v, d_t, clip)?;
        let deep = linear_init(&mut rng, d_v, d_t, clip)?;
        let mut couplings = vec![first];
        couplings.extend((1..depth).map(|_| deep.clone()));
        Self::from_parts(clip, class_names, config, ctx, text_deep, couplings)
    }

    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        mut config: MapleConfig,
        ctx: Tensor,
        text_deep: Vec<Tensor>,
        couplings: Vec<(Tensor, Tensor)>,
    ) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let depth = depth_of(clip, &config)?;
        config.depth = Some(depth);
        let (d_t, d_v) = (
            clip.text.hidden_size(),
            clip.config.vision_config.hidden_size,
        );
        let n = config.n_ctx;
        let expect = |what: &str, t: &Tensor, shape: &[usize]| -> Result<()> {
            if t.dims() != shape {
                return Err(Error::InvalidArgument(format!(
                    "MaPLe `{what}` has shape {:?}; this CLIP (text width {d_t}, image width {d_v}) and nCtx {n} need {shape:?}",
                    t.dims()
                )));
            }
            Ok(())
        };
        expect("ctx", &ctx, &[n, d_t])?;
        if text_deep.len() + 1 != depth || couplings.len() != depth {
            return Err(Error::InvalidArgument(format!(
                "{} deep text prompts and {} couplings for depth {depth}",
                text_deep.len(),
                couplings.len()
            )));
        }
        for (i, t) in text_deep.iter().enumerate() {
            expect(&text_name(i + 1), t, &[n, d_t])?;
        }
        for (i, (w, b)) in couplings.iter().enumerate() {
            let (wn, bn) = coupling_names(i);
            expect(&wn, w, &[d_v, d_t])?;
            expect(&bn, b, &[d_v])?;
        }
        let var = |t: &Tensor| Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        Ok(Self {
            context: towers::text_context(clip, class_names, &config.ctx_init, ctx)?,
            text_deep: text_deep.iter().map(var).collect::<Result<_>>()?,
            couplings: couplings
                .iter()
                .map(|(w, b)| {
                    Ok(Coupling {
                        weight: var(w)?,
                        bias: var(b)?,
                    })
                })
                .collect::<Result<_>>()?,
            config,
            image_budget: towers::budget_bytes(Runtime::default()),
        })
    }

    /// The image prompts (n, d_v) from the text prompts, differentiable in both and the maps.
    fn vision_prompts(&self) -> Result<Vec<Tensor>> {
        let mut p = vec![self.couplings[0].apply(self.context.ctx.as_tensor())?];
        for (t, c) in self.text_deep.iter().zip(&self.couplings[1..]) {
            p.push(c.apply(t.as_tensor())?);
        }
        Ok(p)
    }

    fn text_deep_tensors(&self) -> Vec<Tensor> {
        self.text_deep
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect()
    }

    /// Text features (K, E) of a class list's prompts (no gradients).
    pub fn text_features(&self, clip: &Clip, buffers: &ClassBuffers) -> Result<Tensor> {
        towers::prompted_text_features(clip, &self.context, &self.text_deep, buffers)
    }

    /// Image features (B, E) of pixels with the coupled image prompts (no gradients).
    pub fn image_features(&self, clip: &Clip, pixels: &Tensor) -> Result<Tensor> {
        let p = self
            .vision_prompts()?
            .iter()
            .map(|t| Ok(t.detach().to_dtype(clip.dtype)?))
            .collect::<Result<Vec<_>>>()?;
        clip.encode_image_prompted(
            pixels,
            VisionPrompts {
                input: &p[0],
                deep: &p[1..],
            },
        )
    }
}

impl Learner for MapleLearner {
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
        for (i, c) in self.couplings.iter().enumerate() {
            let (wn, bn) = coupling_names(i);
            v.push((wn, c.weight.clone()));
            v.push((bn, c.bias.clone()));
        }
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
        let b = &self.context.buffers;
        let prompts = towers::own_prompts(&self.context)?; // (K, used, d_t)
        let text_deep = self.text_deep_tensors();
        let vision = self.vision_prompts()?;
        towers::step(
            clip,
            TextSide {
                embeds: &prompts,
                eot: &b.eot,
                shared: self.context.shared_len(),
                deep: &text_deep,
            },
            ImageSide {
                pixels: batch.pixels()?,
                input: &vision[0],
                deep: &vision[1..],
            },
            &self.vars(),
            grad_scale,
            towers::image_chunk(clip, batch.len(), vision[0].dim(0)?, self.image_budget),
            |f: Features<'_>| {
                let logits = clip.logits(f.image, f.text)?;
                let labels = labels.narrow(0, f.rows.start, f.rows.len())?;
                Ok((crate::loss::cross_entropy(&logits, &labels)?, logits))
            },
        )
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

const N_CTX: OptionDoc = OptionDoc {
    name: "nCtx",
    kind: OptionKind::Integer { min: 1 },
    doc: "prompt tokens in each tower (the text's of ctxInit's)",
    flag: None,
};
const DEPTH: OptionDoc = OptionDoc {
    name: "depth",
    kind: OptionKind::Integer { min: 1 },
    doc: "layers of both towers with their own prompts, from the input (default 9, or every layer of a shallower model)",
    flag: None,
};
const CTX_INIT: OptionDoc = OptionDoc {
    name: "ctxInit",
    kind: OptionKind::String,
    doc: "words the text context starts from; its first nCtx tokens are learned, the rest stay as fixed text",
    flag: None,
};
const INIT_STD: OptionDoc = OptionDoc {
    name: "initStd",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "standard deviation of the deep text prompts' random initialisation",
    flag: None,
};

/// The official `MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`: SGD lr 0.0035, 5 epochs, batch 4, with
/// the CoOp recipe's momentum, weight decay, warmup and cosine.
fn recipe(_: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: 5,
        batch_size: 4,
        lr: 0.0035,
        ..Recipe::default()
    }
}

/// The official MaPLe's names: the input context `ctx` and its projection `proj` to the image
/// tower, and per deeper layer i the text prompt `compound_prompts_text.{i-1}` and its projection
/// `compound_prompt_projections.{i-1}`.
pub static OFFICIAL: Official = Official {
    renames: &[&[
        official::exact("ctx", "prompt_learner.ctx"),
        Rename {
            ours: "text_prompt.{}",
            theirs: "prompt_learner.compound_prompts_text.{}",
            shift: 1,
        },
        official::exact("coupling.0.weight", "prompt_learner.proj.weight"),
        official::exact("coupling.0.bias", "prompt_learner.proj.bias"),
        Rename {
            ours: "coupling.{}.weight",
            theirs: "prompt_learner.compound_prompt_projections.{}.weight",
            shift: 1,
        },
        Rename {
            ours: "coupling.{}.bias",
            theirs: "prompt_learner.compound_prompt_projections.{}.bias",
            shift: 1,
        },
    ]],
    options: |shapes| {
        serde_json::json!({
            "nCtx": official::dim_of(shapes, "ctx", 0),
            "depth": 1 + official::count_prefixed(shapes, "text_prompt."),
        })
    },
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "maple",
    title: "MaPLe",
    paper: "Khattak, Rasheed, Maaz, Khan, Khan: MaPLe: Multi-modal Prompt Learning (CVPR 2023)",
    takes: Takes::Images,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: None,
    options: &[N_CTX, DEPTH, CTX_INIT, INIT_STD, SEED],
    defaults: || super::options_json(&MapleConfig::default()),
    recipe,
    create: |clip, names, options, runtime: Runtime| {
        let config: MapleConfig = super::parse_options("maple", options)?;
        let mut l = MapleLearner::new(clip, names, config)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: MapleConfig = super::parse_options("maple", meta.options.clone())?;
        let depth = depth_of(clip, &config)?;
        let text_deep = (1..depth)
            .map(|i| super::saved(tensors, &text_name(i)))
            .collect::<Result<Vec<_>>>()?;
        let couplings = (0..depth)
            .map(|i| {
                let (wn, bn) = coupling_names(i);
                Ok((super::saved(tensors, &wn)?, super::saved(tensors, &bn)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut l = MapleLearner::from_parts(
            clip,
            &meta.class_names,
            config,
            super::saved(tensors, "ctx")?,
            text_deep,
            couplings,
        )?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    official: Some(&OFFICIAL),
};
