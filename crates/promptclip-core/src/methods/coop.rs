//! CoOp (Zhou et al., IJCV 2022): learned context vectors, CLIP frozen.
//!
//! A prompt for class k is  t_k = [SOS] [V]_1 ... [V]_M [CLASS_k] . [EOS]  (paper eq. 2), with
//! the context vectors [V]_m learned and every CLIP weight frozen. Following the official code,
//! each class's prompt text "X X ... X {name}." is tokenized and embedded once; its SOS embedding
//! is kept as `prefix` and everything after the M placeholder tokens (class-name tokens, ".",
//! EOS, padding) as `suffix`. The forward pass only concatenates those buffers with the context,
//! so gradients reach the context vectors and nothing else. CoCoOp and KgCoOp build on this.
use super::catalogue::{
    coop_recipe, ClassBinding, Fitting, Takes, CLASS_SPECIFIC, CTX_INIT, INIT_STD, N_CTX, POSITION,
    SEED,
};
use super::official::{self, Official};
use super::{LearnedContext, Learner, LearnerMeta, MethodSpec, Runtime, Scorer, StepOutput};
use crate::clip::{l2_normalize, Clip};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

/// Where the class token sits relative to the context (paper Sec. 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassTokenPosition {
    /// [SOS] V_1..V_M [CLASS] . [EOS]
    #[default]
    End,
    /// [SOS] V_1..V_{M/2} [CLASS] V_{M/2+1}..V_M . [EOS]
    Middle,
    /// [SOS] [CLASS] V_1..V_M . [EOS]
    Front,
}

/// M when neither `nCtx` nor init words say otherwise (the paper's default).
pub const DEFAULT_N_CTX: usize = 16;
/// The init words of CoCoOp's and KgCoOp's context ("a photo of a", M = 4).
pub const PHOTO_CTX_INIT: &str = "a photo of a";

/// CoOp's options; also the context part of CoCoOp's and KgCoOp's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CoopConfig {
    /// M, the number of learned context tokens. With `ctxInit`, M is the words' token count.
    pub n_ctx: Option<usize>,
    /// Initialise the context from these words' token embeddings instead of at random.
    pub ctx_init: Option<String>,
    /// One context per class (K, M, d) instead of one shared by all classes (M, d).
    pub class_specific: bool,
    pub position: ClassTokenPosition,
    /// Standard deviation of the random initialisation (the paper's 0.02).
    pub init_std: f64,
    /// Seed of every random initialisation of the learner.
    pub seed: u64,
}

impl Default for CoopConfig {
    fn default() -> Self {
        Self {
            n_ctx: None,
            ctx_init: None,
            class_specific: false,
            position: ClassTokenPosition::End,
            init_std: 0.02,
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

impl CoopConfig {
    /// The init words in effect: `ctxInit`, else `default_words` when `nCtx` is not given either
    /// (CoCoOp and KgCoOp start from "a photo of a"; CoOp from random vectors).
    fn init_words(&self, default_words: Option<&str>) -> Option<String> {
        match (&self.ctx_init, self.n_ctx) {
            (Some(w), _) => Some(w.clone()),
            (None, None) => default_words.map(str::to_string),
            (None, Some(_)) => None,
        }
    }
}

/// Token-embedding buffers of one class list: fixed parts of every prompt.
#[derive(Debug, Clone)]
pub struct ClassBuffers {
    /// The class names as given (prompts hold their cleaned text).
    pub class_names: Vec<String>,
    /// (K, 1, d): the SOS embedding.
    pub prefix: Tensor,
    /// (K, L - 1 - M, d): class-name tokens, ".", EOS, padding.
    pub suffix: Tensor,
    /// Number of BPE tokens of each class name.
    pub name_lens: Vec<usize>,
    /// EOS position of each prompt (the text encoder is read there).
    pub eot: Vec<usize>,
}

#[derive(Debug)]
pub struct CoopContext {
    /// Resolved: `n_ctx` is M as built, `ctx_init` the init words if any.
    pub config: CoopConfig,
    /// (M, d) unified or (K, M, d) class-specific; the only trainable tensor.
    pub ctx: Var,
    /// Text the placeholders stand for when building buffers ("X X ... X" or the init words).
    prompt_prefix: String,
    pub buffers: ClassBuffers,
}

impl CoopContext {
    /// A CoOp learner: random context unless `ctxInit` is given.
    pub fn new(clip: &Clip, class_names: &[String], config: CoopConfig) -> Result<Self> {
        Self::with_default_init(clip, class_names, config, None)
    }

    /// A learner whose context starts from `default_words` unless `nCtx` or `ctxInit` is given.
    pub fn with_default_init(
        clip: &Clip,
        class_names: &[String],
        config: CoopConfig,
        default_words: Option<&str>,
    ) -> Result<Self> {
        let texts = crate::classnames::validate(class_names)?;
        let k = texts.len();
        let d = clip.text.hidden_size();
        let rows = if config.class_specific { k } else { 1 };
        let (ctx_rows, ctx_init) = match config.init_words(default_words) {
            None => {
                let m = config.n_ctx.unwrap_or(DEFAULT_N_CTX);
                if m == 0 {
                    return Err(Error::InvalidArgument("nCtx (M) must be at least 1".into()));
                }
                if !(config.init_std.is_finite() && config.init_std >= 0.0) {
                    return Err(Error::InvalidArgument(format!(
                        "initStd must be a non-negative number, got {}",
                        config.init_std
                    )));
                }
                // Before anything of size M is allocated: M is bounded by the context length.
                context_fits(clip, class_names, &texts, m)?;
                let data = Rng::new(config.seed).normal_vec(rows * m * d, config.init_std);
                (Tensor::from_vec(data, (rows, m, d), &clip.device)?, None)
            }
            Some(words) => {
                let words = crate::classnames::prompt_text(&words);
                let ids = clip.tokenizer.encode_words(&words)?;
                if ids.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "ctxInit `{words}` has no tokens"
                    )));
                }
                let ids_t = Tensor::new(ids.as_slice(), &clip.device)?;
                let emb = clip.text.token_embedding.index_select(&ids_t, 0)?;
                let emb = emb
                    .to_dtype(DType::F32)?
                    .unsqueeze(0)?
                    .repeat((rows, 1, 1))?;
                (emb, Some(words))
            }
        };
        let m = ctx_rows.dim(1)?;
        let ctx = if config.class_specific {
            ctx_rows
        } else {
            ctx_rows.squeeze(0)?
        };
        let config = CoopConfig {
            n_ctx: Some(m),
            ctx_init,
            ..config
        };
        Self::from_parts(clip, class_names, config, ctx)
    }

    /// A learner with the given context; `config` must be resolved (as `config` of a built
    /// learner is: `n_ctx` set, `ctx_init` the words the context started from, if any).
    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        config: CoopConfig,
        ctx: Tensor,
    ) -> Result<Self> {
        let texts = crate::classnames::validate(class_names)?;
        // Built learners always resolve M; a learner file's options may lack it.
        let m = config.n_ctx.ok_or_else(|| {
            Error::InvalidArgument(
                "the learner's options do not record nCtx (M), which every saved CoOp context has"
                    .into(),
            )
        })?;
        // A restored M comes from a file: bound it before building "X X ... X" of M words.
        context_fits(clip, class_names, &texts, m)?;
        let prompt_prefix = match &config.ctx_init {
            Some(words) => words.clone(),
            None => vec!["X"; m].join(" "),
        };
        let buffers = build_buffers(clip, class_names, &texts, m, &prompt_prefix)?;
        Ok(Self {
            config,
            ctx: Var::from_tensor(&ctx.to_device(&clip.device)?.to_dtype(DType::F32)?)?,
            prompt_prefix,
            buffers,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.ctx.dims()[self.ctx.rank() - 2]
    }

    pub fn class_names(&self) -> &[String] {
        &self.buffers.class_names
    }

    /// Buffers for another class list, to apply the learned context to new classes.
    /// Class-specific context belongs to its own classes, so it cannot move.
    pub fn buffers_for(&self, clip: &Clip, class_names: &[String]) -> Result<ClassBuffers> {
        if class_names == self.buffers.class_names.as_slice() {
            return Ok(self.buffers.clone());
        }
        if self.config.class_specific {
            return Err(own_classes_only(
                "class-specific context",
                &self.buffers.class_names,
            ));
        }
        let texts = crate::classnames::validate(class_names)?;
        build_buffers(clip, class_names, &texts, self.n_ctx(), &self.prompt_prefix)
    }

    /// Prompt embeddings (K, L, d) for `buffers` with context `ctx` ((M, d) or (K, M, d)).
    pub fn assemble(&self, ctx: &Tensor, buffers: &ClassBuffers) -> Result<Tensor> {
        let k = buffers.class_names.len();
        let m = self.n_ctx();
        let d = ctx.dim(D::Minus1)?;
        let ctx = if ctx.rank() == 2 {
            ctx.unsqueeze(0)?.broadcast_as((k, m, d))?
        } else {
            ctx.clone()
        };
        let ctx = ctx.to_dtype(buffers.prefix.dtype())?;
        let (prefix, suffix) = (&buffers.prefix, &buffers.suffix);
        let prompts = match self.config.position {
            ClassTokenPosition::End => Tensor::cat(&[prefix, &ctx, suffix], 1)?,
            ClassTokenPosition::Middle | ClassTokenPosition::Front => {
                let half = if self.config.position == ClassTokenPosition::Middle {
                    m / 2
                } else {
                    0
                };
                let rows = (0..k)
                    .map(|i| {
                        let n = buffers.name_lens[i];
                        let ctx_i = ctx.get(i)?;
                        let suf = suffix.get(i)?;
                        let parts = [
                            prefix.get(i)?,
                            ctx_i.narrow(0, 0, half)?,
                            suf.narrow(0, 0, n)?,
                            ctx_i.narrow(0, half, m - half)?,
                            suf.narrow(0, n, suf.dim(0)? - n)?,
                        ];
                        Tensor::cat(&parts, 0)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?
            }
        };
        Ok(prompts)
    }

    /// Leading tokens that are the same in every class prompt: SOS plus the context before the
    /// class name when the context is unified (end: all M, middle: M/2); only SOS otherwise.
    pub fn shared_len(&self) -> usize {
        if self.config.class_specific {
            return 1;
        }
        1 + match self.config.position {
            ClassTokenPosition::End => self.n_ctx(),
            ClassTokenPosition::Middle => self.n_ctx() / 2,
            ClassTokenPosition::Front => 0,
        }
    }

    /// Text features of assembled prompts (K, L, d) for `buffers`; the shared leading tokens are
    /// encoded once for all classes.
    pub fn encode_prompts(
        &self,
        clip: &Clip,
        prompts: &Tensor,
        buffers: &ClassBuffers,
    ) -> Result<Tensor> {
        clip.encode_text_embeds_shared(
            prompts,
            &buffers.eot,
            self.shared_len(),
            &vec![0; buffers.eot.len()],
        )
    }

    /// Text features (K, E) of the learned prompts for a class list (differentiable in ctx).
    pub fn text_features(&self, clip: &Clip, buffers: &ClassBuffers) -> Result<Tensor> {
        let prompts = self.assemble(self.ctx.as_tensor(), buffers)?;
        self.encode_prompts(clip, &prompts, buffers)
    }

    /// Logits (B, K) = exp(logit_scale) * cos(image, class prompt).
    pub fn logits(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        buffers: &ClassBuffers,
    ) -> Result<Tensor> {
        let text = self.text_features(clip, buffers)?;
        clip.logits(&image_features.to_dtype(text.dtype())?, &text)
    }

    /// For each context vector, the `k` nearest vocabulary tokens (see
    /// [`LearnedContext::nearest_tokens`]).
    pub fn interpret(&self, clip: &Clip, k: usize) -> Result<Vec<Vec<(u32, String, f32)>>> {
        self.learned().nearest_tokens(clip, k)
    }

    /// The context as users can ask for it.
    pub fn learned(&self) -> LearnedContext {
        LearnedContext {
            vectors: self.ctx.as_tensor().clone(),
            class_specific: self.config.class_specific,
        }
    }
}

/// Check that SOS, `n_ctx` context tokens, each class name's tokens, "." and EOT fit in CLIP's
/// context (77 tokens), without building anything of size `n_ctx`; the names' token counts.
pub fn context_fits(
    clip: &Clip,
    names: &[String],
    texts: &[String],
    n_ctx: usize,
) -> Result<Vec<usize>> {
    let l = clip.text.context_length();
    let name_lens = texts
        .iter()
        .map(|n| clip.tokenizer.encode_words(n).map(|ids| ids.len()))
        .collect::<Result<Vec<_>>>()?;
    if let Some((i, &longest)) = name_lens.iter().enumerate().max_by_key(|(_, &n)| n) {
        if n_ctx.saturating_add(longest).saturating_add(3) > l {
            let most = l.saturating_sub(longest + 3);
            return Err(crate::tokenizer::prompt_too_long(
                &format!("nCtx {n_ctx}"),
                n_ctx.saturating_add(longest).saturating_add(3),
                l,
                &format!(
                    " (SOS, the context, classNames[{i}] `{}` ({longest} tokens), \".\" and EOT), so nCtx can be at most {most} with these classes",
                    names[i]
                ),
            ));
        }
    }
    Ok(name_lens)
}

/// Tokenize "{prefix} {text}." for each class (`texts`: the names' prompt text), embed, and
/// split into SOS / suffix buffers.
pub fn build_buffers(
    clip: &Clip,
    names: &[String],
    texts: &[String],
    n_ctx: usize,
    prompt_prefix: &str,
) -> Result<ClassBuffers> {
    let prompts: Vec<String> = texts
        .iter()
        .map(|n| format!("{prompt_prefix} {n}."))
        .collect();
    let name_lens = context_fits(clip, names, texts, n_ctx)?;
    for (i, p) in prompts.iter().enumerate() {
        clip.tokenizer.encode_fitting(p, || {
            format!(
                "the prompt of classNames[{i}] `{}` with {n_ctx} context tokens",
                names[i]
            )
        })?;
    }
    // Words of the prefix past the M learned ones stay in every prompt as fixed text (IVLP and
    // MaPLe learn 2 tokens of "a photo of a": "[V1 V2] of a {class}.").
    let fixed = clip
        .tokenizer
        .encode_words(prompt_prefix)?
        .len()
        .saturating_sub(n_ctx);
    let batch = clip.tokenizer.encode_batch(&prompts)?;
    for (i, &e) in batch.eot.iter().enumerate() {
        // SOS + M + fixed words + name + "." + EOS must fit; otherwise truncation ate the name.
        if e != n_ctx + fixed + name_lens[i] + 2 {
            return Err(Error::InvalidArgument(format!(
                "classNames[{i}] `{}` does not fit in CLIP's {} tokens with {n_ctx} context tokens",
                names[i],
                clip.text.context_length()
            )));
        }
    }
    let emb = clip.text.embed_tokens(&batch.ids_tensor(&clip.device)?)?;
    let l = batch.len;
    Ok(ClassBuffers {
        class_names: names.to_vec(),
        prefix: emb.narrow(1, 0, 1)?,
        suffix: emb.narrow(1, 1 + n_ctx, l - 1 - n_ctx)?,
        name_lens,
        eot: batch.eot,
    })
}

/// The error for applying parameters that belong to one class list to another.
pub(crate) fn own_classes_only(what: &str, own: &[String]) -> Error {
    Error::InvalidArgument(format!(
        "{what} was learned for its own {} classes ({}, ...) and cannot score a different class list",
        own.len(),
        own.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Normalised text features of the learned prompts, without gradient tracking.
pub fn class_embeddings(
    learner: &CoopContext,
    clip: &Clip,
    buffers: &ClassBuffers,
) -> Result<Tensor> {
    let ctx = learner.ctx.as_tensor().detach();
    let prompts = learner.assemble(&ctx, buffers)?;
    l2_normalize(&learner.encode_prompts(clip, &prompts, buffers)?)
}

/// A term added to CoOp's loss, a function of the class text features (K, E) (KgCoOp's).
pub(crate) type ExtraLoss<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// CoOp scoring: the class embeddings of a class list are computed once.
pub(crate) struct EmbeddingScorer<'a> {
    pub clip: &'a Clip,
    /// (K, E), normalised.
    pub classes: Tensor,
}

impl Scorer for EmbeddingScorer<'_> {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        self.clip.logits(
            image_features,
            &self.classes.to_dtype(image_features.dtype())?,
        )
    }
}

impl CoopContext {
    pub(crate) fn embedding_scorer<'a>(
        &self,
        clip: &'a Clip,
        names: Option<&[String]>,
    ) -> Result<EmbeddingScorer<'a>> {
        let buffers = match names {
            Some(names) => self.buffers_for(clip, names)?,
            None => self.buffers.clone(),
        };
        Ok(EmbeddingScorer {
            clip,
            classes: class_embeddings(self, clip, &buffers)?,
        })
    }

    /// CoOp's step: cross-entropy of the batch, plus `extra` (a term of the class text features,
    /// KgCoOp's) when given; text features run through the encoder's own training pass.
    pub(crate) fn step(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
        vars: &[(String, Var)],
        extra: Option<ExtraLoss<'_>>,
    ) -> Result<StepOutput> {
        let b = &self.buffers;
        // Positions after the last EOT cannot change the result (the encoder is causal and read
        // at EOT): they are neither assembled into the backward graph nor encoded.
        let used = b.eot.iter().max().map_or(1, |e| e + 1);
        let prompts = self.assemble(self.ctx.as_tensor(), b)?.narrow(1, 0, used)?; // (K, used, d)
        let image = image_features.to_dtype(clip.head_dtype())?;
        let k = b.eot.len();
        let (loss, logits, grads) = super::prompt_loss_and_grads(
            clip,
            &prompts,
            &b.eot,
            self.shared_len(),
            k,
            vars,
            grad_scale,
            |text| {
                let logits = clip.logits(&image, &text.to_dtype(clip.head_dtype())?)?; // (B, K)
                let mut loss = crate::loss::cross_entropy(&logits, labels)?;
                if let Some(extra) = extra {
                    loss = (loss + extra(text)?)?;
                }
                Ok((loss, logits))
            },
        )?;
        Ok(StepOutput {
            loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
            logits,
            grads,
        })
    }
}

impl Learner for CoopContext {
    fn meta(&self) -> LearnerMeta {
        let vars = self.vars();
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.buffers.class_names.clone(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&vars),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![("ctx".into(), self.ctx.clone())]
    }

    fn class_names(&self) -> &[String] {
        &self.buffers.class_names
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        CoopContext::logits(self, clip, image_features, &self.buffers)
    }

    fn loss_and_grads_scaled(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        self.step(
            clip,
            image_features,
            labels,
            grad_scale,
            &Learner::vars(self),
            None,
        )
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        Ok(Box::new(self.embedding_scorer(clip, class_names)?))
    }

    fn learned_context(&self) -> Option<LearnedContext> {
        Some(self.learned())
    }

    fn scores_any_classes(&self) -> bool {
        !self.config.class_specific
    }
}

/// The official CoOp's name (`prompt_learner.ctx`; Dassl's checkpoint says `ctx`); KgCoOp's is
/// the same. M and class-specific context follow from its shape: (M, d) or (K, M, d).
pub static OFFICIAL: Official = Official {
    renames: &[&[official::exact("ctx", "prompt_learner.ctx")]],
    options: |shapes| match shapes.get("ctx").map(Vec::as_slice) {
        Some([k, m, _]) if *k > 0 => serde_json::json!({ "nCtx": m, "classSpecific": true }),
        Some([m, _]) => serde_json::json!({ "nCtx": m, "classSpecific": false }),
        _ => serde_json::json!({}),
    },
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "coop",
    title: "CoOp",
    paper: "Zhou, Yang, Loy, Liu: Learning to Prompt for Vision-Language Models (IJCV 2022)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: None,
    options: &[N_CTX, CTX_INIT, CLASS_SPECIFIC, POSITION, INIT_STD, SEED],
    defaults: || super::options_json(&CoopConfig::default()),
    recipe: coop_recipe,
    create: |clip, names, options, _runtime: Runtime| {
        let config: CoopConfig = super::parse_options("coop", options)?;
        Ok(Box::new(CoopContext::new(clip, names, config)?))
    },
    restore: |clip, meta, tensors, _runtime| {
        let config: CoopConfig = super::parse_options("coop", meta.options.clone())?;
        Ok(Box::new(CoopContext::from_parts(
            clip,
            &meta.class_names,
            config,
            super::saved(tensors, "ctx")?,
        )?))
    },
    official: Some(&OFFICIAL),
};
