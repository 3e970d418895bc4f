//! CLIP's causal text transformer. `forward_embeds` takes token embeddings directly, so prompt
//! learners can splice learned context vectors between the SOS token and the class name.
use super::config::ClipTextConfig;
use super::nn::{causal_mask, offset_causal_mask, Attention, EncoderLayer, LayerNorm, Linear, Mlp};
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

pub(crate) fn load_layers(w: &Weights, tower: Tower, n: usize, d: usize, ff: usize, heads: usize, eps: f64, act: super::config::Activation) -> Result<Vec<EncoderLayer>> {
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
                attn: Attention::new(Linear::new(qkv_w, Some(qkv_b))?, Linear::new(ow, Some(ob))?, heads),
                ln_2: LayerNorm::new(l2w, l2b, eps),
                mlp: Mlp::new(Linear::new(f1w, Some(f1b))?, Linear::new(f2w, Some(f2b))?, act),
            })
        })
        .collect()
}

impl TextTransformer {
    pub fn load(w: &Weights, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let token_embedding = w.top("text_model.embeddings.token_embedding.weight", &[config.vocab_size, d])?;
        let position_embedding = w.top("text_model.embeddings.position_embedding.weight", &[config.max_position_embeddings, d])?;
        let layers = load_layers(w, Tower::Text, config.num_hidden_layers, d, config.intermediate_size, config.num_attention_heads, config.layer_norm_eps, config.activation())?;
        let final_ln = LayerNorm::new(
            w.top("text_model.final_layer_norm.weight", &[d])?,
            w.top("text_model.final_layer_norm.bias", &[d])?,
            config.layer_norm_eps,
        );
        Ok(Self { token_embedding, position_embedding, layers, final_ln, config: config.clone() })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Token embeddings (B, T, D) for token ids (B, T).
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
        let (b, t, d) = embeds.dims3()?;
        if eot.len() != b {
            return Err(Error::InvalidArgument(format!("{} EOT positions for a batch of {b}", eot.len())));
        }
        if d != self.hidden_size() {
            return Err(Error::InvalidArgument(format!("embedding width {d}, text model width {}", self.hidden_size())));
        }
        if t > self.context_length() {
            return Err(Error::InvalidArgument(format!("{t} tokens exceed the context length {}", self.context_length())));
        }
        let used = match eot.iter().max() {
            Some(&m) if m < t => m + 1,
            Some(&m) => return Err(Error::InvalidArgument(format!("EOT position {m} outside a sequence of {t} tokens"))),
            None => return Err(Error::InvalidArgument("empty batch".into())),
        };
        let x = embeds.narrow(1, 0, used)?;
        let pos = self.position_embedding.narrow(0, 0, used)?;
        let mut x = x.broadcast_add(&pos)?;
        let mask = causal_mask(used, x.dtype(), x.device())?;
        for layer in &self.layers {
            x = layer.forward(&x, Some(&mask))?;
        }
        // Gather the EOT rows first, then layer-norm only those (layer norm is per token).
        let idx: Vec<u32> = eot.iter().enumerate().map(|(i, &e)| (i * used + e) as u32).collect();
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
    pub fn forward_embeds_shared(&self, embeds: &Tensor, eot: &[usize], shared: usize, group: &[usize]) -> Result<Tensor> {
        let (n, t, d) = embeds.dims3()?;
        if group.len() != n || eot.len() != n {
            return Err(Error::InvalidArgument(format!("{} groups and {} EOT positions for {n} sequences", group.len(), eot.len())));
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
            return Err(Error::InvalidArgument("group indices must cover 0..number of groups".into()));
        }
        let dev = embeds.device();
        let first = Tensor::from_vec(first, groups, dev)?;
        let group_t = Tensor::from_vec(group.iter().map(|&g| g as u32).collect::<Vec<_>>(), n, dev)?;
        let ts = used - shared;
        let pos = &self.position_embedding;
        let mut p = embeds.narrow(1, 0, shared)?.contiguous()?.index_select(&first, 0)?.broadcast_add(&pos.narrow(0, 0, shared)?)?;
        let mut s = embeds.narrow(1, shared, ts)?.broadcast_add(&pos.narrow(0, shared, ts)?)?;
        let prefix_mask = causal_mask(shared, p.dtype(), dev)?;
        let suffix_mask = offset_causal_mask(ts, shared, s.dtype(), dev)?;
        for layer in &self.layers {
            (p, s) = layer.forward_shared(&p, &s, &group_t, &prefix_mask, &suffix_mask)?;
        }
        let idx: Vec<u32> = eot.iter().enumerate().map(|(i, &e)| (i * ts + e - shared) as u32).collect();
        let pooled = s.reshape((n * ts, d))?.index_select(&Tensor::from_vec(idx, n, dev)?, 0)?;
        Ok(self.final_ln.forward(&pooled)?)
    }

    /// Convenience: token ids (B, T) and their EOT positions.
    pub fn forward_ids(&self, ids: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.forward_embeds(&self.embed_tokens(ids)?, eot)
    }
}
