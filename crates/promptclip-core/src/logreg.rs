//! The linear-probe baseline of the CoOp paper: multinomial logistic regression on frozen image
//! features, fitted as scikit-learn's `LogisticRegression(solver="lbfgs", penalty="l2", C=c)`
//! fits it, and the official search for `C` on a validation split (KaiyangZhou/CoOp,
//! `lpclip/linear_probe.py`).
//!
//! Objective (scikit-learn >= 1.1, lbfgs, multinomial; every class has its own row and the
//! intercept is not penalised), minimised in f64:
//!
//! ```text
//! f(W, b) = 1/n sum_i [logsumexp(W x_i + b) - (W x_i + b)[y_i]] + 1/(2 C n) ||W||_F^2
//! ```
//!
//! The solver is L-BFGS as scipy's L-BFGS-B runs it on an unbounded problem: 10 correction
//! pairs, the Moré-Thuente line search (strong Wolfe, ftol 1e-3, gtol 0.9, xtol 0.1, at most 50
//! evaluations), first trial step 1/||g|| and then 1, stop when max |grad_i| <= `tol` or the
//! relative decrease of f in one iteration is <= `ftol` (scikit-learn passes 64 eps).
//!
//! Two classes: scikit-learn then fits the binomial model (one coefficient row `v`, penalty
//! ||v||^2 / (2 C n)). Its probabilities are those of the two-row model above with the penalty
//! doubled, whose optimum is the symmetric `W = [-v/2, v/2]`, `b = [-c/2, c/2]`; that is what
//! [`LogReg::fit`] fits for `k == 2`, so `weight[1] - weight[0]` is scikit-learn's `coef_`.
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::VecDeque;

/// Settings of one fit. `Default` is the official script's: C = 1, 1000 iterations, and
/// scikit-learn's `tol` and L-BFGS `ftol`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRegConfig {
    /// Inverse penalty strength, > 0 (`f64::INFINITY`: no penalty).
    pub c: f64,
    /// Most L-BFGS iterations (scikit-learn's `max_iter`).
    pub max_iter: usize,
    /// Stop when max |grad_i| <= tol (scikit-learn's `tol`, scipy's `gtol`).
    pub tol: f64,
    /// Stop when (f_old - f) <= ftol * max(|f_old|, |f|, 1); 0 disables the test, which is
    /// what reaching the exact optimum needs (scikit-learn's 64 eps can stop well short of it
    /// when features are far from centred).
    pub ftol: f64,
}

impl Default for LogRegConfig {
    fn default() -> Self {
        LogRegConfig {
            c: 1.0,
            max_iter: 1000,
            tol: 1e-4,
            ftol: 64.0 * f64::EPSILON,
        }
    }
}

/// A fitted classifier: `logits = x weightᵀ + bias`.
#[derive(Debug, Clone)]
pub struct LogReg {
    /// (K, D) f64 on the CPU.
    pub weight: Tensor,
    /// (K,) f64 on the CPU.
    pub bias: Tensor,
    /// L-BFGS iterations run (scikit-learn's `n_iter_`).
    pub n_iter: usize,
    /// Whether a stopping test (`tol` or `ftol`) was met, rather than `max_iter` or a failed
    /// line search.
    pub converged: bool,
    /// The objective at the returned parameters.
    pub objective: f64,
}

/// The official search's settings. `Default` is `lpclip/linear_probe.py`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Coarse grid, searched in this order; the first best is kept.
    pub grid: Vec<f64>,
    /// Bisection rounds after the grid.
    pub steps: usize,
    /// Used for every fit of the search (its `c` is ignored).
    pub fit: LogRegConfig,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            grid: vec![1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6],
            steps: 8,
            fit: LogRegConfig::default(),
        }
    }
}

/// One bisection round: both ends fitted, the better one wins, a tie goes to the left.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRound {
    pub c_left: f64,
    pub c_right: f64,
    pub acc_left: f64,
    pub acc_right: f64,
}

/// What [`search_c`] tried, for reports and for comparing with the official script's log.
#[derive(Debug, Clone, PartialEq)]
pub struct CSearch {
    /// Validation accuracy of each grid value, in grid order.
    pub grid_acc: Vec<f64>,
    pub rounds: Vec<SearchRound>,
    /// The last round's winner (the grid's best when there are no rounds).
    pub c: f64,
}

impl LogReg {
    /// Fit on features `x` (N, D) (any float dtype and device; used as f64 on the CPU) and
    /// labels `y` in `0..k`; every class needs at least one sample.
    pub fn fit(x: &Tensor, y: &[usize], k: usize, cfg: &LogRegConfig) -> Result<LogReg> {
        let x = features(x, "x")?;
        check_labels(y, x.dim(0)?, k, "y")?;
        check_classes(y, k)?;
        fit_prepared(&x, y, k, cfg)
    }

    /// `x weightᵀ + bias`, (N, K) f64 on the CPU.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = features(x, "x")?;
        let (_, d) = self.weight.dims2()?;
        if x.dim(1)? != d {
            return Err(Error::InvalidArgument(format!(
                "x has {} features, the classifier was fitted on {d}",
                x.dim(1)?
            )));
        }
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }

    /// Class probabilities (softmax of the logits), (N, K) f64 on the CPU.
    pub fn predict_proba(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.logits(x)?;
        let (n, k) = z.dims2()?;
        let mut z = z.flatten_all()?.to_vec1::<f64>()?;
        for row in z.chunks_mut(k) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        Ok(Tensor::from_vec(z, (n, k), &Device::Cpu)?)
    }

    /// The most probable class of each row; ties go to the lowest class, as NumPy's argmax.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<usize>> {
        let z = self.logits(x)?;
        let k = z.dim(1)?;
        Ok(z.flatten_all()?
            .to_vec1::<f64>()?
            .chunks(k)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (j, &v)| {
                        if v > best.1 {
                            (j, v)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect())
    }
}

/// The fit's objective (module doc) at (`weight` (K, D), `bias` (K,)) and its gradient
/// (d/dW, d/db), for checking a fit. `k == 2` uses the doubled penalty that [`LogReg::fit`]
/// minimises.
pub fn objective(
    x: &Tensor,
    y: &[usize],
    c: f64,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<(f64, Tensor, Tensor)> {
    let x = features(x, "x")?;
    let (k, d) = weight.dims2()?;
    if x.dim(1)? != d || bias.dims() != [k] {
        return Err(Error::InvalidArgument(format!(
            "weight {:?} and bias {:?} do not fit x {:?}",
            weight.dims(),
            bias.dims(),
            x.dims()
        )));
    }
    check_labels(y, x.dim(0)?, k, "y")?;
    check_c(c)?;
    let problem = Problem::new(&x, y, k, c)?;
    let mut theta = weight
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    theta.extend(
        bias.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?,
    );
    let mut grad = vec![0.0; theta.len()];
    let f = problem.eval(&theta, &mut grad)?;
    let gb = grad.split_off(k * d);
    Ok((
        f,
        Tensor::from_vec(grad, (k, d), &Device::Cpu)?,
        Tensor::from_vec(gb, k, &Device::Cpu)?,
    ))
}

/// The official search for C: fit each grid value on the training split and score it on the
/// validation split (first best wins), then `steps` rounds of bisection in log10 space between
/// 0.1x and 10x the best grid value. Each round fits both ends; the right end wins only if it
/// is strictly more accurate, and the next range is the winner's half (its end point and the
/// midpoint of the log10 range). Returns the last round's classifier.
pub fn search_c(
    train_x: &Tensor,
    train_y: &[usize],
    val_x: &Tensor,
    val_y: &[usize],
    k: usize,
    cfg: &SearchConfig,
) -> Result<(LogReg, CSearch)> {
    let tx = features(train_x, "train_x")?;
    check_labels(train_y, tx.dim(0)?, k, "train_y")?;
    check_classes(train_y, k)?;
    let vx = features(val_x, "val_x")?;
    check_labels(val_y, vx.dim(0)?, k, "val_y")?;
    if vx.dim(1)? != tx.dim(1)? {
        return Err(Error::InvalidArgument(format!(
            "val_x has {} features, train_x {}",
            vx.dim(1)?,
            tx.dim(1)?
        )));
    }
    if cfg.grid.is_empty() {
        return Err(Error::InvalidArgument("search grid is empty".into()));
    }
    for &c in &cfg.grid {
        check_c(c)?;
    }
    let fit_at = |c: f64| -> Result<(LogReg, usize)> {
        let model = fit_prepared(
            &tx,
            train_y,
            k,
            &LogRegConfig {
                c,
                ..cfg.fit.clone()
            },
        )?;
        let correct = model
            .predict(&vx)?
            .iter()
            .zip(val_y)
            .filter(|(p, y)| p == y)
            .count();
        Ok((model, correct))
    };
    let acc = |correct: usize| correct as f64 / val_y.len() as f64;

    let mut grid_acc = Vec::with_capacity(cfg.grid.len());
    let (mut best, mut best_correct, mut model) = (0, 0, None);
    for (i, &c) in cfg.grid.iter().enumerate() {
        let (m, correct) = fit_at(c)?;
        grid_acc.push(acc(correct));
        if i == 0 || correct > best_correct {
            (best, best_correct, model) = (i, correct, Some(m));
        }
    }
    let mut c_final = cfg.grid[best];
    let (mut c_left, mut c_right) = (1e-1 * c_final, 1e1 * c_final);
    let mut rounds = Vec::with_capacity(cfg.steps);
    for _ in 0..cfg.steps {
        let (left, correct_left) = fit_at(c_left)?;
        let (right, correct_right) = fit_at(c_right)?;
        rounds.push(SearchRound {
            c_left,
            c_right,
            acc_left: acc(correct_left),
            acc_right: acc(correct_right),
        });
        // The official script updates the range in log10 space and maps both ends back with
        // 10^x, so the ends are rounded that way even when they do not move.
        let (l, r) = (c_left.log10(), c_right.log10());
        let mid = 0.5 * (r + l);
        let (lo, hi);
        if correct_left < correct_right {
            (c_final, model) = (c_right, Some(right));
            (lo, hi) = (mid, r);
        } else {
            (c_final, model) = (c_left, Some(left));
            (lo, hi) = (l, mid);
        }
        (c_left, c_right) = (10f64.powf(lo), 10f64.powf(hi));
    }
    let model = model.ok_or_else(|| Error::Internal("search fitted nothing".into()))?;
    Ok((
        model,
        CSearch {
            grid_acc,
            rounds,
            c: c_final,
        },
    ))
}

/// (N, D) f64 contiguous on the CPU, checked non-empty and finite.
fn features(x: &Tensor, name: &str) -> Result<Tensor> {
    let (n, d) = x.dims2().map_err(|_| {
        Error::InvalidArgument(format!("{name} must be (N, D), got shape {:?}", x.dims()))
    })?;
    if n == 0 || d == 0 {
        return Err(Error::InvalidArgument(format!(
            "{name} is empty (shape ({n}, {d}))"
        )));
    }
    let v = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "{name}[{}, {}] is {}",
            i / d,
            i % d,
            v[i]
        )));
    }
    Ok(Tensor::from_vec(v, (n, d), &Device::Cpu)?)
}

fn check_labels(y: &[usize], n: usize, k: usize, name: &str) -> Result<()> {
    if k < 2 {
        return Err(Error::InvalidArgument(format!(
            "k = {k}: logistic regression needs at least 2 classes"
        )));
    }
    if y.len() != n {
        return Err(Error::InvalidArgument(format!(
            "{name} has {} labels for {n} feature rows",
            y.len()
        )));
    }
    if let Some(i) = y.iter().position(|&l| l >= k) {
        return Err(Error::InvalidArgument(format!(
            "{name}[{i}] = {} is not a class (k = {k})",
            y[i]
        )));
    }
    Ok(())
}

/// A class without training samples has no finite optimum (its intercept falls without bound).
fn check_classes(y: &[usize], k: usize) -> Result<()> {
    let mut seen = vec![false; k];
    y.iter().for_each(|&l| seen[l] = true);
    match seen.iter().position(|s| !s) {
        Some(j) => Err(Error::InvalidArgument(format!(
            "class {j} has no training samples (k = {k})"
        ))),
        None => Ok(()),
    }
}

fn check_c(c: f64) -> Result<()> {
    if c > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("c = {c} must be > 0")))
    }
}

fn fit_prepared(x: &Tensor, y: &[usize], k: usize, cfg: &LogRegConfig) -> Result<LogReg> {
    check_c(cfg.c)?;
    if !(cfg.tol >= 0.0 && cfg.tol.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "tol = {} must be finite and >= 0",
            cfg.tol
        )));
    }
    if !(cfg.ftol >= 0.0 && cfg.ftol.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "ftol = {} must be finite and >= 0",
            cfg.ftol
        )));
    }
    let problem = Problem::new(x, y, k, cfg.c)?;
    let d = problem.d;
    let (theta, objective, n_iter, converged) = lbfgs(
        &problem,
        vec![0.0; k * d + k],
        cfg.max_iter,
        cfg.tol,
        cfg.ftol,
    )?;
    Ok(LogReg {
        weight: Tensor::from_slice(&theta[..k * d], (k, d), &Device::Cpu)?,
        bias: Tensor::from_slice(&theta[k * d..], k, &Device::Cpu)?,
        n_iter,
        converged,
        objective,
    })
}

/// The objective on prepared data; parameters are laid out as [W row-major, b].
struct Problem<'a> {
    x: &'a Tensor,
    y: &'a [usize],
    n: usize,
    d: usize,
    k: usize,
    l2: f64,
}

impl<'a> Problem<'a> {
    fn new(x: &'a Tensor, y: &'a [usize], k: usize, c: f64) -> Result<Self> {
        let (n, d) = x.dims2()?;
        // See the module doc for why two classes get twice the penalty.
        let l2 = if k == 2 { 2.0 } else { 1.0 } / (c * n as f64);
        Ok(Problem { x, y, n, d, k, l2 })
    }

    /// f(theta); its gradient is written to `grad`.
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> Result<f64> {
        let (n, d, k) = (self.n, self.d, self.k);
        let (w, b) = theta.split_at(k * d);
        let wt = Tensor::from_slice(w, (k, d), &Device::Cpu)?;
        let mut z = self.x.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f64>()?;
        // z becomes softmax(z) - onehot(y), the gradient of the mean loss times n w.r.t. z.
        let mut loss = 0.0;
        let (gw, gb) = grad.split_at_mut(k * d);
        gb.fill(0.0);
        for (row, &y) in z.chunks_mut(k).zip(self.y) {
            let mut m = f64::NEG_INFINITY;
            for (v, bj) in row.iter_mut().zip(b) {
                *v += bj;
                m = m.max(*v);
            }
            let zy = row[y] - m;
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                sum += *v;
            }
            loss += sum.ln() - zy;
            let inv = 1.0 / sum;
            for (v, g) in row.iter_mut().zip(gb.iter_mut()) {
                *v *= inv;
                *g += *v;
            }
            row[y] -= 1.0;
            gb[y] -= 1.0;
        }
        let inv_n = 1.0 / n as f64;
        gb.iter_mut().for_each(|g| *g *= inv_n);
        let p = Tensor::from_vec(z, (n, k), &Device::Cpu)?;
        let pw = p.t()?.matmul(self.x)?.flatten_all()?.to_vec1::<f64>()?;
        let mut w2 = 0.0;
        for ((g, pv), wv) in gw.iter_mut().zip(&pw).zip(w) {
            *g = pv * inv_n + self.l2 * wv;
            w2 += wv * wv;
        }
        Ok(loss * inv_n + 0.5 * self.l2 * w2)
    }
}

const MEMORY: usize = 10;
const MAX_LINE_SEARCH_EVALS: usize = 50;
const STEP_MAX: f64 = 1e10;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Minimise from `x`; returns (x, f, iterations, converged).
fn lbfgs(
    problem: &Problem,
    mut x: Vec<f64>,
    max_iter: usize,
    gtol: f64,
    ftol: f64,
) -> Result<(Vec<f64>, f64, usize, bool)> {
    let p = x.len();
    let mut g = vec![0.0; p];
    let mut f = problem.eval(&x, &mut g)?;
    if max_abs(&g) <= gtol {
        return Ok((x, f, 0, true));
    }
    // (s, y, 1 / s·y), oldest first.
    let mut memory: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::with_capacity(MEMORY);
    let (mut xt, mut gt, mut d) = (vec![0.0; p], vec![0.0; p], vec![0.0; p]);
    let mut alpha = [0.0; MEMORY];
    let mut iter = 0;
    while iter < max_iter {
        // Two-loop recursion: d = -H g, H0 = (s·y / y·y) I from the newest pair.
        d.copy_from_slice(&g);
        for (i, (s, y, rho)) in memory.iter().enumerate().rev() {
            alpha[i] = rho * dot(s, &d);
            d.iter_mut().zip(y).for_each(|(q, yv)| *q -= alpha[i] * yv);
        }
        if let Some((s, y, _)) = memory.back() {
            let gamma = dot(s, y) / dot(y, y);
            d.iter_mut().for_each(|q| *q *= gamma);
        }
        for (i, (s, y, rho)) in memory.iter().enumerate() {
            let beta = rho * dot(y, &d);
            d.iter_mut()
                .zip(s)
                .for_each(|(r, sv)| *r += (alpha[i] - beta) * sv);
        }
        d.iter_mut().for_each(|v| *v = -*v);

        let gd = dot(&g, &d);
        // scipy's first trial step is 1/||d|| on the first iteration only, 1 afterwards (also
        // after a restart).
        let stp0 = if iter == 0 {
            (1.0 / dot(&d, &d).sqrt()).min(STEP_MAX)
        } else {
            1.0
        };
        let accepted = if gd < 0.0 {
            line_search(f, gd, stp0, |stp| {
                xt.iter_mut()
                    .zip(&x)
                    .zip(&d)
                    .for_each(|((t, xv), dv)| *t = xv + stp * dv);
                let ft = problem.eval(&xt, &mut gt)?;
                Ok((ft, dot(&gt, &d)))
            })?
        } else {
            None
        };
        let Some((stp, f_new)) = accepted else {
            // Not a descent direction, or no acceptable step: as L-BFGS-B, forget the curvature
            // pairs and retry along -g, unless that was already the direction.
            if memory.is_empty() {
                return Ok((x, f, iter, false));
            }
            memory.clear();
            continue;
        };
        iter += 1;
        // xt, gt hold the accepted point: the line search stops on its last evaluation.
        let s: Vec<f64> = xt.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gt.iter().zip(&g).map(|(a, b)| a - b).collect();
        std::mem::swap(&mut x, &mut xt);
        std::mem::swap(&mut g, &mut gt);
        let f_old = f;
        f = f_new;
        if max_abs(&g) <= gtol || f_old - f <= ftol * f_old.abs().max(f.abs()).max(1.0) {
            return Ok((x, f, iter, true));
        }
        let sy = dot(&s, &y);
        // L-BFGS-B's test for keeping a pair: enough curvature relative to the decrease.
        if sy > f64::EPSILON * (-gd * stp) {
            if memory.len() == MEMORY {
                memory.pop_front();
            }
            memory.push_back((s, y, 1.0 / sy));
        }
    }
    Ok((x, f, iter, false))
}

/// Moré-Thuente search along a descent direction (MINPACK-2 dcsrch with L-BFGS-B's settings).
/// `phi(stp)` evaluates f and its directional derivative at x + stp d. Returns the accepted
/// (stp, f), or None when the evaluation budget runs out or f stops being finite.
fn line_search(
    f0: f64,
    g0: f64,
    mut stp: f64,
    mut phi: impl FnMut(f64) -> Result<(f64, f64)>,
) -> Result<Option<(f64, f64)>> {
    let mut state = Dcsrch::new(f0, g0, stp);
    for _ in 0..MAX_LINE_SEARCH_EVALS {
        let (f, g) = phi(stp)?;
        if !f.is_finite() || !g.is_finite() {
            return Ok(None);
        }
        if state.step(&mut stp, f, g) {
            return Ok(Some((stp, f)));
        }
    }
    Ok(None)
}

struct Dcsrch {
    brackt: bool,
    stage2: bool,
    finit: f64,
    ginit: f64,
    gtest: f64,
    width: f64,
    width1: f64,
    stx: f64,
    fx: f64,
    gx: f64,
    sty: f64,
    fy: f64,
    gy: f64,
    stmin: f64,
    stmax: f64,
}

const LS_FTOL: f64 = 1e-3;
const LS_GTOL: f64 = 0.9;
const LS_XTOL: f64 = 0.1;
const STEP_MIN: f64 = 0.0;
const XTRAPL: f64 = 1.1;
const XTRAPU: f64 = 4.0;

impl Dcsrch {
    fn new(f0: f64, g0: f64, stp: f64) -> Self {
        let width = STEP_MAX - STEP_MIN;
        Dcsrch {
            brackt: false,
            stage2: false,
            finit: f0,
            ginit: g0,
            gtest: LS_FTOL * g0,
            width,
            width1: 2.0 * width,
            stx: 0.0,
            fx: f0,
            gx: g0,
            sty: 0.0,
            fy: f0,
            gy: g0,
            stmin: 0.0,
            stmax: stp + XTRAPU * stp,
        }
    }

    /// Takes f and f' at `stp`; true when `stp` is accepted (strong Wolfe conditions, or one of
    /// dcsrch's warnings, which L-BFGS-B accepts too), otherwise sets the next trial step.
    fn step(&mut self, stp: &mut f64, f: f64, g: f64) -> bool {
        let ftest = self.finit + *stp * self.gtest;
        if !self.stage2 && f <= ftest && g >= 0.0 {
            self.stage2 = true;
        }
        if (self.brackt
            && (*stp <= self.stmin
                || *stp >= self.stmax
                || self.stmax - self.stmin <= LS_XTOL * self.stmax))
            || (*stp == STEP_MAX && f <= ftest && g <= self.gtest)
            || (*stp == STEP_MIN && (f > ftest || g >= self.gtest))
            || (f <= ftest && g.abs() <= LS_GTOL * -self.ginit)
        {
            return true;
        }
        // Before a step with sufficient decrease and f' >= 0 is seen, work on the modified
        // function psi(stp) = f(stp) - f0 - stp * gtest, as Moré and Thuente prescribe.
        if !self.stage2 && f <= self.fx && f > ftest {
            let gt = self.gtest;
            let mut fxm = self.fx - self.stx * gt;
            let mut fym = self.fy - self.sty * gt;
            let mut gxm = self.gx - gt;
            let mut gym = self.gy - gt;
            let fm = f - *stp * gt;
            let gm = g - gt;
            dcstep(
                (&mut self.stx, &mut fxm, &mut gxm),
                (&mut self.sty, &mut fym, &mut gym),
                (stp, fm, gm),
                &mut self.brackt,
                (self.stmin, self.stmax),
            );
            self.fx = fxm + self.stx * gt;
            self.fy = fym + self.sty * gt;
            self.gx = gxm + gt;
            self.gy = gym + gt;
        } else {
            dcstep(
                (&mut self.stx, &mut self.fx, &mut self.gx),
                (&mut self.sty, &mut self.fy, &mut self.gy),
                (stp, f, g),
                &mut self.brackt,
                (self.stmin, self.stmax),
            );
        }
        if self.brackt {
            // Force sufficient shrinkage of the bracket, else bisect.
            if (self.sty - self.stx).abs() >= 0.66 * self.width1 {
                *stp = self.stx + 0.5 * (self.sty - self.stx);
            }
            self.width1 = self.width;
            self.width = (self.sty - self.stx).abs();
            self.stmin = self.stx.min(self.sty);
            self.stmax = self.stx.max(self.sty);
        } else {
            self.stmin = *stp + XTRAPL * (*stp - self.stx);
            self.stmax = *stp + XTRAPU * (*stp - self.stx);
        }
        *stp = stp.clamp(STEP_MIN, STEP_MAX);
        // No further progress is possible: fall back to the best step so far.
        if self.brackt
            && (*stp <= self.stmin
                || *stp >= self.stmax
                || self.stmax - self.stmin <= LS_XTOL * self.stmax)
        {
            *stp = self.stx;
        }
        false
    }
}

/// MINPACK-2 dcstep: a safeguarded cubic/quadratic step from the best point (stx) and the other
/// end of the interval (sty), given the trial (stp, fp, dp); updates the interval and stp.
fn dcstep(
    (stx, fx, dx): (&mut f64, &mut f64, &mut f64),
    (sty, fy, dy): (&mut f64, &mut f64, &mut f64),
    (stp, fp, dp): (&mut f64, f64, f64),
    brackt: &mut bool,
    (stpmin, stpmax): (f64, f64),
) {
    let sgnd = dp * (*dx / dx.abs());
    let cubic_gamma = |theta: f64, a: f64, b: f64| {
        let s = theta.abs().max(a.abs()).max(b.abs());
        s * ((theta / s).powi(2) - (a / s) * (b / s)).max(0.0).sqrt()
    };
    let stpf;
    if fp > *fx {
        // Higher function value: the minimum is bracketed.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let mut gamma = cubic_gamma(theta, *dx, dp);
        if *stp < *stx {
            gamma = -gamma;
        }
        let p = (gamma - *dx) + theta;
        let q = ((gamma - *dx) + gamma) + dp;
        let stpc = *stx + p / q * (*stp - *stx);
        let stpq = *stx + ((*dx / ((*fx - fp) / (*stp - *stx) + *dx)) / 2.0) * (*stp - *stx);
        stpf = if (stpc - *stx).abs() < (stpq - *stx).abs() {
            stpc
        } else {
            stpc + (stpq - stpc) / 2.0
        };
        *brackt = true;
    } else if sgnd < 0.0 {
        // Derivatives of opposite sign: bracketed.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let mut gamma = cubic_gamma(theta, *dx, dp);
        if *stp > *stx {
            gamma = -gamma;
        }
        let p = (gamma - dp) + theta;
        let q = ((gamma - dp) + gamma) + *dx;
        let stpc = *stp + p / q * (*stx - *stp);
        let stpq = *stp + (dp / (dp - *dx)) * (*stx - *stp);
        stpf = if (stpc - *stp).abs() > (stpq - *stp).abs() {
            stpc
        } else {
            stpq
        };
        *brackt = true;
    } else if dp.abs() < dx.abs() {
        // Same sign, the derivative's magnitude decreases.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let mut gamma = cubic_gamma(theta, *dx, dp);
        if *stp > *stx {
            gamma = -gamma;
        }
        let p = (gamma - dp) + theta;
        let q = (gamma + (*dx - dp)) + gamma;
        let r = p / q;
        let stpc = if r < 0.0 && gamma != 0.0 {
            *stp + r * (*stx - *stp)
        } else if *stp > *stx {
            stpmax
        } else {
            stpmin
        };
        let stpq = *stp + (dp / (dp - *dx)) * (*stx - *stp);
        stpf = if *brackt {
            let s = if (stpc - *stp).abs() < (stpq - *stp).abs() {
                stpc
            } else {
                stpq
            };
            if *stp > *stx {
                s.min(*stp + 0.66 * (*sty - *stp))
            } else {
                s.max(*stp + 0.66 * (*sty - *stp))
            }
        } else {
            let s = if (stpc - *stp).abs() > (stpq - *stp).abs() {
                stpc
            } else {
                stpq
            };
            s.min(stpmax).max(stpmin)
        };
    } else if *brackt {
        // Same sign, the derivative's magnitude does not decrease: step to the far end.
        let theta = 3.0 * (fp - *fy) / (*sty - *stp) + *dy + dp;
        let mut gamma = cubic_gamma(theta, *dy, dp);
        if *stp > *sty {
            gamma = -gamma;
        }
        let p = (gamma - dp) + theta;
        let q = ((gamma - dp) + gamma) + *dy;
        stpf = *stp + p / q * (*sty - *stp);
    } else if *stp > *stx {
        stpf = stpmax;
    } else {
        stpf = stpmin;
    }
    if fp > *fx {
        (*sty, *fy, *dy) = (*stp, fp, dp);
    } else {
        if sgnd < 0.0 {
            (*sty, *fy, *dy) = (*stx, *fx, *dx);
        }
        (*stx, *fx, *dx) = (*stp, fp, dp);
    }
    *stp = stpf;
}
