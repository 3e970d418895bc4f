use crate::clip::{l2_normalize, Clip};
use crate::rng::Rng;
use crate::zeroshot::validate_class_names;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};

/// Where the class token sits relative to the context (paper Sec. 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassTokenPosition {
    /// [SOS] V_1..V_M [CLASS] . [EOS] (default)
    End,
    /// [SOS] V_1..V_{M/2} [CLASS] V_{M/2+1}..V_M . [EOS]
    Middle,
    /// [SOS] [CLASS] V_1..V_M . [EOS]
    Front,
}

impl ClassTokenPosition {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "end" => Ok(Self::End),
            "middle" => Ok(Self::Middle),
            "front" => Ok(Self::Front),
            _ => Err(Error::InvalidArgument(format!(
                "position `{s}`: expected \"end\", \"middle\" or \"front\""
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::End => "end",
            Self::Middle => "middle",
            Self::Front => "front",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContextInit {
    /// Seeded N(0, std^2), std = 0.02 in the paper.
    Random { std: f64, seed: u64 },
    /// Token embeddings of these words; M becomes their token count ("a photo of a" -> 4).
    Words(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CoopConfig {
    /// M, the number of context tokens (ignored for `ContextInit::Words`).
    pub n_ctx: usize,
    /// Class-specific context (K x M x d) instead of one unified context (M x d).
    pub class_specific: bool,
    pub position: ClassTokenPosition,
    pub init: ContextInit,
}

impl Default for CoopConfig {
    fn default() -> Self {
        Self {
            n_ctx: 16,
            class_specific: false,
            position: ClassTokenPosition::End,
            init: ContextInit::Random { std: 0.02, seed: 1 },
        }
    }
}

/// Token-embedding buffers of one class list: fixed parts of every prompt.
#[derive(Debug, Clone)]
pub struct ClassBuffers {
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
pub struct PromptLearner {
    pub config: CoopConfig,
    /// (M, d) unified or (K, M, d) class-specific; the only trainable tensor.
    pub ctx: Var,
    /// Text the placeholders stand for when building buffers ("X X ... X" or the init words).
    prompt_prefix: String,
    pub buffers: ClassBuffers,
}

impl PromptLearner {
    pub fn new(clip: &Clip, class_names: &[String], config: CoopConfig) -> Result<Self> {
        let names = validate_class_names(class_names)?;
        let d = clip.text.hidden_size();
        let (ctx_rows, n_ctx, prompt_prefix) = match &config.init {
            ContextInit::Random { std, seed } => {
                if config.n_ctx == 0 {
                    return Err(Error::InvalidArgument("nCtx (M) must be at least 1".into()));
                }
                let k = if config.class_specific {
                    names.len()
                } else {
                    1
                };
                let data = Rng::new(*seed).normal_vec(k * config.n_ctx * d, *std);
                (
                    Tensor::from_vec(data, (k, config.n_ctx, d), &clip.device)?,
                    config.n_ctx,
                    vec!["X"; config.n_ctx].join(" "),
                )
            }
            ContextInit::Words(words) => {
                let words = words.replace('_', " ").trim().to_string();
                let ids = clip.tokenizer.encode_words(&words)?;
                if ids.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "ctxInit `{words}` has no tokens"
                    )));
                }
                let ids_t = Tensor::new(ids.as_slice(), &clip.device)?;
                let emb = clip
                    .text
                    .token_embedding
                    .index_select(&ids_t, 0)?
                    .to_dtype(DType::F32)?;
                let k = if config.class_specific {
                    names.len()
                } else {
                    1
                };
                (emb.unsqueeze(0)?.repeat((k, 1, 1))?, ids.len(), words)
            }
        };
        let ctx = if config.class_specific {
            ctx_rows
        } else {
            ctx_rows.squeeze(0)?
        };
        let config = CoopConfig { n_ctx, ..config };
        let buffers = build_buffers(clip, &names, n_ctx, &prompt_prefix)?;
        if buffers.eot.iter().any(|&e| e >= clip.text.context_length()) {
            return Err(Error::InvalidArgument(format!("M = {n_ctx} context tokens plus the longest class name do not fit CLIP's {} tokens", clip.text.context_length())));
        }
        Ok(Self {
            config,
            ctx: Var::from_tensor(&ctx)?,
            prompt_prefix,
            buffers,
        })
    }

    /// Restore a learner from saved context (see `crate::prompt::io`).
    pub fn from_parts(
        clip: &Clip,
        class_names: &[String],
        config: CoopConfig,
        ctx: Tensor,
        prompt_prefix: String,
    ) -> Result<Self> {
        let names = validate_class_names(class_names)?;
        let buffers = build_buffers(clip, &names, config.n_ctx, &prompt_prefix)?;
        Ok(Self {
            config,
            ctx: Var::from_tensor(&ctx.to_device(&clip.device)?)?,
            prompt_prefix,
            buffers,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.config.n_ctx
    }

    pub fn prompt_prefix(&self) -> &str {
        &self.prompt_prefix
    }

    /// Buffers for another class list, to apply the learned context to new classes.
    /// Class-specific context belongs to its own classes, so it cannot move.
    pub fn buffers_for(&self, clip: &Clip, class_names: &[String]) -> Result<ClassBuffers> {
        let names = validate_class_names(class_names)?;
        if self.config.class_specific && names != self.buffers.class_names {
            return Err(Error::InvalidArgument(format!(
                "class-specific context was learned for {} classes ({}...); it cannot be applied to a different class list",
                self.buffers.class_names.len(),
                self.buffers.class_names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if names == self.buffers.class_names {
            return Ok(self.buffers.clone());
        }
        build_buffers(clip, &names, self.n_ctx(), &self.prompt_prefix)
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

    /// For each context vector, the `k` nearest vocabulary tokens by Euclidean distance in
    /// token-embedding space (CoOp Table 4). Rows: context position (per class when CSC).
    pub fn interpret(&self, clip: &Clip, k: usize) -> Result<Vec<Vec<(u32, String, f32)>>> {
        let ctx = self.ctx.as_tensor().to_dtype(DType::F32)?;
        let d = ctx.dim(D::Minus1)?;
        let ctx = ctx.reshape(((), d))?;
        let vocab = clip.text.token_embedding.to_dtype(DType::F32)?;
        // |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, for all pairs at once.
        let a2 = ctx.sqr()?.sum_keepdim(1)?;
        let b2 = vocab.sqr()?.sum_keepdim(1)?.t()?;
        let dist2 = a2
            .broadcast_add(&b2)?
            .broadcast_sub(&(ctx.matmul(&vocab.t()?)? * 2.0)?)?;
        let rows = dist2.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                let k = k.min(idx.len());
                idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[a].total_cmp(&row[b]));
                idx.truncate(k);
                idx.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
                idx.into_iter()
                    .map(|i| {
                        (
                            i as u32,
                            clip.tokenizer.decode_token(i as u32).unwrap_or_default(),
                            row[i].max(0.0).sqrt(),
                        )
                    })
                    .collect()
            })
            .collect())
    }
}

/// Tokenize "{prefix} {name}." for each class, embed, and split into SOS / suffix buffers.
pub fn build_buffers(
    clip: &Clip,
    names: &[String],
    n_ctx: usize,
    prompt_prefix: &str,
) -> Result<ClassBuffers> {
    let texts: Vec<String> = names
        .iter()
        .map(|n| format!("{prompt_prefix} {n}."))
        .collect();
    let batch = clip.tokenizer.encode_batch(&texts)?;
    let name_lens = names
        .iter()
        .map(|n| clip.tokenizer.encode_words(n).map(|ids| ids.len()))
        .collect::<Result<Vec<_>>>()?;
    for (i, &e) in batch.eot.iter().enumerate() {
        // SOS + M + name + "." + EOS must fit; otherwise truncation ate the class name.
        if e != n_ctx + name_lens[i] + 2 {
            return Err(Error::InvalidArgument(format!(
                "class `{}` does not fit in CLIP's {} tokens with {n_ctx} context tokens",
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

/// Normalised text features of the learned prompts, without gradient tracking.
pub fn class_embeddings(
    learner: &PromptLearner,
    clip: &Clip,
    buffers: &ClassBuffers,
) -> Result<Tensor> {
    let ctx = learner.ctx.as_tensor().detach();
    let prompts = learner.assemble(&ctx, buffers)?;
    l2_normalize(&learner.encode_prompts(clip, &prompts, buffers)?)
}

impl crate::train::PromptModel for PromptLearner {
    fn vars(&self) -> Vec<(String, Var)> {
        vec![("ctx".into(), self.ctx.clone())]
    }

    fn logits(&self, clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        PromptLearner::logits(self, clip, image_features, &self.buffers)
    }

    fn describe(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "method": "coop",
            "n_ctx": c.n_ctx,
            "class_specific": c.class_specific,
            "position": c.position.as_str(),
            "prompt_prefix": self.prompt_prefix,
            "class_names": self.buffers.class_names,
        })
    }

    fn num_classes(&self) -> usize {
        self.buffers.class_names.len()
    }

    fn loss_and_grads_scaled(
        &self,
        clip: &Clip,
        image_features: &Tensor,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<(f32, Tensor, Vec<Tensor>)> {
        let b = &self.buffers;
        // Positions after the last EOT cannot change the result (the encoder is causal and read
        // at EOT): they are neither assembled into the backward graph nor encoded.
        let used = b.eot.iter().max().map_or(1, |e| e + 1);
        let prompts = self.assemble(self.ctx.as_tensor(), b)?.narrow(1, 0, used)?; // (K, used, d)
        let vars = crate::train::PromptModel::vars(self);
        let image = image_features.to_dtype(clip.head_dtype())?;
        let (loss, logits, grads) = super::prompt_loss_and_grads(
            clip,
            &prompts,
            &b.eot,
            self.shared_len(),
            b.eot.len(),
            &vars,
            grad_scale,
            |text| {
                let logits = clip.logits(&image, &text.to_dtype(clip.head_dtype())?)?; // (B, K)
                Ok((
                    crate::train::trainer::cross_entropy(&logits, labels)?,
                    logits,
                ))
            },
        )?;
        Ok((
            loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
            logits,
            grads,
        ))
    }
}
