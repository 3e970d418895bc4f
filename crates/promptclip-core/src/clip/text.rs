//! CLIP's causal text transformer. `forward_embeds` takes token embeddings directly, so prompt
//! learners can splice learned context vectors between the SOS token and the class name.
use super::config::ClipTextConfig;
use super::lora::{BlockLoraGrads, TowerLora};
use super::nn::{
    prompt_rows_sum, replace_rows, Attention, EncoderLayer, LayerNorm, Linear, Mlp, StreamTape,
};
use super::weights::{Tower, Weights};
use crate::{Error, Result};
use candle_core::{Module, Tensor};

#[derive(Debug, Clone)]
pub struct TextTransformer {
    pub token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_ln: LayerNorm,
    pub config: ClipTextConfig,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn load_layers(
    w: &Weights,
    tower: Tower,
    n: usize,
    d: usize,
    ff: usize,
    heads: usize,
    eps: f64,
    act: super::config::Activation,
) -> Result<Vec<EncoderLayer>> {
    (0..n)
        .map(|i| {
            let (qkv_w, qkv_b) = w.block_qkv(tower, i, d)?;
            let (ow, ob) = w.block_param(tower, i, "self_attn.out_proj", &[d, d], &[d])?;
            let (l1w, l1b) = w.block_param(tower, i, "layer_norm1", &[d], &[d])?;
            let (l2w, l2b) = w.block_param(tower, i, "layer_norm2", &[d], &[d])?;
            let (f1w, f1b) = w.block_param(tower, i, "mlp.fc1", &[ff, d], &[ff])?;
            let (f2w, f2b) = w.block_param(tower, i, "mlp.fc2", &[d, ff], &[d])?;
            Ok(EncoderLayer {
                ln_1: LayerNorm::new(l1w, l1b, eps),
                attn: Attention::new(
                    Linear::new(qkv_w, Some(qkv_b))?,
                    Linear::new(ow, Some(ob))?,
                    heads,
                ),
                ln_2: LayerNorm::new(l2w, l2b, eps),
                mlp: Mlp::new(
                    Linear::new(f1w, Some(f1b))?,
                    Linear::new(f2w, Some(f2b))?,
                    act,
                ),
            })
        })
        .collect()
}

impl TextTransformer {
    pub fn load(w: &Weights, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let token_embedding = w.top(
            "text_model.embeddings.token_embedding.weight",
            &[config.vocab_size, d],
        )?;
        let position_embedding = w.top(
            "text_model.embeddings.position_embedding.weight",
            &[config.max_position_embeddings, d],
        )?;
        let layers = load_layers(
            w,
            Tower::Text,
            config.num_hidden_layers,
            d,
            config.intermediate_size,
            config.num_attention_heads,
            config.layer_norm_eps,
            config.activation(),
        )?;
        let final_ln = LayerNorm::new(
            w.top("text_model.final_layer_norm.weight", &[d])?,
            w.top("text_model.final_layer_norm.bias", &[d])?,
            config.layer_norm_eps,
        );
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_ln,
            config: config.clone(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Token embeddings (B, T, D) for token ids (B, T).
    /// The deep prompts' token count, or why they do not fit: each (n, D), fewer than the blocks,
    /// and their rows 1..1 + n before every EOT.
    fn check_deep(&self, deep: &[Tensor], eot: &[usize]) -> Result<usize> {
        let Some(first) = deep.first() else {
            return Ok(0);
        };
        let d = self.hidden_size();
        let n = first.dim(0)?;
        if deep.len() >= self.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "{} deep text prompts for a text tower of {} blocks (at most {})",
                deep.len(),
                self.layers.len(),
                self.layers.len() - 1
            )));
        }
        if let Some((i, p)) = deep.iter().enumerate().find(|(_, p)| p.dims() != [n, d]) {
            return Err(Error::InvalidArgument(format!(
                "deep text prompt {} has shape {:?}; the first's is [{n}, {d}], the tower's width {d}",
                i + 1,
                p.dims()
            )));
        }
        if n == 0 || eot.iter().any(|&e| e <= n) {
            return Err(Error::InvalidArgument(format!(
                "deep text prompts of {n} tokens need every EOT after position {n}, got {eot:?}"
            )));
        }
        Ok(n)
    }

    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = self.token_embedding.index_select(&ids.flatten_all()?, 0)?;
        Ok(flat.reshape((b, t, self.hidden_size()))?)
    }

    /// Run the transformer on token embeddings (B, T, D) and return the final-layer-normed hidden
    /// state at each sequence's EOT position (B, D).
    ///
    /// The encoder is causal and read only at the EOT token, so positions after the last EOT in
    /// the batch cannot change the result: they are cut off before the blocks run. For CLIP's
    /// 77-token context and short prompts this is most of the sequence.
    pub fn forward_embeds(&self, embeds: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.forward_embeds_prompted(embeds, eot, &[])
    }

    /// `forward_embeds` with deep prompts (IVLP, MaPLe, PromptSRC): `deep[i]` (n, D) replaces the
    /// previous block's outputs at positions 1..1 + n (the context after SOS) at the input of
    /// block i + 1. The same for every sequence, as the input context is.
    pub fn forward_embeds_prompted(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        deep: &[Tensor],
    ) -> Result<Tensor> {
        let (b, t, d) = embeds.dims3()?;
        if eot.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} EOT positions for a batch of {b}",
                eot.len()
            )));
        }
        if d != self.hidden_size() {
            return Err(Error::InvalidArgument(format!(
                "embedding width {d}, text model width {}",
                self.hidden_size()
            )));
        }
        if t > self.context_length() {
            return Err(Error::InvalidArgument(format!(
                "{t} tokens exceed the context length {}",
                self.context_length()
            )));
        }
        let used = match eot.iter().max() {
            Some(&m) if m < t => m + 1,
            Some(&m) => {
                return Err(Error::InvalidArgument(format!(
                    "EOT position {m} outside a sequence of {t} tokens"
                )))
            }
            None => return Err(Error::InvalidArgument("empty batch".into())),
        };
        self.check_deep(deep, eot)?;
        let x = embeds.narrow(1, 0, used)?;
        let pos = self.position_embedding.narrow(0, 0, used)?;
        let mut x = x.broadcast_add(&pos)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(p) = deep_at(deep, i) {
                x = replace_rows(&x, 1, p)?;
            }
            x = layer.forward(&x, Some(0), None)?;
        }
        // Gather the EOT rows first, then layer-norm only those (layer norm is per token).
        let idx: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &e)| (i * used + e) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, b, x.device())?;
        let pooled = x.reshape((b * used, d))?.index_select(&idx, 0)?;
        Ok(self.final_ln.forward(&pooled)?)
    }

    /// The same result as `forward_embeds`, for sequences whose first `shared` tokens are equal
    /// within groups: `group[n]` names sequence n's group, and the prefix is read from the first
    /// sequence of each group. The causal encoder's states over a shared prefix are the same for
    /// every sequence of the group, so they are computed once per group (CoOp: one group of K
    /// class prompts; CoCoOp: one group per image). Falls back to `forward_embeds` when an EOT
    /// lies inside the shared part.
    pub fn forward_embeds_shared(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group: &[usize],
    ) -> Result<Tensor> {
        let (n, t, d) = embeds.dims3()?;
        if group.len() != n || eot.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} groups and {} EOT positions for {n} sequences",
                group.len(),
                eot.len()
            )));
        }
        if shared == 0 || eot.iter().any(|&e| e < shared) || shared >= t {
            return self.forward_embeds(embeds, eot);
        }
        let used = eot.iter().max().map(|&m| m + 1).unwrap_or(1).min(t);
        let groups = group.iter().max().map(|&g| g + 1).unwrap_or(0);
        let mut first = vec![u32::MAX; groups];
        for (i, &g) in group.iter().enumerate() {
            if first[g] == u32::MAX {
                first[g] = i as u32;
            }
        }
        if first.contains(&u32::MAX) {
            return Err(Error::InvalidArgument(
                "group indices must cover 0..number of groups".into(),
            ));
        }
        let dev = embeds.device();
        let first = Tensor::from_vec(first, groups, dev)?;
        let group_t =
            Tensor::from_vec(group.iter().map(|&g| g as u32).collect::<Vec<_>>(), n, dev)?;
        let ts = used - shared;
        let pos = &self.position_embedding;
        let mut p = embeds
            .narrow(1, 0, shared)?
            .contiguous()?
            .index_select(&first, 0)?
            .broadcast_add(&pos.narrow(0, 0, shared)?)?;
        let mut s = embeds
            .narrow(1, shared, ts)?
            .broadcast_add(&pos.narrow(0, shared, ts)?)?;
        for layer in &self.layers {
            (p, s) = layer.forward_shared(&p, &s, &group_t)?;
        }
        let idx: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &e)| (i * ts + e - shared) as u32)
            .collect();
        let pooled = s
            .reshape((n * ts, d))?
            .index_select(&Tensor::from_vec(idx, n, dev)?, 0)?;
        Ok(self.final_ln.forward(&pooled)?)
    }

    /// The training forward pass: the same result as `forward_embeds_shared` (and, with
    /// `shared` = 0, `forward_embeds`), plus a tape from which `TextTape::backward` computes the
    /// embeddings' gradient. Prompt learning runs this instead of candle's autograd: fused ops,
    /// and no frozen-weight gradients. Groups are contiguous runs of `group_size` sequences
    /// (CoOp: one group of all K prompts; CoCoOp: one group of K prompts per image) whose first
    /// `shared` embeddings are equal; they are encoded once per group.
    pub fn forward_train(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
    ) -> Result<(Tensor, TextTape<'_>)> {
        // On a GPU, tensor-core GEMMs want every leading dimension a multiple of 8 elements; the
        // attention matmuls over a few positions otherwise fall to kernels several times slower.
        let align = if embeds.device().is_cuda() { 8 } else { 1 };
        self.forward_train_aligned(embeds, eot, shared, group_size, align)
    }

    /// `forward_train` with the per-sequence positions grown to a multiple of `align` (where the
    /// context allows) and the keys to a multiple of `align` rows. The extra positions come after
    /// every EOT, and the extra key rows (zero) after every query's last visible key, so the
    /// causal mask hides both from every position that is read: the result is the same, and the
    /// gradient of those positions is zero.
    pub fn forward_train_aligned(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
        align: usize,
    ) -> Result<(Tensor, TextTape<'_>)> {
        self.forward_train_deep(embeds, eot, shared, group_size, align, &[])
    }

    /// `forward_train_aligned` with deep prompts, as `forward_embeds_prompted` places them; the
    /// tape's `backward_deep` gives their gradients. They replace rows of the shared prefix when
    /// the prefix holds them (SOS and the context), else of every sequence.
    pub fn forward_train_deep(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
        align: usize,
        deep: &[Tensor],
    ) -> Result<(Tensor, TextTape<'_>)> {
        self.forward_train_lora(embeds, eot, shared, group_size, align, deep, None)
    }

    /// `forward_train_deep` with low-rank updates of the blocks' projections (`lora`); the tape's
    /// `backward_all` gives their factors' gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train_lora(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        shared: usize,
        group_size: usize,
        align: usize,
        deep: &[Tensor],
        lora: Option<&TowerLora>,
    ) -> Result<(Tensor, TextTape<'_>)> {
        let align = align.max(1);
        if let Some(l) = lora {
            super::lora::check_blocks(self.layers.len(), l, "text")?;
        }
        let pass = |i: usize, stream: u64| lora.and_then(|l| l.pass(i, stream));
        let (n, t, d) = embeds.dims3()?;
        if eot.len() != n || group_size == 0 || n % group_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "{} EOT positions and groups of {group_size} for {n} sequences",
                eot.len()
            )));
        }
        if d != self.hidden_size() || t > self.context_length() {
            return Err(Error::InvalidArgument(format!(
                "embeddings ({n}, {t}, {d}) for a text model of width {} and {} positions",
                self.hidden_size(),
                self.context_length()
            )));
        }
        let used = match eot.iter().max() {
            Some(&m) if m < t => m + 1,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "EOT positions {eot:?} outside sequences of {t} tokens"
                )))
            }
        };
        let n_deep = self.check_deep(deep, eot)?;
        let embeds = embeds.detach();
        let dev = embeds.device();
        // Shared leading tokens are encoded once per group, unless an EOT lies inside them, or
        // they hold only part of the deep prompts' positions.
        let shared = if shared > 0
            && shared < used
            && eot.iter().all(|&e| e >= shared)
            && (deep.is_empty() || shared > n_deep)
        {
            shared
        } else {
            0
        };
        let groups = n / group_size;
        let ts = (used - shared).next_multiple_of(align).min(t - shared);
        let pos = &self.position_embedding;
        let first: Vec<u32> = (0..groups).map(|g| (g * group_size) as u32).collect();
        let mut p = if shared > 0 {
            let firsts = Tensor::from_slice(&first, groups, dev)?;
            Some(
                embeds
                    .narrow(1, 0, shared)?
                    .contiguous()?
                    .index_select(&firsts, 0)?
                    .broadcast_add(&pos.narrow(0, 0, shared)?)?,
            )
        } else {
            None
        };
        let mut s = embeds
            .narrow(1, shared, ts)?
            .broadcast_add(&pos.narrow(0, shared, ts)?)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(pd) = deep_at(deep, i) {
                let pd = pd.detach();
                match &mut p {
                    Some(px) => *px = replace_rows(px, 1, &pd)?,
                    None => s = replace_rows(&s, 1, &pd)?,
                }
            }
            let (qs, ks, vs, mut s_lora) = layer.qkv_train_lora(&s, pass(i, 0))?;
            let (prefix_tape, k_all, v_all, p_next) = match &p {
                Some(px) => {
                    let (qp, kp, vp, mut p_lora) = layer.qkv_train_lora(px, pass(i, 1))?;
                    let rows = (shared + ts).next_multiple_of(align);
                    let k_all = crate::kernels::gather_cat(&kp, &ks, rows)?;
                    let v_all = crate::kernels::gather_cat(&vp, &vs, rows)?;
                    // The prefix attends among itself over keys padded the same way.
                    let pad = shared.next_multiple_of(align) - shared;
                    let (kp, vp) = if pad > 0 {
                        (kp.pad_with_zeros(2, 0, pad)?, vp.pad_with_zeros(2, 0, pad)?)
                    } else {
                        (kp, vp)
                    };
                    let (merged, probs) = layer.attn.core(&qp, &kp, &vp, Some(0), None)?;
                    let (y, mid, h) =
                        layer.finish_train_lora(px, &merged, pass(i, 1), &mut p_lora)?;
                    let h =
                        h.ok_or_else(|| Error::Internal("fc1 pre-activation not kept".into()))?;
                    (
                        Some(StreamTape {
                            x: px.clone(),
                            q: qp,
                            k: kp,
                            v: vp,
                            probs,
                            mid,
                            h,
                            lora: p_lora,
                        }),
                        k_all,
                        v_all,
                        Some(y),
                    )
                }
                None => (None, ks, vs, None),
            };
            let (merged, probs) = layer.attn.core(&qs, &k_all, &v_all, Some(shared), None)?;
            let (y, mid, h) = layer.finish_train_lora(&s, &merged, pass(i, 0), &mut s_lora)?;
            let h = h.ok_or_else(|| Error::Internal("fc1 pre-activation not kept".into()))?;
            // The suffix stream's keys and values are kept with the prefix's in front (k_all).
            layers.push((
                prefix_tape,
                StreamTape {
                    x: s,
                    q: qs,
                    k: k_all,
                    v: v_all,
                    probs,
                    mid,
                    h,
                    lora: s_lora,
                },
            ));
            s = y;
            p = p_next;
        }
        let eot_rows: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &e)| (i * ts + e - shared) as u32)
            .collect();
        let pooled_in = s
            .reshape((n * ts, d))?
            .index_select(&Tensor::from_slice(&eot_rows, n, dev)?, 0)?;
        let pooled = self.final_ln.forward(&pooled_in)?;
        let tape = TextTape {
            model: self,
            layers,
            pooled_in,
            eot_rows,
            first,
            n,
            t,
            shared,
            ts,
            deep: deep.len(),
            n_deep,
            lora: lora.cloned(),
        };
        Ok((pooled, tape))
    }

    /// This tower with `lora`'s updates folded into copies of the adapted weights.
    pub fn merged(&self, lora: &TowerLora) -> Result<Self> {
        Ok(Self {
            layers: super::lora_blocks::merged_layers(&self.layers, lora, "text")?,
            ..self.clone()
        })
    }

    /// Convenience: token ids (B, T) and their EOT positions.
    pub fn forward_ids(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.forward_embeds(&self.embed_tokens(ids)?, eot)
    }
}

/// What `TextTransformer::forward_train` keeps for the backward pass.
pub struct TextTape<'a> {
    model: &'a TextTransformer,
    /// Per block: the shared-prefix stream (when there is one) and the per-sequence stream,
    /// whose keys and values hold the group's prefix positions first.
    layers: Vec<(Option<StreamTape>, StreamTape)>,
    /// The EOT rows before the final layer norm, and where they sit in the suffix stream.
    pooled_in: Tensor,
    eot_rows: Vec<u32>,
    /// The first sequence of each group.
    first: Vec<u32>,
    n: usize,
    t: usize,
    shared: usize,
    ts: usize,
    /// How many blocks had a deep prompt replace rows 1..1 + n_deep at their input.
    deep: usize,
    n_deep: usize,
    /// The low-rank updates the pass ran with.
    lora: Option<TowerLora>,
}

/// The gradients of what a text training pass was given (`TextTape::backward_all`).
pub struct TextGrads {
    /// The input embeddings' (N, T, d).
    pub embeds: Tensor,
    /// Each deep prompt's (n, D).
    pub deep: Vec<Tensor>,
    /// The low-rank factors', one entry per block (empty without updates).
    pub lora: Vec<BlockLoraGrads>,
}

impl TextTape<'_> {
    /// The gradient of the input embeddings (N, T, d) for the gradient of the pooled output
    /// (N, d). As with autograd through `forward_embeds_shared`, a group's shared tokens receive
    /// their gradient at the group's first sequence.
    pub fn backward(&self, d_pooled: &Tensor) -> Result<Tensor> {
        Ok(self.backward_deep(d_pooled)?.0)
    }

    /// `backward`, and the gradients of the deep prompts (n, D) each, summed over the sequences
    /// (or the groups, when the prefix holds them). A deep prompt's gradient is its block input's
    /// at its rows; the previous block's outputs there were dropped, so none flows to them.
    pub fn backward_deep(&self, d_pooled: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let g = self.backward_all(d_pooled)?;
        Ok((g.embeds, g.deep))
    }

    /// `backward_deep`, and the gradients of the low-rank factors the pass ran with (summed over
    /// the sequences and both streams).
    pub fn backward_all(&self, d_pooled: &Tensor) -> Result<TextGrads> {
        let m = self.model;
        let lora = self.lora.as_ref();
        let pass = |i: usize, stream: u64| lora.and_then(|l| l.pass(i, stream));
        let mut lora_grads = lora.map_or_else(Vec::new, TowerLora::no_grads);
        let d = m.hidden_size();
        let (n, tp, ts) = (self.n, self.shared, self.ts);
        let d_rows = m
            .final_ln
            .backward(&self.pooled_in, &d_pooled.to_dtype(self.pooled_in.dtype())?)?;
        let mut ds =
            crate::kernels::scatter_rows(&d_rows, &self.eot_rows, n * ts)?.reshape((n, ts, d))?;
        let groups = self.first.len();
        let mut dp: Option<Tensor> = None;
        let mut deep = vec![None; self.deep];
        for (i, (layer, (prefix, suffix))) in m.layers.iter().zip(&self.layers).enumerate().rev() {
            let mut no_grads = BlockLoraGrads::default();
            let grads = lora_grads.get_mut(i).unwrap_or(&mut no_grads);
            let (d_mid, d_merged) = layer.finish_backward_lora(suffix, &ds, pass(i, 0), grads)?;
            let (d_q, d_k_all, d_v_all) = layer.attn.core_backward(
                &suffix.q,
                &suffix.k,
                &suffix.v,
                &suffix.probs,
                &d_merged,
            )?;
            ds = layer.input_backward_lora(
                suffix,
                &d_mid,
                &d_q,
                &d_k_all,
                &d_v_all,
                tp,
                pass(i, 0),
                grads,
            )?;
            if let Some(p) = prefix {
                // Prefix keys and values served every sequence of their group: sum those gradients.
                let mut dk = crate::kernels::group_prefix_sum(&d_k_all, groups, tp)?;
                let mut dv = crate::kernels::group_prefix_sum(&d_v_all, groups, tp)?;
                let (d_mid_p, d_qp) = match &dp {
                    // After the last block the prefix's own output feeds nothing: only its keys
                    // and values have gradients there.
                    None => (p.x.zeros_like()?, p.q.zeros_like()?),
                    Some(dp_out) => {
                        let (d_mid_p, d_merged_p) =
                            layer.finish_backward_lora(p, dp_out, pass(i, 1), grads)?;
                        let (d_qp, d_kp, d_vp) =
                            layer
                                .attn
                                .core_backward(&p.q, &p.k, &p.v, &p.probs, &d_merged_p)?;
                        // Padding key rows (see forward_train_aligned) have no gradient to pass on.
                        // (Contiguous first: candle's strided binary kernels upload their layout.)
                        dk = (dk + d_kp.narrow(2, 0, tp)?.contiguous()?)?;
                        dv = (dv + d_vp.narrow(2, 0, tp)?.contiguous()?)?;
                        (d_mid_p, d_qp)
                    }
                };
                dp = Some(layer.input_backward_lora(
                    p,
                    &d_mid_p,
                    &d_qp,
                    &dk,
                    &dv,
                    0,
                    pass(i, 1),
                    grads,
                )?);
            }
            if let Some(j) = i.checked_sub(1).filter(|&j| j < self.deep) {
                let rows = match &mut dp {
                    Some(dp) => dp,
                    None => &mut ds,
                };
                deep[j] = Some(prompt_rows_sum(rows, 1, self.n_deep)?);
                let zeros = Tensor::zeros((self.n_deep, d), rows.dtype(), rows.device())?;
                *rows = replace_rows(rows, 1, &zeros)?;
            }
        }
        let used = tp + ts;
        let mut parts = Vec::with_capacity(3);
        if let Some(dp) = dp {
            let dp = dp.reshape((groups, tp * d))?;
            parts.push(crate::kernels::scatter_rows(&dp, &self.first, n)?.reshape((n, tp, d))?);
        }
        parts.push(ds);
        if self.t > used {
            parts.push(Tensor::zeros(
                (n, self.t - used, d),
                parts[0].dtype(),
                parts[0].device(),
            )?);
        }
        let deep = deep
            .into_iter()
            .map(|g| g.ok_or_else(|| Error::Internal("a deep prompt got no gradient".into())))
            .collect::<Result<_>>()?;
        Ok(TextGrads {
            embeds: Tensor::cat(&parts, 1)?,
            deep,
            lora: lora_grads,
        })
    }
}

/// The deep prompt at the input of block `i` (block 0 reads the input embeddings).
fn deep_at(deep: &[Tensor], i: usize) -> Option<&Tensor> {
    i.checked_sub(1).and_then(|j| deep.get(j))
}
