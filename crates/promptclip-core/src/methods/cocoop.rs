//! CoCoOp (Zhou et al., CVPR 2022): a lightweight Meta-Net turns each image's normalised feature
//! into a bias pi(x) added to every context vector, v_m(x) = v_m + pi(x), so every image gets its
//! own prompts t_k(x) for all K classes (paper eq. 3-4).
//!
//! The official code loops over the images of a batch and runs the text encoder once per image.
//! Here all B x K prompts of a batch go through the encoder together, in chunks sized to a
//! memory budget; in training, gradients are accumulated chunk by chunk, so memory stays
//! bounded while the math (mean cross-entropy over the batch) is unchanged.
use super::catalogue::{
    ClassBinding, Fitting, OptionDoc, OptionKind, Takes, CTX_INIT_PHOTO, INIT_STD, N_CTX, POSITION,
    SEED,
};
use super::coop::{ClassBuffers, CoopConfig, CoopContext, PHOTO_CTX_INIT};
use super::official::{self, Official};
use super::{Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer, StepOutput};
use crate::clip::{l2_normalize, Clip};
use crate::loss::cross_entropy;
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

/// Linear(vis_dim, vis_dim / ratio) -> ReLU -> Linear(vis_dim / ratio, ctx_dim).
#[derive(Debug)]
pub struct MetaNet {
    pub linear1_weight: Var,
    pub linear1_bias: Var,
    pub linear2_weight: Var,
    pub linear2_bias: Var,
}

impl MetaNet {
    /// PyTorch's nn.Linear default initialisation: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub fn new(
        vis_dim: usize,
        hidden: usize,
        ctx_dim: usize,
        seed: u64,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut uniform = |shape: &[usize], fan_in: usize| -> Result<Var> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let n = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Ok(Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?)
        };
        Ok(Self {
            linear1_weight: uniform(&[hidden, vis_dim], vis_dim)?,
            linear1_bias: uniform(&[hidden], vis_dim)?,
            linear2_weight: uniform(&[ctx_dim, hidden], hidden)?,
            linear2_bias: uniform(&[ctx_dim], hidden)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x
            .matmul(&self.linear1_weight.as_tensor().t()?)?
            .broadcast_add(self.linear1_bias.as_tensor())?
            .relu()?;
        Ok(h.matmul(&self.linear2_weight.as_tensor().t()?)?
            .broadcast_add(self.linear2_bias.as_tensor())?)
    }

    pub fn named(&self) -> Vec<(String, Var)> {
        vec![
            ("meta.linear1.weight".into(), self.linear1_weight.clone()),
            ("meta.linear1.bias".into(), self.linear1_bias.clone()),
            ("meta.linear2.weight".into(), self.linear2_weight.clone()),
            ("meta.linear2.bias".into(), self.linear2_bias.clone()),
        ]
    }

    pub fn hidden(&self) -> usize {
        self.linear1_bias.dims()[0]
    }
}

/// CoCoOp's options: CoOp's context options (one unified context; by default the words
/// "a photo of a", M = 4) plus the Meta-Net's bottleneck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CocoopConfig {
    #[serde(flatten)]
    pub context: CoopConfig,
    /// Meta-Net bottleneck: hidden = image feature size / ratio, at least 1 (16 in the paper).
    pub meta_net_ratio: usize,
}

impl Default for CocoopConfig {
    fn default() -> Self {
        Self {
            context: CoopConfig::default(),
            meta_net_ratio: 16,
        }
    }
}

#[derive(Debug)]
pub struct CocoopLearner {
    /// The context vectors and class buffers (CoOp's, unified); its config is the resolved one.
    pub context: CoopContext,
    pub meta: MetaNet,
    pub meta_net_ratio: usize,
    /// Activation memory the text encoder may use at once; B x K prompts are chunked to fit.
    pub memory_budget_bytes: usize,
}

impl CocoopLearner {
    pub fn new(
        clip: &Clip,
        class_names: &[String],
        config: CocoopConfig,
        runtime: Runtime,
    ) -> Result<Self> {
        if config.context.class_specific {
            return Err(Error::InvalidArgument(
                "CoCoOp learns one unified context (classSpecific is CoOp-only)".into(),
            ));
        }
        // The hidden layer is (image feature size / ratio), at least 1: any ratio from 1 up
        // builds (a tiny CLIP with the paper's 16 too), and none allocates more than the
        // feature size.
        if config.meta_net_ratio == 0 {
            return Err(Error::InvalidArgument(format!(
                "metaNetRatio must be at least 1, got {}",
                config.meta_net_ratio
            )));
        }
        let vis_dim = clip.embed_dim();
        let seed = config.context.seed;
        let context = CoopContext::with_default_init(
            clip,
            class_names,
            config.context,
            Some(PHOTO_CTX_INIT),
        )?;
        let hidden = (vis_dim / config.meta_net_ratio).max(1);
        let meta = MetaNet::new(vis_dim, hidden, clip.text.hidden_size(), seed, &clip.device)?;
        Ok(Self::from_parts(
            context,
            meta,
            config.meta_net_ratio,
            runtime,
        ))
    }

    pub fn from_parts(
        context: CoopContext,
        meta: MetaNet,
        meta_net_ratio: usize,
        runtime: Runtime,
    ) -> Self {
        Self {
            context,
            meta,
            meta_net_ratio,
            memory_budget_bytes: runtime.memory_budget_mb.saturating_mul(1 << 20),
        }
    }

    /// The resolved options, as saved.
    pub fn config(&self) -> CocoopConfig {
        CocoopConfig {
            context: self.context.config.clone(),
            meta_net_ratio: self.meta_net_ratio,
        }
    }

    /// How many prompts (image x class) fit the memory budget at once, from an estimate of the
    /// text encoder's activations per prompt (kept for backward when training).
    pub fn prompts_per_chunk(&self, clip: &Clip, buffers: &ClassBuffers, training: bool) -> usize {
        let t = buffers.eot.iter().max().map(|e| e + 1).unwrap_or(1);
        let c = &clip.config.text_config;
        let (d, h, l) = (c.hidden_size, c.num_attention_heads, c.num_hidden_layers);
        let per_layer = t * (20 * d + 3 * h * t) + 6 * t * c.intermediate_size;
        // Training keeps every layer's activations for backward; inference only a few at a time.
        let bytes = if training {
            4 * l * per_layer
        } else {
            4 * per_layer * 4
        };
        (self.memory_budget_bytes / bytes.max(1)).max(buffers.class_names.len())
    }

    /// Each image's K prompts (B x K, T, d) for `ctx_shifted` (B, M, d), with their EOT
    /// positions and groups (the K prompts of an image share SOS and its shifted context).
    fn prompts(
        &self,
        ctx_shifted: &Tensor,
        buffers: &ClassBuffers,
    ) -> Result<(Tensor, Vec<usize>, Vec<usize>)> {
        let (b, k) = (ctx_shifted.dim(0)?, buffers.class_names.len());
        let used = buffers.eot.iter().max().map(|e| e + 1).unwrap_or(1);
        let prompts = (0..b)
            .map(|i| {
                self.context
                    .assemble(&ctx_shifted.get(i)?, buffers)?
                    .narrow(1, 0, used)
                    .map_err(Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let eot: Vec<usize> = (0..b).flat_map(|_| buffers.eot.iter().copied()).collect();
        let group: Vec<usize> = (0..b).flat_map(|i| std::iter::repeat_n(i, k)).collect();
        Ok((Tensor::cat(&prompts, 0)?, eot, group))
    }

    /// pi(x) added to every context vector: (B, M, d) for normalised image features (B, E).
    fn shifted_context(&self, f_norm: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let bias = self.meta.forward(f_norm)?; // (B, d): pi(x)
        Ok(ctx.unsqueeze(0)?.broadcast_add(&bias.unsqueeze(1)?)?) // (B, M, d)
    }

    /// Logits (B, K): each image's normalised feature against its own K normalised text features.
    fn image_logits(clip: &Clip, f_norm: &Tensor, text: &Tensor, k: usize) -> Result<Tensor> {
        let b = f_norm.dim(0)?;
        let text = l2_normalize(&text.to_dtype(DType::F32)?)?.reshape((b, k, ()))?;
        Ok((text.broadcast_mul(&f_norm.unsqueeze(1)?)?.sum(D::Minus1)?
            * (clip.logit_scale as f64).exp())?)
    }

    /// Logits (B, K) for one chunk of images; differentiable in ctx and the Meta-Net.
    fn chunk_logits(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        buffers: &ClassBuffers,
        ctx: &Tensor,
    ) -> Result<Tensor> {
        let f = l2_normalize(&image_features.to_dtype(DType::F32)?)?;
        let (prompts, eot, group) = self.prompts(&self.shifted_context(&f, ctx)?, buffers)?;
        let text =
            clip.encode_text_embeds_shared(&prompts, &eot, self.context.shared_len(), &group)?;
        Self::image_logits(clip, &f, &text, buffers.class_names.len())
    }

    fn images_per_chunk(&self, clip: &Clip, buffers: &ClassBuffers, training: bool) -> usize {
        (self.prompts_per_chunk(clip, buffers, training) / buffers.class_names.len()).max(1)
    }

    /// Logits (B, K) without gradients, chunked to the memory budget.
    pub fn logits_for(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        buffers: &ClassBuffers,
    ) -> Result<Tensor> {
        let ctx = self.context.ctx.as_tensor().detach();
        let n = self.images_per_chunk(clip, buffers, false);
        let b = image_features.dim(0)?;
        let parts = (0..b)
            .step_by(n)
            .map(|s| {
                Ok(self
                    .chunk_logits(
                        clip,
                        &image_features.narrow(0, s, n.min(b - s))?,
                        buffers,
                        &ctx,
                    )?
                    .detach())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// CoCoOp scoring: each image builds its own K prompts, so only the class buffers are prepared.
struct PerImageScorer<'a> {
    learner: &'a CocoopLearner,
    clip: &'a Clip,
    buffers: ClassBuffers,
}

impl Scorer for PerImageScorer<'_> {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        self.learner
            .logits_for(self.clip, image_features, &self.buffers)
    }
}

impl Learner for CocoopLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.context.buffers.class_names.clone(),
            options: super::options_json(&self.config()),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![("ctx".to_string(), self.context.ctx.clone())];
        v.extend(self.meta.named());
        v
    }

    fn class_names(&self) -> &[String] {
        &self.context.buffers.class_names
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        self.chunk_logits(
            clip,
            image_features,
            &self.context.buffers,
            self.context.ctx.as_tensor(),
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
        Ok(Box::new(PerImageScorer {
            learner: self,
            clip,
            buffers,
        }))
    }

    fn learned_context(&self) -> Option<super::LearnedContext> {
        Some(self.context.learned())
    }

    /// Mean cross-entropy over the batch, with backward run per chunk of images and the
    /// gradients summed: d(mean)/dθ = Σ_chunks (n_c / B) d(mean_c)/dθ.
    fn loss_and_grads_scaled(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        let buffers = &self.context.buffers;
        let n = self.images_per_chunk(clip, buffers, true);
        let b = image_features.dim(0)?;
        let vars = self.vars();
        let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut logits_parts) = (0f64, Vec::new());
        let k = buffers.class_names.len();
        for s in (0..b).step_by(n) {
            let len = n.min(b - s);
            let f = l2_normalize(&image_features.narrow(0, s, len)?.to_dtype(DType::F32)?)?;
            let (prompts, eot, _) = self.prompts(
                &self.shifted_context(&f, self.context.ctx.as_tensor())?,
                buffers,
            )?;
            let chunk_labels = labels.narrow(0, s, len)?;
            // One group per image: its K prompts share SOS and its shifted context.
            let (loss, logits, grads) = super::prompt_loss_and_grads(
                clip,
                &prompts,
                &eot,
                self.context.shared_len(),
                k,
                &vars,
                grad_scale,
                |text| {
                    let logits = Self::image_logits(clip, &f, text, k)?;
                    Ok((
                        (cross_entropy(&logits, &chunk_labels)? * (len as f64 / b as f64))?,
                        logits,
                    ))
                },
            )?;
            loss_sum += loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
            for (i, g) in grads.into_iter().enumerate() {
                sums[i] = Some(match sums[i].take() {
                    None => g,
                    Some(acc) => (acc + g)?,
                });
            }
            logits_parts.push(logits);
        }
        let grads = sums
            .into_iter()
            .map(|g| g.ok_or_else(|| Error::Internal("empty batch".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(StepOutput {
            loss: loss_sum as f32,
            logits: Tensor::cat(&logits_parts, 0)?,
            grads,
        })
    }
}

const META_NET_RATIO: OptionDoc = OptionDoc {
    name: "metaNetRatio",
    kind: OptionKind::Integer { min: 1 },
    doc: "Meta-Net bottleneck: hidden = image feature size / ratio, at least 1",
    flag: Some("--meta-net-ratio"),
};

/// The official CoCoOp's names: the context and the Meta-Net (`meta_net.linear1`, a
/// Linear(E, E / ratio)); the ratio follows from linear1's shape.
pub static OFFICIAL: Official = Official {
    renames: &[&[
        official::exact("ctx", "prompt_learner.ctx"),
        official::exact(
            "meta.linear1.weight",
            "prompt_learner.meta_net.linear1.weight",
        ),
        official::exact("meta.linear1.bias", "prompt_learner.meta_net.linear1.bias"),
        official::exact(
            "meta.linear2.weight",
            "prompt_learner.meta_net.linear2.weight",
        ),
        official::exact("meta.linear2.bias", "prompt_learner.meta_net.linear2.bias"),
    ]],
    options: |shapes| {
        let ratio = match shapes.get("meta.linear1.weight").map(Vec::as_slice) {
            Some([hidden, e]) if *hidden > 0 && e % hidden == 0 => serde_json::json!(e / hidden),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({ "nCtx": official::dim_of(shapes, "ctx", 0), "metaNetRatio": ratio })
    },
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "cocoop",
    title: "CoCoOp",
    paper:
        "Zhou, Yang, Loy, Liu: Conditional Prompt Learning for Vision-Language Models (CVPR 2022)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: None,
    options: &[
        N_CTX,
        CTX_INIT_PHOTO,
        POSITION,
        META_NET_RATIO,
        INIT_STD,
        SEED,
    ],
    defaults: || super::options_json(&CocoopConfig::default()),
    // The paper's: 10 epochs at batch 1 (the official loop builds prompts image by image; here
    // larger batches work too, chunked to the memory budget).
    recipe: |_| Recipe {
        epochs: 10,
        batch_size: 1,
        ..Recipe::default()
    },
    create: |clip, names, options, runtime| {
        let config: CocoopConfig = super::parse_options("cocoop", options)?;
        Ok(Box::new(CocoopLearner::new(clip, names, config, runtime)?))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: CocoopConfig = super::parse_options("cocoop", meta.options.clone())?;
        let ctx = super::saved(tensors, "ctx")?;
        let context = CoopContext::from_parts(clip, &meta.class_names, config.context, ctx)?;
        let var =
            |name: &str| -> Result<Var> { Ok(Var::from_tensor(&super::saved(tensors, name)?)?) };
        let meta_net = MetaNet {
            linear1_weight: var("meta.linear1.weight")?,
            linear1_bias: var("meta.linear1.bias")?,
            linear2_weight: var("meta.linear2.weight")?,
            linear2_bias: var("meta.linear2.bias")?,
        };
        Ok(Box::new(CocoopLearner::from_parts(
            context,
            meta_net,
            config.meta_net_ratio,
            runtime,
        )))
    },
    official: Some(&OFFICIAL),
};
