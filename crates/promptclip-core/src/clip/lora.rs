//! Low-rank updates of a tower's frozen attention projections (LoRA, Hu et al., ICLR 2022, as
//! CLIP-LoRA puts them in both of CLIP's towers): for a block's q, k, v or out projection
//!
//!   W' = W + s B A,   A (r, in), B (out, r), s = alpha / sqrt(r)   (CLIP-LoRA's loralib scaling)
//!
//! In training the update's input is dropped out (probability p) and the frozen product is not:
//!
//!   y = x W^T + b + s (drop(x) A^T) B^T
//!
//! The training pass keeps what the factors' gradients need, the dropout masks and u = drop(x) A^T
//! (N, r); the layer input x is recomputed from the block input the tape already holds. With
//! g = dy B (N, r):
//!
//!   dA = s g^T drop(x)     dB = s dy^T u     dx += s (g A) * mask / (1 - p)
//!
//! The frozen weights get no gradient. This file holds the updates and their arithmetic; a block's
//! training pass and merge with them are `lora_blocks.rs`'s.
use crate::rng::{derive_seed, Rng};
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// The projections of a block's attention that an update can adapt, in this order everywhere
/// (loralib's `q_proj`, `k_proj`, `v_proj` and `proj`).
pub const PROJECTIONS: [&str; 4] = ["q", "k", "v", "o"];

/// The factors of one projection's update: A (r, in) and B (out, r).
#[derive(Debug, Clone)]
pub struct LowRank {
    pub a: Tensor,
    pub b: Tensor,
}

/// One block's updates, by projection (q, k, v, out); a block with none is frozen.
pub type BlockLora = [Option<LowRank>; 4];

/// The factors' gradients (dA, dB) of one block, by projection.
pub type BlockLoraGrads = [Option<(Tensor, Tensor)>; 4];

/// The updates of one tower.
#[derive(Debug, Clone)]
pub struct TowerLora {
    /// One per block of the tower.
    pub blocks: Vec<BlockLora>,
    /// s = alpha / sqrt(r).
    pub scale: f64,
    /// Dropout probability of the updates' input in training.
    pub dropout: f64,
    /// Seed of a training pass's dropout masks: every block, stream, projection and sequence
    /// draws its own from it, so that a pass is reproducible (a resumed run draws the same masks).
    pub seed: u64,
    /// The index of the pass's first sequence in its batch: a batch run in chunks draws, for each
    /// image, the masks the whole batch in one pass would.
    pub first_sequence: usize,
}

impl TowerLora {
    /// Block `block`'s updates in stream `stream` of a training pass (None: the block is frozen).
    pub fn pass(&self, block: usize, stream: u64) -> Option<BlockPass<'_>> {
        let factors = self.blocks.get(block)?;
        factors.iter().any(Option::is_some).then(|| BlockPass {
            factors,
            scale: self.scale,
            dropout: self.dropout,
            seed: derive_seed(self.seed, block as u64, stream),
            first_sequence: self.first_sequence,
        })
    }

    /// Empty gradients, one entry per block.
    pub fn no_grads(&self) -> Vec<BlockLoraGrads> {
        vec![Default::default(); self.blocks.len()]
    }
}

/// One block's updates in one stream of a training pass.
#[derive(Debug, Clone, Copy)]
pub struct BlockPass<'a> {
    pub factors: &'a BlockLora,
    pub scale: f64,
    pub dropout: f64,
    pub seed: u64,
    pub first_sequence: usize,
}

/// What one projection's update keeps for the backward pass.
#[derive(Debug)]
pub struct PathTape {
    /// 1 where the input was kept (u8, (N, in)); None without dropout.
    mask: Option<Tensor>,
    /// drop(x) A^T (N, r).
    u: Tensor,
}

/// A block's share of a stream's tape for its updates.
#[derive(Debug, Default)]
pub struct LoraTape {
    pub(crate) paths: [Option<PathTape>; 4],
    /// The out projection's input, the heads merged (B, T, d), when that projection is adapted.
    pub(crate) merged: Option<Tensor>,
}

/// A dropout mask for `sequences` of `len` rows of `cols` ((sequences len, cols), 1 where kept
/// with probability 1 - p), each sequence from its own stream of `seed` by its index in the batch.
fn keep_mask(
    (first, sequences, len): (usize, usize, usize),
    cols: usize,
    p: f64,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut keep = Vec::with_capacity(sequences * len * cols);
    for s in first..first + sequences {
        let mut rng = Rng::new(derive_seed(seed, s as u64, 0));
        keep.extend((0..len * cols).map(|_| u8::from(rng.uniform() >= p)));
    }
    Ok(Tensor::from_vec(keep, (sequences * len, cols), device)?)
}

/// x with the mask applied and the kept entries scaled by 1 / (1 - p), as torch's dropout.
fn dropped(x: &Tensor, mask: Option<&Tensor>, p: f64) -> Result<Tensor> {
    Ok(match mask {
        Some(m) => ((x * m.to_dtype(x.dtype())?)? * (1.0 / (1.0 - p)))?,
        None => x.clone(),
    })
}

/// The dtype the factors' gradients are summed in: f32 for half models (the sums run over every
/// token of the batch), else the model's.
fn grad_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

pub(crate) fn sum_into(acc: &mut Option<(Tensor, Tensor)>, g: (Tensor, Tensor)) -> Result<()> {
    *acc = Some(match acc.take() {
        None => g,
        Some((a, b)) => ((a + g.0)?, (b + g.1)?),
    });
    Ok(())
}

impl BlockPass<'_> {
    /// Projection `j`'s update of the input x (N, in) of sequences of `len` rows: s (drop(x) A^T)
    /// B^T (N, out), with its tape.
    pub(crate) fn forward(
        &self,
        j: usize,
        x: &Tensor,
        len: usize,
    ) -> Result<Option<(Tensor, PathTape)>> {
        let Some(f) = &self.factors[j] else {
            return Ok(None);
        };
        // Detached: the factors' gradients are formed by hand below; a tracked factor would make
        // every product with it an autograd graph (slower ops, and a chunk's whole forward kept
        // alive through its outputs).
        let (a, b) = (
            f.a.detach().to_dtype(x.dtype())?,
            f.b.detach().to_dtype(x.dtype())?,
        );
        let mask = if self.dropout > 0.0 {
            let (n, cols) = x.dims2()?;
            let sequences = (self.first_sequence, n / len.max(1), len);
            let seed = derive_seed(self.seed, j as u64, 0);
            Some(keep_mask(sequences, cols, self.dropout, seed, x.device())?)
        } else {
            None
        };
        let u = dropped(x, mask.as_ref(), self.dropout)?.matmul(&a.t()?)?;
        let delta = (u.matmul(&b.t()?)? * self.scale)?;
        Ok(Some((delta, PathTape { mask, u })))
    }

    /// Backward through projection `j`'s update for its output gradient dy (N, out) and input x
    /// (N, in): the input's gradient and (dA, dB).
    pub(crate) fn backward(
        &self,
        j: usize,
        tape: &PathTape,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let f = self.factors[j].as_ref().ok_or_else(|| {
            crate::Error::Internal(format!("projection {} has no update", PROJECTIONS[j]))
        })?;
        let acc = grad_dtype(dy.dtype());
        let (a, b) = (f.a.detach().to_dtype(acc)?, f.b.detach().to_dtype(acc)?);
        let dy = dy.to_dtype(acc)?;
        let g = dy.matmul(&b)?;
        let xd = dropped(&x.to_dtype(acc)?, tape.mask.as_ref(), self.dropout)?;
        let da = (g.t()?.matmul(&xd)? * self.scale)?;
        let db = (dy.t()?.matmul(&tape.u.to_dtype(acc)?)? * self.scale)?;
        let dx = dropped(
            &(g.matmul(&a)? * self.scale)?,
            tape.mask.as_ref(),
            self.dropout,
        )?;
        Ok((dx.to_dtype(x.dtype())?, (da, db)))
    }

    pub(crate) fn adapts_qkv(&self) -> bool {
        self.factors[..3].iter().any(Option::is_some)
    }
}

/// Whether `lora` has one entry per block of a tower of `blocks`.
pub fn check_blocks(blocks: usize, lora: &TowerLora, tower: &str) -> Result<()> {
    if lora.blocks.len() != blocks {
        return Err(crate::Error::InvalidArgument(format!(
            "low-rank updates for {} {tower} blocks; this tower has {blocks}",
            lora.blocks.len()
        )));
    }
    Ok(())
}
