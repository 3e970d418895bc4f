//! The linear-probe baseline against scikit-learn (fixtures/linear_probe/sklearn.safetensors,
//! made by scripts/make_linear_probe_fixture.py).
mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, rel_err};
use promptclip_core::logreg::{objective, search_c, LogReg, LogRegConfig, SearchConfig};
use promptclip_core::Error;
use std::collections::HashMap;

struct Fixture {
    t: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = fixtures().join("linear_probe/sklearn.safetensors");
        let (t, meta) = promptclip_core::files::read_safetensors(&path, &Device::Cpu).unwrap();
        Fixture { t, meta }
    }
    fn get(&self, name: &str) -> &Tensor {
        self.t.get(name).unwrap_or_else(|| panic!("{name} missing"))
    }
    fn labels(&self, name: &str) -> Vec<usize> {
        let t = self.get(name);
        assert_eq!(t.dtype(), DType::I64);
        t.to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    }
    fn meta_f64(&self, name: &str) -> f64 {
        self.meta[name].parse().unwrap()
    }
    fn meta_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.meta[name]).unwrap()
    }
    fn k(&self) -> usize {
        self.meta["k"].parse().unwrap()
    }
}

/// As far as the solver goes: no relative-reduction test (ftol 0), so it runs until f stops
/// decreasing in the last bits (max |grad| ~ sqrt(eps) there) or the gradient test passes.
fn exact(c: f64) -> LogRegConfig {
    LogRegConfig {
        c,
        max_iter: 100_000,
        tol: 1e-12,
        ftol: 0.0,
    }
}

/// Tolerances (relative max-abs errors, common::rel_err) measured with scikit-learn 1.9.1.
/// Against the Newton-polished optimum, weights / bias / test probabilities: C = 0.01: 3.0e-8 /
/// 5.8e-8 / 1.0e-8; C = 1: 1.5e-7 / 2.3e-7 / 6.7e-8; C = 100: 3.3e-6 / 4.7e-6 / 3.7e-7. The
/// floor is f's rounding: the fits stop where f no longer decreases, at max |grad| 4e-9 to
/// 1e-8, and C = 100 is the worst conditioned (1/(C n) is the smallest curvature). Where they
/// stop moves with rounding (an earlier build that summed exp in another order measured 6.7e-6 /
/// 9.8e-6 / 2.5e-7 at C = 100), hence bounds 4x to 10x above. Against scikit-learn's own
/// tightest fit (tol 1e-10; its ftol of 64 eps stops it farther from the optimum than ours,
/// whose objective is lower at every C) the distance is dominated by scikit-learn's error,
/// which the fixture records as `newton_rel_dist` (3.4e-6, 1.0e-6, 1.8e-5), so that bound adds
/// it.
#[test]
fn converged_fit_equals_sklearn_optimum() {
    let fx = Fixture::load();
    let (x, y, k) = (fx.get("train_x"), fx.labels("train_y"), fx.k());
    let test_x = fx.get("test_x");
    let mut rows = vec![];
    for (name, c) in [("1e-2", 1e-2), ("1", 1.0), ("1e2", 1e2)] {
        let model = LogReg::fit(x, &y, k, &exact(c)).unwrap();
        let proba = model.predict_proba(test_x).unwrap();
        let (_, gw, gb) = objective(x, &y, c, &model.weight, &model.bias).unwrap();
        let grad = [gw.flatten_all().unwrap(), gb]
            .iter()
            .map(|g| g.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap())
            .fold(0f64, f64::max);
        let get = |t: &str| fx.get(&format!("opt.{name}.{t}"));
        let exact_errs = [
            rel_err(&model.weight, get("exact.coef")) as f64,
            rel_err(&model.bias, get("exact.intercept")) as f64,
            rel_err(&proba, get("exact.test_proba")) as f64,
        ];
        let sk_errs = [
            rel_err(&model.weight, get("coef")) as f64,
            rel_err(&model.bias, get("intercept")) as f64,
            rel_err(&proba, get("test_proba")) as f64,
        ];
        let sk_dist = fx.meta_f64(&format!("opt.{name}.newton_rel_dist"));
        // The objective's value (not only its minimiser) is scikit-learn's.
        let f_sk = objective(x, &y, c, get("coef"), get("intercept"))
            .unwrap()
            .0;
        let f_ref = fx.meta_f64(&format!("opt.{name}.objective"));
        eprintln!(
            "C={name}: {} iterations, converged {}, max|grad| {grad:.1e}, f - f_sklearn {:.1e}; \
             vs exact optimum W b proba {}; vs sklearn {} \
             (sklearn's own distance {sk_dist:.1e}); objective at sklearn's fit vs its own \
             value {:.1e}",
            model.n_iter,
            model.converged,
            model.objective - f_ref,
            sci(&exact_errs),
            sci(&sk_errs),
            (f_sk - f_ref) / f_ref
        );
        rows.push((name, model, exact_errs, sk_errs, sk_dist, f_sk, f_ref));
    }
    let capped = LogReg::fit(
        x,
        &y,
        k,
        &LogRegConfig {
            max_iter: 3,
            ..exact(1.0)
        },
    )
    .unwrap();
    assert_eq!((capped.n_iter, capped.converged), (3, false));
    for (name, model, exact_errs, sk_errs, sk_dist, f_sk, f_ref) in rows {
        assert!(model.converged, "C={name}: {} iterations", model.n_iter);
        let bound = match name {
            "1e-2" => [5e-7, 5e-7, 1e-7],
            "1" => [2e-6, 3e-6, 3e-7],
            _ => [4e-5, 5e-5, 1.5e-6],
        };
        for i in 0..3 {
            assert!(
                exact_errs[i] < bound[i],
                "C={name}: {exact_errs:?} vs {bound:?}"
            );
            // rel_err scales by each tensor's own size, sk_dist by the larger of W and b.
            assert!(
                sk_errs[i] <= exact_errs[i] + 3.0 * sk_dist,
                "C={name}: {sk_errs:?} vs sklearn's distance {sk_dist}"
            );
        }
        assert!(
            (f_sk - f_ref).abs() <= 1e-13 * f_ref,
            "C={name}: {f_sk} vs {f_ref}"
        );
        assert!(
            model.objective <= f_ref,
            "C={name}: {} > {f_ref}",
            model.objective
        );
    }
}

fn sci(v: &[f64]) -> String {
    let v: Vec<String> = v.iter().map(|e| format!("{e:.1e}")).collect();
    format!("[{}]", v.join(", "))
}

/// scikit-learn fits the binomial model for two classes; the two-row fit must give its
/// probabilities and, as the difference of its rows, its coefficients.
#[test]
fn two_classes_match_sklearn_binomial() {
    let fx = Fixture::load();
    let pick = |xn: &str, yn: &str| {
        let y = fx.labels(yn);
        let idx: Vec<u32> = (0..y.len() as u32).filter(|&i| y[i as usize] < 2).collect();
        let idx_t = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
        let x = fx.get(xn).index_select(&idx_t, 0).unwrap();
        (x, idx.iter().map(|&i| y[i as usize]).collect::<Vec<_>>())
    };
    let (x, y) = pick("train_x", "train_y");
    let (test_x, _) = pick("test_x", "test_y");
    let model = LogReg::fit(&x, &y, 2, &exact(1.0)).unwrap();
    assert!(model.converged);
    let coef = (model.weight.get(1).unwrap() - model.weight.get(0).unwrap())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let b = model.bias.to_vec1::<f64>().unwrap();
    let intercept = Tensor::new(&[b[1] - b[0]], &Device::Cpu).unwrap();
    let errs = [
        rel_err(&coef, fx.get("binary.coef")),
        rel_err(&intercept, fx.get("binary.intercept")),
        rel_err(
            &model.predict_proba(&test_x).unwrap(),
            fx.get("binary.test_proba"),
        ),
    ];
    // Measured 6.3e-7 / 7.8e-7 / 2.1e-7 (weights, bias, probabilities); both fits stop near the
    // optimum at their own rounding floors. A wrong penalty scale would be off by ~1e-1.
    eprintln!("binary: {} iterations, W b proba {errs:?}", model.n_iter);
    assert!(errs.iter().all(|&e| e < 5e-6), "{errs:?}");
}

/// The official search with its own settings (default tol, 1000 iterations) takes the same
/// path as the script: same grid accuracies, same ranges and accuracies in every round, same C.
#[test]
fn search_follows_official_script() {
    let fx = Fixture::load();
    let k = fx.k();
    let (model, search) = search_c(
        fx.get("train_x"),
        &fx.labels("train_y"),
        fx.get("val_x"),
        &fx.labels("val_y"),
        k,
        &SearchConfig::default(),
    )
    .unwrap();
    let grid: Vec<f64> = serde_json::from_value(fx.meta_json("search.grid")).unwrap();
    assert_eq!(grid, SearchConfig::default().grid);
    let grid_acc: Vec<f64> = serde_json::from_value(fx.meta_json("search.grid_acc")).unwrap();
    assert_eq!(search.grid_acc, grid_acc);
    let rounds = fx.meta_json("search.rounds");
    let rounds = rounds.as_array().unwrap();
    assert_eq!(search.rounds.len(), rounds.len());
    for (i, (ours, theirs)) in search.rounds.iter().zip(rounds).enumerate() {
        let f = |key: &str| theirs[key].as_f64().unwrap();
        // Both sides go through the same libm log10/pow; allow an ulp or two all the same.
        let close = |a: f64, b: f64| (a - b).abs() <= 4.0 * f64::EPSILON * b.abs();
        assert!(
            close(ours.c_left, f("c_left")) && close(ours.c_right, f("c_right")),
            "round {i}: {ours:?} vs {theirs}"
        );
        assert_eq!(
            (ours.acc_left, ours.acc_right),
            (f("acc_left"), f("acc_right")),
            "round {i}"
        );
    }
    // Ties on the grid keep the first (np.argmax): 1e4 and 1e6 both score 0.5 here.
    assert_eq!((grid_acc[0], grid_acc[1]), (0.5, 0.5));
    let first_best = SearchConfig {
        grid: vec![1e4, 1e6],
        steps: 0,
        ..SearchConfig::default()
    };
    let (_, tie) = search_c(
        fx.get("train_x"),
        &fx.labels("train_y"),
        fx.get("val_x"),
        &fx.labels("val_y"),
        k,
        &first_best,
    )
    .unwrap();
    assert_eq!((tie.grid_acc, tie.c), (vec![0.5, 0.5], 1e4));

    let c_ref = fx.meta_f64("search.c");
    assert!(
        (search.c - c_ref).abs() <= 4.0 * f64::EPSILON * c_ref,
        "{} vs {c_ref}",
        search.c
    );
    assert!(model.converged && model.n_iter < 1000);
    let test_x = fx.get("test_x");
    let errs = [
        rel_err(&model.weight, fx.get("search.coef")),
        rel_err(&model.bias, fx.get("search.intercept")),
        rel_err(
            &model.predict_proba(test_x).unwrap(),
            fx.get("search.test_proba"),
        ),
    ];
    // Measured 3.5e-15 / 8.7e-15 / 1.2e-15 (weights, bias, probabilities): the line search is
    // scipy's, so the 20 iterations retrace scipy's path up to rounding. Another path stopping
    // at the same max |grad| <= 1e-4 would differ by ~1e-5.
    eprintln!(
        "search: C {} ({} iterations), W b proba {errs:?}",
        search.c, model.n_iter
    );
    assert!(errs.iter().all(|&e| e < 1e-9), "{errs:?}");
    let acc = model
        .predict(test_x)
        .unwrap()
        .iter()
        .zip(fx.labels("test_y"))
        .filter(|(p, y)| **p == *y)
        .count() as f64
        / fx.labels("test_y").len() as f64;
    assert_eq!(acc, fx.meta_f64("search.test_acc"));
}

/// The analytic gradient against central differences, at a point away from the optimum, for
/// K = 5 and for K = 2 (whose penalty is doubled).
#[test]
fn gradient_matches_finite_differences() {
    let fx = Fixture::load();
    let (x, y_all) = (fx.get("train_x"), fx.labels("train_y"));
    for k in [5usize, 2] {
        let y: Vec<usize> = y_all.iter().map(|&l| l % k).collect();
        let d = x.dim(1).unwrap();
        let c = 0.3;
        // A deterministic, non-symmetric point with weights of the optimum's size.
        let w: Vec<f64> = (0..k * d)
            .map(|i| 0.4 * ((i * 7 + 3) as f64).sin())
            .collect();
        let b: Vec<f64> = (0..k).map(|j| 0.5 * (j as f64 + 1.0).cos()).collect();
        let f_at = |w: &[f64], b: &[f64]| {
            let wt = Tensor::from_slice(w, (k, d), &Device::Cpu).unwrap();
            let bt = Tensor::from_slice(b, k, &Device::Cpu).unwrap();
            objective(x, &y, c, &wt, &bt).unwrap()
        };
        let (_, gw, gb) = f_at(&w, &b);
        let (gw, gb) = (
            gw.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            gb.to_vec1::<f64>().unwrap(),
        );
        let h = 1e-5;
        let mut worst = 0f64;
        let gscale = gw.iter().chain(&gb).fold(0f64, |m, v| m.max(v.abs()));
        for i in (0..k * d).step_by(3) {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[i] += h;
            wm[i] -= h;
            let fd = (f_at(&wp, &b).0 - f_at(&wm, &b).0) / (2.0 * h);
            worst = worst.max((fd - gw[i]).abs() / gscale);
        }
        for j in 0..k {
            let (mut bp, mut bm) = (b.clone(), b.clone());
            bp[j] += h;
            bm[j] -= h;
            let fd = (f_at(&w, &bp).0 - f_at(&w, &bm).0) / (2.0 * h);
            worst = worst.max((fd - gb[j]).abs() / gscale);
        }
        eprintln!("K={k}: finite differences, worst error {worst:.1e} of max |grad| {gscale:.2}");
        assert!(gscale > 1e-2 && worst < 1e-7, "K={k}: {worst}");
    }
}

/// Ill-posed input is an InvalidArgument naming the argument and value, never a panic.
#[test]
fn bad_inputs_are_errors() {
    let fx = Fixture::load();
    let (x, y, k) = (fx.get("train_x"), fx.labels("train_y"), fx.k());
    let cfg = LogRegConfig::default();
    let expect = |r: promptclip_core::Result<LogReg>, needle: &str| match r {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}")
        }
        Err(e) => panic!("wrong error for {needle:?}: {e}"),
        Ok(_) => panic!("no error for {needle:?}"),
    };
    let empty = Tensor::zeros((0, 16), DType::F64, &Device::Cpu).unwrap();
    expect(LogReg::fit(&empty, &[], k, &cfg), "x is empty");
    expect(LogReg::fit(x, &y[1..], k, &cfg), "79 labels for 80");
    let mut bad = y.clone();
    bad[7] = k;
    expect(LogReg::fit(x, &bad, k, &cfg), "y[7] = 5");
    let mut v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[3 * 16 + 2] = f64::NAN;
    let nan_x = Tensor::from_vec(v, (80, 16), &Device::Cpu).unwrap();
    expect(LogReg::fit(&nan_x, &y, k, &cfg), "x[3, 2] is NaN");
    for c in [0.0, -1.0, f64::NAN] {
        let cfg = LogRegConfig { c, ..cfg.clone() };
        expect(LogReg::fit(x, &y, k, &cfg), &format!("c = {c}"));
    }
    expect(LogReg::fit(x, &y, 1, &cfg), "k = 1");
    expect(
        LogReg::fit(x, &y, k + 1, &cfg),
        "class 5 has no training samples",
    );
    let tol = LogRegConfig {
        tol: -1.0,
        ..cfg.clone()
    };
    expect(LogReg::fit(x, &y, k, &tol), "tol = -1");
    expect(
        LogReg::fit(&x.flatten_all().unwrap(), &y, k, &cfg),
        "x must be (N, D)",
    );

    let model = LogReg::fit(x, &y, k, &cfg).unwrap();
    let narrow = x.narrow(1, 0, 15).unwrap();
    assert!(matches!(model.predict(&narrow), Err(Error::InvalidArgument(m)) if m.contains("15")));

    let val_x = fx.get("val_x");
    let val_y = fx.labels("val_y");
    let search = |vx: &Tensor, vy: &[usize]| {
        search_c(x, &y, vx, vy, k, &SearchConfig::default()).map(|(m, _)| m)
    };
    expect(search(val_x, &val_y[1..]), "val_y has 19 labels for 20");
    expect(
        search(&val_x.narrow(1, 0, 15).unwrap(), &val_y),
        "val_x has 15 features",
    );
    let mut bad = val_y.clone();
    bad[0] = 9;
    expect(search(val_x, &bad), "val_y[0] = 9");
}

/// Timing at a realistic size (N = 16 shots x 1000 classes, D = 512); run with `--ignored`.
#[test]
#[ignore]
fn timing_realistic_size() {
    let (k, shots, d) = (env_usize("LOGREG_K", 1000), 16, env_usize("LOGREG_D", 512));
    let n = k * shots;
    // Class means plus noise in a 64-dimensional subspace, offset like CLIP's raw features.
    let dev = Device::Cpu;
    let mix = (Tensor::randn(0f64, 1.0, (64, d), &dev).unwrap() / 8.0).unwrap();
    let means = Tensor::randn(0f64, 1.0, (k, 64), &dev).unwrap();
    let y: Vec<usize> = (0..n).map(|i| i / shots).collect();
    let idx = Tensor::from_iter(y.iter().map(|&l| l as u32), &dev).unwrap();
    let z =
        (means.index_select(&idx, 0).unwrap() + Tensor::randn(0f64, 1.0, (n, 64), &dev)).unwrap();
    let offset = Tensor::randn(0f64, 0.3, d, &dev).unwrap();
    let x = z.matmul(&mix).unwrap().broadcast_add(&offset).unwrap();
    for c in [1e-2, 1.0] {
        let t = std::time::Instant::now();
        let model = LogReg::fit(
            &x,
            &y,
            k,
            &LogRegConfig {
                c,
                ..Default::default()
            },
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "N={n} D={d} K={k} C={c}: {secs:.1} s, {} iterations ({:.2} s each), converged {}",
            model.n_iter,
            secs / model.n_iter.max(1) as f64,
            model.converged
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
