//! CLIP-LoRA (Zanella and Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
//! CVPR Workshops 2024; official MaxZanella/CLIP-LoRA, lora.py and loralib/): low-rank updates of
//! the attention projections of every block of both towers, the weights themselves frozen.
//!
//!   W'_p = W_p + s B_p A_p,  p in {q, k, v} (and optionally out),  A_p (r, d), B_p (d, r),
//!   s = alpha / sqrt(r);  in training the update's input is dropped out (p = 0.25)
//!   t_k = g'("a photo of a {class_k}.")      the text tower with its updates   (K, E)
//!   f   = f'(x)                              the image tower with its updates  (B, E)
//!   logits = 100 normalize(f) normalize(t)^T          (the logit scale fixed at 100)
//!
//! A is Kaiming-uniform (U(-1/sqrt(d), 1/sqrt(d)), as nn.Linear's), B zero, so training starts
//! at the frozen CLIP. The factors are f32 (f64 on an f64 model), whatever the towers compute in. The official recipe: AdamW lr 2e-4, weight decay 1e-2, cosine to 1e-6 over
//! 500 x shots iterations, batch 32, no validation set, the last state kept. The factors'
//! gradients come from the towers' training passes (`clip::lora`); the frozen weights get none.
//! Predictions fold B A into copies of the weights once (`Clip::with_lora`), so a learner predicts
//! at the frozen model's speed. The text tower is adapted, not a classifier: any class list is
//! scored (base-to-new).
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, RecipeFor, Takes, SEED};
use super::official::{self, Official, Rename};
use super::towers;
use super::StepOutput;
use super::{Batch, Learner, LearnerMeta, MethodSpec, OptimizerKind, Recipe, Runtime, Scorer};
use crate::clip::{l2_normalize, BlockLora, BlockLoraGrads, Clip, LowRank, TowerLora};
use crate::rng::{derive_seed, Rng};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The logit scale of training and prediction (the official `logit_scale = 100`).
pub const LOGIT_SCALE: f64 = 100.0;

/// Which towers have updates (the official `--encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTowers {
    Both,
    Text,
    Vision,
}

impl LoraTowers {
    fn has(self, tower: Tower) -> bool {
        matches!(
            (self, tower),
            (Self::Both, _) | (Self::Text, Tower::Text) | (Self::Vision, Tower::Vision)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClipLoraConfig {
    /// r, the rank of every update (the official 2).
    pub rank: usize,
    /// alpha: updates are scaled by alpha / sqrt(r) (the official 1).
    pub alpha: f64,
    /// Dropout probability of an update's input in training (the official 0.25).
    pub dropout: f64,
    /// The projections with updates, of "q", "k", "v" and "o" (the out projection); the official
    /// q, k and v.
    pub matrices: Vec<String>,
    /// Which towers have updates.
    pub encoder: LoraTowers,
    /// The blocks with updates (from 0), in each adapted tower; default every block.
    pub layers: Option<Vec<usize>>,
    /// The prompt of every class, `{}` for the name (the dataset's hand-made one in a protocol).
    pub template: String,
    pub seed: u64,
}

impl Default for ClipLoraConfig {
    fn default() -> Self {
        Self {
            rank: 2,
            alpha: 1.0,
            dropout: 0.25,
            matrices: ["q", "k", "v"].map(String::from).to_vec(),
            encoder: LoraTowers::Both,
            layers: None,
            template: crate::zeroshot::DEFAULT_TEMPLATE.into(),
            seed: crate::rng::DEFAULT_SEED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tower {
    Text,
    Vision,
}

impl Tower {
    fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Vision => "vision",
        }
    }
}

/// One update's trainable factors and where it sits.
#[derive(Debug, Clone)]
struct Factors {
    tower: Tower,
    block: usize,
    /// Index into `clip::lora::PROJECTIONS`.
    proj: usize,
    a: Var,
    b: Var,
}

impl Factors {
    fn names(&self) -> (String, String) {
        let p = crate::clip::lora::PROJECTIONS[self.proj];
        let base = format!("{}.{}.{p}", self.tower.name(), self.block);
        (format!("{base}.A"), format!("{base}.B"))
    }
}

/// The class prompts as the text tower takes them: token embeddings (K, T, d) and EOT positions.
#[derive(Debug, Clone)]
struct ClassPrompts {
    embeds: Tensor,
    eot: Vec<usize>,
}

impl ClassPrompts {
    fn new(clip: &Clip, class_names: &[String], template: &str) -> Result<Self> {
        let names = crate::classnames::validate(class_names)?;
        crate::zeroshot::validate_templates(&[template.to_string()])
            .map_err(|_| invalid(format!("template `{template}` must contain `{{}}` once")))?;
        let texts: Vec<String> = names
            .iter()
            .map(|n| template.replacen("{}", n, 1))
            .collect();
        for (i, t) in texts.iter().enumerate() {
            clip.tokenizer.encode_fitting(t, || {
                format!(
                    "the prompt of classNames[{i}] `{}` with template `{template}`",
                    class_names[i]
                )
            })?;
        }
        let batch = clip.tokenizer.encode_batch(&texts)?;
        let ids = batch.ids_tensor(&clip.device)?;
        Ok(Self {
            embeds: clip.text.embed_tokens(&ids)?,
            eot: batch.eot,
        })
    }
}

#[derive(Debug)]
pub struct ClipLoraLearner {
    /// Resolved: the layers as built.
    pub config: ClipLoraConfig,
    class_names: Vec<String>,
    prompts: ClassPrompts,
    /// Every update, text blocks first, by block, in projection order.
    factors: Vec<Factors>,
    text_blocks: usize,
    vision_blocks: usize,
    /// Tape bytes the image tower's training pass may keep at once (the runtime's memory budget).
    pub image_budget: usize,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// The projections' indices of `matrices`, or why they are not ones a block has.
fn projections(matrices: &[String]) -> Result<Vec<usize>> {
    let all = crate::clip::lora::PROJECTIONS;
    if matrices.is_empty() {
        return Err(invalid(format!(
            "matrices must name at least one of {}",
            all.join(", ")
        )));
    }
    let mut out = vec![];
    for m in matrices {
        let j = all.iter().position(|p| p == m).ok_or_else(|| {
            invalid(format!(
                "matrices: `{m}` is not a projection of a block's attention; expected some of {}",
                all.join(", ")
            ))
        })?;
        if out.contains(&j) {
            return Err(invalid(format!("matrices names `{m}` twice")));
        }
        out.push(j);
    }
    out.sort_unstable();
    Ok(out)
}

impl ClipLoraLearner {
    /// A learner at the official initialisation: A Kaiming-uniform, B zero.
    pub fn new(clip: &Clip, class_names: &[String], config: ClipLoraConfig) -> Result<Self> {
        let seed = config.seed;
        Self::build(
            clip,
            class_names,
            config,
            |tower, block, proj, a_shape, b_shape| {
                let fan_in = a_shape.1;
                let bound = 1.0 / (fan_in as f64).sqrt();
                let stream = derive_seed(seed, tower as u64 * 1000 + block as u64, proj as u64);
                let mut rng = Rng::new(stream);
                let a: Vec<f32> = (0..a_shape.0 * a_shape.1)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                    .collect();
                let dtype = clip.head_dtype();
                Ok((
                    Tensor::from_vec(a, a_shape, &clip.device)?.to_dtype(dtype)?,
                    Tensor::zeros(b_shape, dtype, &clip.device)?,
                ))
            },
        )
    }

    /// A learner from saved factors under its var names (`text.0.q.A`, ...), each checked against
    /// this CLIP's widths by name.
    pub fn from_tensors(
        clip: &Clip,
        class_names: &[String],
        config: ClipLoraConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        Self::build(
            clip,
            class_names,
            config,
            |tower, block, proj, a_shape, b_shape| {
                let p = crate::clip::lora::PROJECTIONS[proj];
                let base = format!("{}.{block}.{p}", tower.name());
                let get = |suffix: &str, shape: (usize, usize)| -> Result<Tensor> {
                    let name = format!("{base}.{suffix}");
                    let t = super::saved(tensors, &name)?;
                    if t.dims() != [shape.0, shape.1] {
                        return Err(invalid(format!(
                        "tensor `{name}` has shape {:?}, and this CLIP's {} tower takes [{}, {}] \
                         (rank {}): were the factors trained on another model?",
                        t.dims(),
                        if tower == Tower::Text { "text" } else { "image" },
                        shape.0,
                        shape.1,
                        a_shape.0
                    )));
                    }
                    Ok(t.to_dtype(clip.head_dtype())?.to_device(&clip.device)?)
                };
                Ok((get("A", a_shape)?, get("B", b_shape)?))
            },
        )
    }

    fn build(
        clip: &Clip,
        class_names: &[String],
        mut config: ClipLoraConfig,
        mut factor: impl FnMut(
            Tower,
            usize,
            usize,
            (usize, usize),
            (usize, usize),
        ) -> Result<(Tensor, Tensor)>,
    ) -> Result<Self> {
        let c = &clip.config;
        let (lt, lv) = (
            c.text_config.num_hidden_layers,
            c.vision_config.num_hidden_layers,
        );
        if config.encoder != LoraTowers::Text {
            towers::needs_vit(clip, SPEC.name)?;
        }
        if config.rank == 0 {
            return Err(invalid("rank must be at least 1".into()));
        }
        if !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(invalid(format!(
                "alpha must be a positive number, got {}",
                config.alpha
            )));
        }
        if !(config.dropout.is_finite() && (0.0..1.0).contains(&config.dropout)) {
            return Err(invalid(format!(
                "dropout must be at least 0 and below 1, got {}",
                config.dropout
            )));
        }
        let projs = projections(&config.matrices)?;
        let deepest = match config.encoder {
            LoraTowers::Both => lt.min(lv),
            LoraTowers::Text => lt,
            LoraTowers::Vision => lv,
        };
        let mut layers = config
            .layers
            .clone()
            .unwrap_or_else(|| (0..lt.max(lv)).collect());
        layers.sort_unstable();
        layers.dedup();
        if config.layers.is_some() {
            if layers.is_empty() {
                return Err(invalid("layers must name at least one block".into()));
            }
            if let Some(&l) = layers.iter().find(|&&l| l >= deepest) {
                return Err(invalid(format!(
                    "layers: block {l} does not exist; the adapted towers' blocks are 0 to {}",
                    deepest - 1
                )));
            }
            config.layers = Some(layers.clone());
        }
        let prompts = ClassPrompts::new(clip, class_names, &config.template)?;
        let r = config.rank;
        let mut factors = vec![];
        for (tower, blocks, width) in [
            (Tower::Text, lt, c.text_config.hidden_size),
            (Tower::Vision, lv, c.vision_config.hidden_size),
        ] {
            if !config.encoder.has(tower) {
                continue;
            }
            for &block in layers.iter().filter(|&&l| l < blocks) {
                for &proj in &projs {
                    let (a, b) = factor(tower, block, proj, (r, width), (width, r))?;
                    factors.push(Factors {
                        tower,
                        block,
                        proj,
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                    });
                }
            }
        }
        Ok(Self {
            config,
            class_names: class_names.to_vec(),
            prompts,
            factors,
            text_blocks: lt,
            vision_blocks: lv,
            image_budget: towers::budget_bytes(Runtime::default()),
        })
    }

    fn scale(&self) -> f64 {
        self.config.alpha / (self.config.rank as f64).sqrt()
    }

    /// A tower's updates for a pass whose dropout masks come from `seed` (None: not adapted).
    fn tower(&self, tower: Tower, seed: u64) -> Option<TowerLora> {
        if !self.config.encoder.has(tower) {
            return None;
        }
        let n = match tower {
            Tower::Text => self.text_blocks,
            Tower::Vision => self.vision_blocks,
        };
        let mut blocks: Vec<BlockLora> = vec![Default::default(); n];
        for f in self.factors.iter().filter(|f| f.tower == tower) {
            // Detached: the towers' training passes form the factors' gradients themselves.
            blocks[f.block][f.proj] = Some(LowRank {
                a: f.a.as_tensor().detach(),
                b: f.b.as_tensor().detach(),
            });
        }
        Some(TowerLora {
            blocks,
            scale: self.scale(),
            dropout: self.config.dropout,
            seed: derive_seed(seed, tower as u64, 0),
            first_sequence: 0,
        })
    }

    /// This learner's CLIP: its updates folded into copies of the weights.
    pub fn merged(&self, clip: &Clip) -> Result<Clip> {
        clip.with_lora(
            self.tower(Tower::Text, 0).as_ref(),
            self.tower(Tower::Vision, 0).as_ref(),
        )
    }

    /// One training step: the text side once through its tower's training pass, the images in
    /// chunks that fit the memory budget through theirs, the loss's gradient chained by hand.
    fn step(
        &self,
        clip: &Clip,
        batch: &Batch<'_>,
        labels: &Tensor,
        grad_scale: f64,
    ) -> Result<StepOutput> {
        let head = clip.head_dtype();
        let text = self.tower(Tower::Text, batch.step_seed());
        let vision = self.tower(Tower::Vision, batch.step_seed());
        let (tf, text_tape) = match &text {
            Some(l) => {
                let embeds = self.prompts.embeds.to_dtype(clip.dtype)?;
                let (f, tape) = clip.text_features_train_lora(&embeds, &self.prompts.eot, l)?;
                (f, Some(tape))
            }
            None => (
                clip.encode_text_embeds(&self.prompts.embeds, &self.prompts.eot)?,
                None,
            ),
        };
        let tf = Var::from_tensor(&tf.to_dtype(head)?)?;
        let b = batch.len();
        let (pixels, frozen) = match &vision {
            Some(_) => (Some(batch.pixels()?), None),
            None => (None, Some(batch.features()?)),
        };
        let tape_bytes = clip.image_tape_bytes(0) + clip.image_tape_bytes(0) / 8;
        let chunk = match &vision {
            Some(_) => (self.image_budget / tape_bytes.max(1)).clamp(1, b.max(1)),
            None => b.max(1),
        };
        let mut d_text: Option<Tensor> = None;
        let mut vision_grads: Vec<BlockLoraGrads> = vec![];
        let (mut loss, mut logits) = (0f32, vec![]);
        for start in (0..b).step_by(chunk) {
            let n = chunk.min(b - start);
            let (imf, tape) = match (&vision, pixels, &frozen) {
                (Some(l), Some(p), _) => {
                    let p = if n == b {
                        p.clone()
                    } else {
                        p.narrow(0, start, n)?
                    };
                    let l = TowerLora {
                        first_sequence: start,
                        ..l.clone()
                    };
                    let (f, tape) = clip.image_features_train_lora(&p, &l)?;
                    (f, Some(tape))
                }
                (_, _, Some(f)) => (f.narrow(0, start, n)?, None),
                _ => return Err(Error::Internal("a step without images".into())),
            };
            let imf = Var::from_tensor(&imf.to_dtype(head)?)?;
            let chunk_logits = lora_logits(imf.as_tensor(), tf.as_tensor())?;
            let chunk_loss =
                crate::loss::cross_entropy(&chunk_logits, &labels.narrow(0, start, n)?)?;
            // A whole batch in one chunk weighs 1 exactly: the same numbers as without chunking.
            let share = n as f64 / b as f64;
            let mut g = (&chunk_loss * (grad_scale * share))?.backward()?;
            let dt = g
                .remove(tf.as_tensor())
                .ok_or_else(|| Error::Internal("the loss does not depend on the text".into()))?;
            d_text = Some(match d_text.take() {
                None => dt,
                Some(acc) => (acc + dt)?,
            });
            if let Some(tape) = tape {
                let d_image = g.remove(imf.as_tensor()).ok_or_else(|| {
                    Error::Internal("the loss does not depend on the image features".into())
                })?;
                let grads = clip.image_lora_backward(&tape, &d_image)?;
                vision_grads = add_grads(vision_grads, grads)?;
            }
            loss += chunk_loss.to_dtype(DType::F32)?.to_scalar::<f32>()? * share as f32;
            logits.push(chunk_logits.detach());
        }
        let text_grads = match (&text_tape, d_text) {
            (Some(tape), Some(d)) => clip.text_lora_backward(tape, &d)?,
            _ => vec![],
        };
        let mut grads = Vec::with_capacity(2 * self.factors.len());
        for f in &self.factors {
            let found = match f.tower {
                Tower::Text => text_grads.get(f.block),
                Tower::Vision => vision_grads.get(f.block),
            }
            .and_then(|g| g[f.proj].clone());
            let (da, db) = found
                .ok_or_else(|| Error::Internal(format!("no gradient reached `{}`", f.names().0)))?;
            grads.push((da.to_dtype(f.a.dtype())? / grad_scale)?);
            grads.push((db.to_dtype(f.b.dtype())? / grad_scale)?);
        }
        let logits = if logits.len() == 1 {
            logits.remove(0)
        } else {
            Tensor::cat(&logits, 0)?
        };
        Ok(StepOutput {
            loss,
            logits,
            grads,
        })
    }
}

/// Chunks' gradients summed.
fn add_grads(
    mut acc: Vec<BlockLoraGrads>,
    more: Vec<BlockLoraGrads>,
) -> Result<Vec<BlockLoraGrads>> {
    if acc.is_empty() {
        return Ok(more);
    }
    for (a, m) in acc.iter_mut().zip(more) {
        for (slot, g) in a.iter_mut().zip(m) {
            if let Some(g) = g {
                crate::clip::lora::sum_into(slot, g)?;
            }
        }
    }
    Ok(acc)
}

/// 100 normalize(image) normalize(text)^T (B, K).
fn lora_logits(image: &Tensor, text: &Tensor) -> Result<Tensor> {
    Ok((l2_normalize(image)?.matmul(&l2_normalize(text)?.t()?)? * LOGIT_SCALE)?)
}

impl Learner for ClipLoraLearner {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.class_names.clone(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        self.factors
            .iter()
            .flat_map(|f| {
                let (a, b) = f.names();
                [(a, f.a.clone()), (b, f.b.clone())]
            })
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
        self.step(clip, batch, labels, grad_scale)
    }

    fn scorer<'a>(
        &'a self,
        clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        let merged = self.merged(clip)?;
        let prompts = match class_names {
            Some(names) => ClassPrompts::new(clip, names, &self.config.template)?,
            None => self.prompts.clone(),
        };
        let text = merged.encode_text_embeds(&prompts.embeds, &prompts.eot)?;
        Ok(Box::new(MergedScorer {
            text: text.to_dtype(clip.head_dtype())?,
            image_adapted: self.config.encoder.has(Tower::Vision),
            clip: merged,
        }))
    }
}

/// Scores with the updates folded into the weights: the text features of the classes once, and
/// each batch's images through the merged image tower (or, when only the text tower is adapted,
/// the batch's frozen features).
struct MergedScorer {
    clip: Clip,
    text: Tensor,
    image_adapted: bool,
}

impl Scorer for MergedScorer {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        if self.image_adapted {
            return Err(towers::needs_images(SPEC.name));
        }
        lora_logits(&image_features.to_dtype(self.text.dtype())?, &self.text)
    }

    fn batch_logits(&self, batch: &Batch<'_>) -> Result<Tensor> {
        if !self.image_adapted {
            return self.logits(&batch.features()?);
        }
        let f = self.clip.encode_image(batch.pixels()?)?;
        lora_logits(&f.to_dtype(self.text.dtype())?, &self.text)
    }
}

const RANK: OptionDoc = OptionDoc {
    name: "rank",
    kind: OptionKind::Integer { min: 1 },
    doc: "r, the rank of every low-rank update",
    flag: Some("--lora-rank"),
};
const ALPHA: OptionDoc = OptionDoc {
    name: "alpha",
    kind: OptionKind::Number {
        exclusive_min: Some(0.0),
    },
    doc: "updates are scaled by alpha / sqrt(rank)",
    flag: Some("--lora-alpha"),
};
const DROPOUT: OptionDoc = OptionDoc {
    name: "dropout",
    kind: OptionKind::Number {
        exclusive_min: None,
    },
    doc: "dropout probability of an update's input in training (0 to below 1)",
    flag: Some("--lora-dropout"),
};
const MATRICES: OptionDoc = OptionDoc {
    name: "matrices",
    kind: OptionKind::StringList,
    doc: "the attention projections with updates: some of q, k, v, o",
    flag: Some("--lora-matrices"),
};
const ENCODER: OptionDoc = OptionDoc {
    name: "encoder",
    kind: OptionKind::Choice {
        choices: &["both", "text", "vision"],
    },
    doc: "the towers with updates",
    flag: Some("--lora-encoder"),
};
const LAYERS: OptionDoc = OptionDoc {
    name: "layers",
    kind: OptionKind::IntegerList { min: 0 },
    doc: "the blocks with updates, from 0 (default: every block)",
    flag: Some("--lora-layers"),
};
const TEMPLATE: OptionDoc = OptionDoc {
    name: "template",
    kind: OptionKind::String,
    doc: "the prompt of every class, {} for the class name",
    flag: None,
};

/// The official run_lora: AdamW (lr 2e-4, weight decay 1e-2, betas (0.9, 0.999)), batch 32,
/// CosineAnnealingLR to 1e-6 over 500 x shots iterations stepped per batch, no warmup; crops as
/// its train transform's (0.08 to 1).
fn recipe(_: RecipeFor<'_>) -> Recipe {
    Recipe {
        epochs: 1,
        batch_size: 32,
        lr: 2e-4,
        optimizer: OptimizerKind::Adamw,
        weight_decay: 1e-2,
        eps: 1e-8,
        warmup_epochs: 0,
        lr_per_step: true,
        crop_scale: Some((0.08, 1.0)),
        steps_per_shot: Some(500),
        min_lr: 1e-6,
    }
}

macro_rules! lora_renames {
    ($($ours:literal => $theirs:literal),* $(,)?) => {
        &[$(Rename { ours: $ours, theirs: $theirs, shift: 0 }),*]
    };
}

/// The official names (`lora_state_dict` of the official CLIP: OpenAI's module tree with loralib's
/// `PlainMultiheadAttentionLoRA` in each block, q, k, v split out of the fused projection).
pub static OFFICIAL: Official = Official {
    renames: &[lora_renames![
        "text.{}.q.A" => "transformer.resblocks.{}.attn.q_proj.w_lora_A",
        "text.{}.q.B" => "transformer.resblocks.{}.attn.q_proj.w_lora_B",
        "text.{}.k.A" => "transformer.resblocks.{}.attn.k_proj.w_lora_A",
        "text.{}.k.B" => "transformer.resblocks.{}.attn.k_proj.w_lora_B",
        "text.{}.v.A" => "transformer.resblocks.{}.attn.v_proj.w_lora_A",
        "text.{}.v.B" => "transformer.resblocks.{}.attn.v_proj.w_lora_B",
        "text.{}.o.A" => "transformer.resblocks.{}.attn.proj.w_lora_A",
        "text.{}.o.B" => "transformer.resblocks.{}.attn.proj.w_lora_B",
        "vision.{}.q.A" => "visual.transformer.resblocks.{}.attn.q_proj.w_lora_A",
        "vision.{}.q.B" => "visual.transformer.resblocks.{}.attn.q_proj.w_lora_B",
        "vision.{}.k.A" => "visual.transformer.resblocks.{}.attn.k_proj.w_lora_A",
        "vision.{}.k.B" => "visual.transformer.resblocks.{}.attn.k_proj.w_lora_B",
        "vision.{}.v.A" => "visual.transformer.resblocks.{}.attn.v_proj.w_lora_A",
        "vision.{}.v.B" => "visual.transformer.resblocks.{}.attn.v_proj.w_lora_B",
        "vision.{}.o.A" => "visual.transformer.resblocks.{}.attn.proj.w_lora_A",
        "vision.{}.o.B" => "visual.transformer.resblocks.{}.attn.proj.w_lora_B",
    ]],
    options: official_options,
};

/// What an official file's names and shapes decide: the rank, the projections, the towers and the
/// blocks.
fn official_options(shapes: &official::Shapes) -> serde_json::Value {
    let mut matrices = vec![];
    let mut layers = std::collections::BTreeSet::new();
    let (mut text, mut vision, mut rank) = (false, false, serde_json::Value::Null);
    for (name, shape) in shapes {
        let parts: Vec<&str> = name.split('.').collect();
        let [tower, block, proj, factor] = parts[..] else {
            continue;
        };
        match tower {
            "text" => text = true,
            "vision" => vision = true,
            _ => continue,
        }
        if let Ok(b) = block.parse::<usize>() {
            layers.insert(b);
        }
        if !matrices.contains(&proj) {
            matrices.push(proj);
        }
        if factor == "A" && rank.is_null() {
            rank = shape.first().copied().into();
        }
    }
    let order = crate::clip::lora::PROJECTIONS;
    matrices.sort_by_key(|m| order.iter().position(|p| p == m));
    let encoder = match (text, vision) {
        (true, false) => "text",
        (false, true) => "vision",
        _ => "both",
    };
    serde_json::json!({
        "rank": rank,
        "matrices": matrices,
        "encoder": encoder,
        "layers": layers.into_iter().collect::<Vec<_>>(),
    })
}

pub const SPEC: MethodSpec = MethodSpec {
    name: "clip-lora",
    title: "CLIP-LoRA",
    paper: "Zanella, Ben Ayed: Low-Rank Few-Shot Adaptation of Vision-Language Models (CVPR Workshops 2024)",
    takes: Takes::Images,
    fitting: Fitting::Sgd,
    classes: ClassBinding::AnyClasses,
    uses_validation: false,
    validation_unless: &[],
    template_option: Some("template"),
    options: &[
        RANK, ALPHA, DROPOUT, MATRICES, ENCODER, LAYERS, TEMPLATE, SEED,
    ],
    defaults: || super::options_json(&ClipLoraConfig::default()),
    recipe,
    create: |clip, names, options, runtime: Runtime| {
        let config: ClipLoraConfig = super::parse_options("clip-lora", options)?;
        let mut l = ClipLoraLearner::new(clip, names, config)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    restore: |clip, meta, tensors, runtime| {
        let config: ClipLoraConfig = super::parse_options("clip-lora", meta.options.clone())?;
        let mut l = ClipLoraLearner::from_tensors(clip, &meta.class_names, config, tensors)?;
        l.image_budget = towers::budget_bytes(runtime);
        Ok(Box::new(l))
    },
    official: Some(&OFFICIAL),
};
