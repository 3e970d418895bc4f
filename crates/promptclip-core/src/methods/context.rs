//! A learned text context as users can ask for it: the vectors in token-embedding space that the
//! prompt methods (CoOp and the methods built on its prompt learner) put around the class name.
//! A learner that has one says so (`Learner::learned_context`); the binding's `context()` and
//! `interpret()` read it from there, whatever the method.
use crate::clip::Clip;
use crate::Result;
use candle_core::{DType, Tensor, D};

pub struct LearnedContext {
    /// (M, d) shared by all classes, or (K, M, d) with class-specific context.
    pub vectors: Tensor,
    pub class_specific: bool,
}

impl LearnedContext {
    /// M, the context tokens per prompt.
    pub fn n_ctx(&self) -> usize {
        let dims = self.vectors.dims();
        dims[dims.len().saturating_sub(2)]
    }

    /// For each context vector, the `k` nearest vocabulary tokens by Euclidean distance in
    /// token-embedding space (CoOp Table 4). Rows: context position (per class when CSC).
    pub fn nearest_tokens(&self, clip: &Clip, k: usize) -> Result<Vec<Vec<(u32, String, f32)>>> {
        let ctx = self.vectors.to_dtype(DType::F32)?;
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
