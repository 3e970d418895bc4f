//! VPT-deep (Jia et al., ECCV 2022), as the prompt-learning papers run it on CLIP (the official
//! multimodal-prompt-learning code, trainers/vpt.py): learned tokens inside the image tower only,
//! the text side the frozen hand-made prompt.
//!
//!   x_0 = ln_pre(cat[CLS + pos, patches + pos, P_0])              (B, 1 + g² + n, D)
//!   x_i = block_i(cat[x_{i-1}[:, :1 + g²], P_i])   for 1 <= i < depth
//!   x_i = block_i(x_{i-1})                          for i >= depth
//!   f   = ln_post(x_L[:, 0]) W_proj,   logits = exp(logit_scale) normalize(f) normalize(g(template(class)))^T
//!
//! P_0 .. P_{depth-1} are (n, D), N(0, 0.02). The prompts never see class names, so the learner
//! scores any class list, and base-to-new works as for CoOp. The gradients of the prompts come from
//! the image tower's own training pass (`Clip::image_features_train`), which computes no gradient
//! of a frozen weight.
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes, SEED};
use super::official::{self, Official, Rename};
use super::towers::{self, needs_vit};
use super::{Batch, Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer, StepOutput};
use crate::clip::{Clip, VisionPrompts};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VptConfig {
    /// Prompt tokens per layer (the official 8).
    pub n_ctx: usize,
    /// Layers with their own prompts: the input's and depth - 1 deep ones (default: every layer,
    /// as the official config's 12 of ViT-B/16's 12).
    pub depth: Option<usize>,
    /// Standard deviation of the prompts' initialisation (the official 0.02).
    pub init_std: f64,
    /// The frozen text side's hand-made template, `{}` for the class name.
    pub template: String,
    pub seed: u64,
}

impl Default for VptConfig {
    fn default() -> Self {
        Self {
            n_ctx: 8,
            depth: None,
            init_std: 0.02,
            template: crate::zeroshot::DEFAULT_TEMPLATE.into(),
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

#[derive(Debug)]
pub struct VptLearner {
    /// Resolved: `depth` as built.
    pub config: VptConfig,
    class_names: Vec<String>,
    /// P_0 .. P_{depth-1}, each (n, D), f32.
    pub prompts: Vec<Var>,
    /// (K, E) normalised, frozen: the template's text features of the learner's own classes.
    text: Tensor,
    /// Tape bytes the image tower's training pass may keep at once (the runtime's memory
    /// budget): a batch runs through it in chunks that fit (`towers::image_chunk`).
    pub image_budget: usize,
}

/// The name of layer i's prompt in learner files and checkpoints.
fn prompt_name(i: usize) -> String {
    format!("vision_prompt.{i}")
}

impl VptLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: VptConfig) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let (depth, width) = Self::shape(clip, &config)?;
        if !(config.init_std.is_finite() && config.init_std >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "initStd must be a non-negative number, got {}",
                config.init_std
            )));
        }
        let mut rng = Rng::new(config.seed);
        let prompts = (0..depth)
            .map(|_| {
                let data = rng.normal_vec(config.n_ctx * width, config.init_std);
                Ok(Tensor::from_vec(data, (config.n_ctx, width), &clip.device)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(clip, class_names, config, prompts)
    }

    /// The depth and the tower's width, or why the options do not fit this CLIP.
    fn shape(clip: &Clip, config: &VptConfig) -> Result<(usize, usize)> {
        let layers = clip.config.vision_config.num_hidden_layers;
        let depth = config.depth.unwrap_or(layers);
        if config.n_ctx == 0 {
            return Err(Error::InvalidArgument("nCtx must be at least 1".into()));
        }
        if depth == 0 || depth > layers {
            return Err(Error::InvalidArgument(format!(
                "depth must be from 1 to the image tower's {layers} layers, got {depth}"
            )));
        }
        Ok((depth, clip.config.vision_config.hidden_size))
    }

    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        mut config: VptConfig,
        prompts: Vec<Tensor>,
    ) -> Result<Self> {
        needs_vit(clip, SPEC.name)?;
        let (depth, width) = Self::shape(clip, &config)?;
        config.depth = Some(depth);
        if prompts.len() != depth {
            return Err(Error::InvalidArgument(format!(
                "{} vision prompts for depth {depth}",
                prompts.len()
            )));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.dims() != [config.n_ctx, width] {
                return Err(Error::InvalidArgument(format!(
                    "VPT `{}` has shape {:?}; this CLIP's image tower (width {width}, nCtx {}) needs [{}, {width}]",
                    prompt_name(i),
                    p.dims(),
                    config.n_ctx,
                    config.n_ctx
                )));
            }
        }
        let text = text_features(clip, class_names, &config.template)?;
        Ok(Self {
            class_names: class_names.to_vec(),
            prompts: prompts
                .iter()
                .map(|p| Ok(Var::from_tensor(&p.to_dtype(DType::F32)?)?))
                .collect::<Result<_>>()?,
            text,
            config,
            image_budget: towers::budget_bytes(Runtime::default()),
        })
    }

    /// The prompts in the model's dtype, input first.
    fn prompts_in(&self, clip: &Clip) -> Result<Vec<Tensor>> {
        self.prompts
            .iter()
            .map(|p| Ok(p.as_tensor().to_dtype(clip.dtype)?))
            .collect()
    }

    /// Image features (B, E) of pixels with the learned prompts (no gradients).
    pub fn image_features(&self, clip: &Clip, pixels: &Tensor) -> Result<Tensor> {
        let p = self.prompts_in(clip)?;
        clip.encode_image_prompted(
            pixels,
            VisionPrompts {
                input: &p[0],
                deep: &p[1..],
            },
        )
    }
}

fn text_features(clip: &Clip, class_names: &[String], template: &str) -> Result<Tensor> {
    let t = crate::zeroshot::class_embeddings(clip, class_names, &[template.to_string()])?;
    Ok(t.to_dtype(clip.head_dtype())?)
}

impl Learner for VptLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.class_names.clone(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        self.prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (prompt_name(i), p.clone()))
            .collect()
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
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
        let p = self.prompts_in(clip)?;
        let image = towers::ImageSide {
            pixels: batch.pixels()?,
            input: &p[0],
            deep: &p[1..],
        };
        let chunk = towers::image_chunk(clip, batch.len(), p[0].dim(0)?, self.image_budget);
        // The small graph after the tower (normalisation, logits, loss) by autograd, from a leaf
        // at the features; the tower's own backward pass from there, a chunk of images at a time.
        let (g, loss, logits) = towers::image_chunks(
            clip,
            &image,
            chunk,
            grad_scale,
            |features, rows| {
                let logits = clip.logits(features, &self.text)?;
                let labels = labels.narrow(0, rows.start, rows.len())?;
                Ok((crate::loss::cross_entropy(&logits, &labels)?, logits))
            },
            |_| Ok(()),
        )?;
        let grads = std::iter::once(g.input)
            .chain(g.deep)
            .map(|g| Ok((g.to_dtype(DType::F32)? / grad_scale)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(StepOutput {
            loss,
            logits,
            grads,
        })
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        let text = match class_names {
            Some(names) if names != self.class_names.as_slice() => {
                text_features(clip, names, &self.config.template)?
            }
            _ => self.text.clone(),
        };
        Ok(Box::new(towers::ImageScorer {
            clip,
            method: SPEC.name,
            text,
            image_features: move |pixels: &Tensor| self.image_features(clip, pixels),
        }))
    }
}

const N_CTX: OptionDoc = OptionDoc {
    name: "nCtx",
    kind: OptionKind::Integer { min: 1 },
    doc: "vision prompt tokens per layer",
    flag: None,
};
const DEPTH: OptionDoc = OptionDoc {
    name: "depth",
    kind: OptionKind::Integer { min: 1 },
    doc: "image tower layers with their own prompts, from the input (default: every layer)",
    flag: None,
};
const INIT_STD: OptionDoc = OptionDoc {
    name: "initStd",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "standard deviation of the prompts' random initialisation",
    flag: None,
};
const TEMPLATE: OptionDoc = OptionDoc {
    name: "template",
    kind: OptionKind::String,
    doc: "the frozen text side's hand-made template, {} for the class name",
    flag: None,
};

/// The official `VPT/vit_b16_c2_ep5_batch4_4.yaml`: SGD lr 0.0025, 5 epochs, batch 4, with the
/// CoOp recipe's momentum, weight decay, warmup and cosine.
fn recipe(_: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: 5,
        batch_size: 4,
        lr: 0.0025,
        ..Recipe::default()
    }
}

/// The official names of image prompts (multimodal-prompt-learning's VPT and IVLP trainers):
/// layer 0's tokens are the image encoder's `VPT`, layer i's its block i's `VPT_shallow`.
pub const IMAGE_RENAMES: &[Rename] = &[
    official::exact("vision_prompt.0", "image_encoder.VPT"),
    Rename {
        ours: "vision_prompt.{}",
        theirs: "image_encoder.transformer.resblocks.{}.VPT_shallow",
        shift: 0,
    },
];

/// The official VPT-deep's names: its image prompts (`IMAGE_RENAMES`).
pub static OFFICIAL: Official = Official {
    renames: &[IMAGE_RENAMES],
    options: |shapes| {
        serde_json::json!({
            "nCtx": official::dim_of(shapes, "vision_prompt.0", 0),
            "depth": official::count_prefixed(shapes, "vision_prompt."),
        })
    },
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "vpt",
    title: "VPT-deep",
    paper: "Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim: Visual Prompt Tuning (ECCV 2022), deep variant on CLIP as in Khattak et al.'s MaPLe baselines (CVPR 2023)",
    takes: Takes::Images,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: Some("template"),
    options: &[N_CTX, DEPTH, INIT_STD, TEMPLATE, SEED],
    defaults: || super::options_json(&VptConfig::default()),
    recipe,
    create: |clip, names, options, runtime: Runtime| {
        let config: VptConfig = super::parse_options("vpt", options)?;
        let mut l = VptLearner::new(clip, names, config)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: VptConfig = super::parse_options("vpt", meta.options.clone())?;
        let depth = config
            .depth
            .unwrap_or(clip.config.vision_config.num_hidden_layers);
        let prompts = (0..depth)
            .map(|i| super::saved(tensors, &prompt_name(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut l = VptLearner::from_parts(clip, &meta.class_names, config, prompts)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    official: Some(&OFFICIAL),
};
