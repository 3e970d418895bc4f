//! Rows moved between sequences, for the text tower's shared prefix (`clip::text`): each
//! sequence's keys and values read after its group's prefix, the gradients of a prefix summed
//! over its group, and rows scattered to given positions of a zeroed output.
use super::op::{apply, Elem, Kernel};
use candle_core::{Result, Shape, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

/// One op of the family and its sizes.
#[derive(Debug, Clone, Copy)]
enum RowMoves {
    /// (kp (G, H, tp, hd), ks (N, H, ts, hd)) -> (N, H, tt, hd), sequence n reading its
    /// group's prefix, groups of `per_group` consecutive sequences, rows from tp + ts on zero.
    GatherCat {
        n: usize,
        per_group: usize,
        h: usize,
        tp: usize,
        ts: usize,
        tt: usize,
        hd: usize,
    },
    /// (x (G*K, H, tt, hd)) -> (G, H, tp, hd): the first tp rows summed over each group's K.
    GroupPrefixSum {
        g: usize,
        k: usize,
        h: usize,
        tt: usize,
        tp: usize,
        hd: usize,
    },
    /// (src (rows, d), idx u32 (rows)) -> (rows_out, d), zero but at rows idx.
    ScatterRows { rows_out: usize, d: usize },
}

impl Kernel for RowMoves {
    fn name(&self) -> &'static str {
        match self {
            RowMoves::GatherCat { .. } => "gather_cat",
            RowMoves::GroupPrefixSum { .. } => "group_prefix_sum",
            RowMoves::ScatterRows { .. } => "scatter_rows",
        }
    }

    fn out_shape(&self, _first: &Shape) -> Shape {
        match *self {
            RowMoves::GatherCat { n, h, tt, hd, .. } => (n, h, tt, hd).into(),
            RowMoves::GroupPrefixSum { g, h, tp, hd, .. } => (g, h, tp, hd).into(),
            RowMoves::ScatterRows { rows_out, d } => (rows_out, d).into(),
        }
    }

    fn takes_indices(&self) -> bool {
        matches!(self, RowMoves::ScatterRows { .. })
    }

    fn cpu<T: Elem>(&self, ins: &[&[T]], idx: &[u32]) -> Vec<T> {
        let zero = T::put(T::A::zero());
        match *self {
            RowMoves::GatherCat {
                n,
                per_group,
                h,
                tp,
                ts,
                tt,
                hd,
            } => {
                let (kp, ks) = (ins[0], ins[1]);
                let mut out = vec![zero; n * h * tt * hd];
                out.par_chunks_mut(tt * hd).enumerate().for_each(|(nh, o)| {
                    let (ni, hi) = (nh / h, nh % h);
                    let g = ni / per_group;
                    o[..tp * hd].copy_from_slice(&kp[(g * h + hi) * tp * hd..][..tp * hd]);
                    o[tp * hd..(tp + ts) * hd]
                        .copy_from_slice(&ks[(ni * h + hi) * ts * hd..][..ts * hd]);
                });
                out
            }
            RowMoves::GroupPrefixSum {
                g,
                k,
                h,
                tt,
                tp,
                hd,
            } => {
                let x = ins[0];
                let mut out = vec![zero; g * h * tp * hd];
                out.par_chunks_mut(tp * hd).enumerate().for_each(|(gh, o)| {
                    let (gi, hi) = (gh / h, gh % h);
                    let mut acc = vec![T::A::zero(); tp * hd];
                    for ki in 0..k {
                        let src = &x[(((gi * k + ki) * h + hi) * tt) * hd..][..tp * hd];
                        for (a, v) in acc.iter_mut().zip(src) {
                            *a = *a + v.get();
                        }
                    }
                    for (o, a) in o.iter_mut().zip(acc) {
                        *o = T::put(a);
                    }
                });
                out
            }
            RowMoves::ScatterRows { rows_out, d } => {
                let src = ins[0];
                let mut out = vec![zero; rows_out * d];
                for (r, &i) in idx.iter().enumerate() {
                    out[i as usize * d..(i as usize + 1) * d]
                        .copy_from_slice(&src[r * d..(r + 1) * d]);
                }
                out
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn vector_run(&self) -> usize {
        match *self {
            RowMoves::GatherCat { hd, .. } => hd,
            _ => 0,
        }
    }

    #[cfg(feature = "cuda")]
    fn launch(&self, at: &super::cuda::Site) -> Result<super::cuda::Launch> {
        use super::cuda::{grid_stride, i, per_row, row_threads, Launch, Scalar};
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        Ok(match *self {
            RowMoves::GatherCat {
                n,
                per_group,
                h,
                tp,
                ts,
                tt,
                hd,
            } => Launch::new(
                at.kernel.clone(),
                per_row(n * h, row_threads(tt * hd, at.v)),
                vec![i(per_group), i(h), i(tp), i(ts), i(tt), i(hd)],
            ),
            RowMoves::GroupPrefixSum {
                g,
                k,
                h,
                tt,
                tp,
                hd,
            } => {
                let cfg = LaunchConfig {
                    grid_dim: ((g * h * tp).max(1) as u32, 1, 1),
                    block_dim: (32, 16, 1),
                    shared_mem_bytes: 0,
                };
                Launch::new(
                    at.kernel.clone(),
                    cfg,
                    vec![i(g), i(k), i(h), i(tt), i(tp), i(hd)],
                )
            }
            RowMoves::ScatterRows { d, .. } => Launch::new(
                at.kernel.clone(),
                grid_stride(at.n_in),
                vec![Scalar::Usize(at.n_in / d), i(d)],
            ),
        })
    }
}

/// Keys (or values) of sequences sharing a prefix, as attention reads them: the group's prefix
/// `kp` (G, H, tp, hd) before each sequence's own `ks` (N, H, ts, hd), groups of N / G
/// consecutive sequences, then zero rows up to `rows` (>= tp + ts): (N, H, rows, hd).
pub fn gather_cat(kp: &Tensor, ks: &Tensor, rows: usize) -> Result<Tensor> {
    let (g, h, tp, hd) = kp.dims4()?;
    let (n, h2, ts, hd2) = ks.dims4()?;
    if g == 0 || n % g != 0 || h != h2 || hd != hd2 || rows < tp + ts {
        candle_core::bail!(
            "gather_cat: prefix {:?} and sequences {:?} into {rows} rows",
            kp.dims(),
            ks.dims()
        );
    }
    let op = RowMoves::GatherCat {
        n,
        per_group: n / g,
        h,
        tp,
        ts,
        tt: rows,
        hd,
    };
    apply(op, &[kp, ks])
}

/// For key or value gradients (G*K, H, tt, hd) of sequences grouped K by K, the sum over each
/// group of the first `tp` positions: (G, H, tp, hd).
pub fn group_prefix_sum(x: &Tensor, groups: usize, tp: usize) -> Result<Tensor> {
    let (n, h, tt, hd) = x.dims4()?;
    if groups == 0 || n % groups != 0 || tp > tt {
        candle_core::bail!("{n} sequences in {groups} groups, prefix {tp} of {tt}");
    }
    let op = RowMoves::GroupPrefixSum {
        g: groups,
        k: n / groups,
        h,
        tt,
        tp,
        hd,
    };
    apply(op, &[x])
}

/// A (rows_out, d) tensor of zeros with row idx[i] set to src[i] (the indices must differ).
pub fn scatter_rows(src: &Tensor, idx: &[u32], rows_out: usize) -> Result<Tensor> {
    let (rows, d) = src.dims2()?;
    if idx.len() != rows || idx.iter().any(|&i| i as usize >= rows_out) {
        candle_core::bail!("{} indices below {rows_out} for {rows} rows", idx.len());
    }
    let mut seen = vec![false; rows_out];
    if idx
        .iter()
        .any(|&i| std::mem::replace(&mut seen[i as usize], true))
    {
        candle_core::bail!("scatter_rows: repeated index");
    }
    let idx = Tensor::from_slice(idx, rows, src.device())?;
    apply(RowMoves::ScatterRows { rows_out, d }, &[src, &idx])
}

#[cfg(test)]
mod tests {
    use super::super::op::max_diff;
    use super::*;
    use candle_core::Device;

    /// The row ops against candle's index_select, concatenation and sums.
    #[test]
    fn row_ops_equal_candle_ops() {
        let dev = Device::Cpu;
        let (h, hd) = (3, 4);
        // Each sequence reads its group's prefix.
        let kp = Tensor::randn(0f32, 1.0, (2, h, 3, hd), &dev).unwrap();
        let ks = Tensor::randn(0f32, 1.0, (6, h, 2, hd), &dev).unwrap();
        let group = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &dev).unwrap();
        let expected = Tensor::cat(&[&kp.index_select(&group, 0).unwrap(), &ks], 2).unwrap();
        assert_eq!(max_diff(&gather_cat(&kp, &ks, 5).unwrap(), &expected), 0.0);
        let padded = gather_cat(&kp, &ks, 8).unwrap();
        assert_eq!(max_diff(&padded.narrow(2, 0, 5).unwrap(), &expected), 0.0);
        assert_eq!(
            padded
                .narrow(2, 5, 3)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(gather_cat(&kp, &ks, 4).is_err());
        // Sum of each group's prefix rows.
        let g = Tensor::randn(0f32, 1.0, (6, h, 7, hd), &dev).unwrap();
        let s = group_prefix_sum(&g, 2, 3).unwrap();
        let r = g
            .narrow(2, 0, 3)
            .unwrap()
            .reshape((2, 3, h, 3, hd))
            .unwrap()
            .sum(1)
            .unwrap();
        assert!(max_diff(&s, &r) < 1e-5);
        // Rows placed at indices.
        let src = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let out = scatter_rows(&src, &[4, 0, 2], 5).unwrap();
        assert_eq!(max_diff(&out.get(4).unwrap(), &src.get(0).unwrap()), 0.0);
        assert_eq!(max_diff(&out.get(2).unwrap(), &src.get(2).unwrap()), 0.0);
        assert_eq!(
            out.get(1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(scatter_rows(&src, &[1, 1, 2], 5).is_err());
    }
}
