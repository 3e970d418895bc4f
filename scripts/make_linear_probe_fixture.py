"""Reference fixture for the CoOp paper's linear-probe baseline (lpclip/linear_probe.py in
KaiyangZhou/CoOp): scikit-learn's multinomial LogisticRegression(solver="lbfgs", max_iter=1000,
penalty="l2", C=c) on unnormalised image features, and the official search for C on the
validation split.

Objective (scikit-learn >= 1.1, lbfgs, multinomial, every class parameterised, intercept not
penalised), which is what crates/promptclip-core/src/logreg.rs minimises:

    f(W, b) = mean_i [logsumexp(W x_i + b) - (W x_i + b)[y_i]] + 0.5 / (C n) * ||W||_F^2

The search, as linear_probe.py does it (re-implemented below, not imported):
    grid [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]: val accuracy of each fit; np.argmax (first best)
    c_left, c_right = 0.1 * best, 10 * best
    8 rounds: fit both ends; if acc_left < acc_right the right end wins and the next range is
    [mid, log10(c_right)] in log10 space, else (ties included) the left end wins and it is
    [log10(c_left), mid], mid = (log10(c_left) + log10(c_right)) / 2; both ends go back through
    np.power(10, .). The final classifier is the last round's winner.

Data: synthetic "CLIP image features", K = 5 classes, D = 16: seeded Gaussian class means and
noise in R = 6 dimensions that overlap heavily, mapped into R^16 by a fixed random linear map
plus a fixed offset (one large dimension), so the features are unnormalised and not centred
like CLIP's and the 80 training samples are not linearly separable (every grid C converges in
the official 1000 iterations; asserted). 16 train, 4 val and 20 test samples per class, sorted
by class.

At C in {0.01, 1, 100}: scikit-learn's fit with tol 1e-10, max_iter 100000 ("opt.<C>.*"), and
that fit refined by Newton steps on the exact Hessian ("opt.<C>.exact.*", max |grad| ~1e-16):
scikit-learn's own ftol (64 eps) stops it short of the optimum, by up to 1.8e-5 relative here.

Also: K = 2 (the first two classes), where scikit-learn fits the binomial model (one coef row),
at C = 1.

Usage (from the repo root):  python3 scripts/make_linear_probe_fixture.py
Needs: numpy, scikit-learn (>= 1.1), safetensors. Deterministic.
"""

import json
import os
import warnings

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from fixture_files import canonical_header

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "fixtures", "linear_probe")

K, D = 5, 16
R, MEAN_STD = 6, 0.8  # rank of the features' affine span; spread of the class means
N_TRAIN, N_VAL, N_TEST = 16, 4, 20  # per class
SEED = 2  # chosen so the search's rounds include left wins, right wins and ties
GRID = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
STEPS = 8
MAX_ITER = 1000
OPT_CS = [("1e-2", 1e-2), ("1", 1.0), ("1e2", 1e2)]
TIGHT = dict(tol=1e-10, max_iter=100000)


def make_data():
    rng = np.random.default_rng(SEED)
    means = rng.normal(0.0, MEAN_STD, size=(K, R))
    # Real CLIP features concentrate in few directions; a rank-R map keeps 80 samples of D = 16
    # from being linearly separable (full-rank Gaussians of this size always are).
    mix = rng.normal(0.0, 1.0, size=(D, R)) / np.sqrt(R)
    offset = rng.normal(0.0, 0.4, size=D)
    offset[3] = 2.5  # and a few large, nearly constant dimensions

    def split(n):
        z = means[:, None, :] + rng.normal(0.0, 1.0, size=(K, n, R))
        x = offset + z.reshape(K * n, R) @ mix.T
        y = np.repeat(np.arange(K), n)
        return x, y

    return split(N_TRAIN), split(N_VAL), split(N_TEST)


def fit(x, y, c, **kw):
    args = dict(solver="lbfgs", max_iter=MAX_ITER, C=c)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # penalty="l2" is scikit-learn's default; passing it is deprecated from 1.8 on.
        clf = LogisticRegression(**args).fit(x, y)
    assert clf.n_iter_[0] < args["max_iter"], (c, clf.n_iter_)
    return clf


def objective_grad(x, y, k, coef, intercept, c):
    """Value and gradient (W, b) of the objective above, in float64."""
    n = x.shape[0]
    z = x @ coef.T + intercept
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    p = np.exp(z - lse[:, None])
    lam = 1.0 / (c * n)
    f = (lse - z[np.arange(n), y]).mean() + 0.5 * lam * (coef**2).sum()
    p[np.arange(n), y] -= 1.0
    return f, p.T @ x / n + lam * coef, p.sum(axis=0) / n


def newton_polish(x, y, k, coef, intercept, c, steps=3):
    """Newton steps on the objective (its Hessian is small here), to measure how far the
    tight scikit-learn fit is from the exact optimum. The pseudo-inverse handles the flat
    direction (adding a constant to every intercept)."""
    n, d = x.shape
    xt = np.hstack([x, np.ones((n, 1))])
    lam = 1.0 / (c * n)
    theta = np.hstack([coef, intercept[:, None]])
    for _ in range(steps):
        _, gw, gb = objective_grad(x, y, k, theta[:, :d], theta[:, d], c)
        g = np.hstack([gw, gb[:, None]]).reshape(-1)
        p = softmax(xt @ theta.T)
        h = np.zeros((k * (d + 1), k * (d + 1)))
        for i in range(n):
            a = np.diag(p[i]) - np.outer(p[i], p[i])
            h += np.kron(a, np.outer(xt[i], xt[i]))
        h /= n
        reg = np.tile(np.append(np.full(d, lam), 0.0), k)
        h += np.diag(reg)
        theta = theta - (np.linalg.pinv(h, rcond=1e-13) @ g).reshape(k, d + 1)
    return theta[:, :d], theta[:, d]


def softmax(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def accuracy(clf, x, y):
    return float(np.sum(clf.predict(x) == y) / len(y))


def official_search(tx, ty, vx, vy):
    grid_acc = [accuracy(fit(tx, ty, c), vx, vy) for c in GRID]
    best = GRID[int(np.argmax(grid_acc))]
    c_left, c_right = 1e-1 * best, 1e1 * best
    rounds, clf_final = [], None
    for _ in range(STEPS):
        left, right = fit(tx, ty, c_left), fit(tx, ty, c_right)
        acc_left, acc_right = accuracy(left, vx, vy), accuracy(right, vx, vy)
        rounds.append({"c_left": float(c_left), "c_right": float(c_right),
                       "acc_left": acc_left, "acc_right": acc_right,
                       "n_iter_left": int(left.n_iter_[0]),
                       "n_iter_right": int(right.n_iter_[0])})
        if acc_left < acc_right:
            c_final, clf_final = c_right, right
            lo, hi = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final, clf_final = c_left, left
            lo, hi = np.log10(c_left), 0.5 * (np.log10(c_right) + np.log10(c_left))
        rounds[-1]["winner"] = float(c_final)
        c_left, c_right = np.power(10, lo), np.power(10, hi)
    return grid_acc, rounds, float(c_final), clf_final


def main():
    (tx, ty), (vx, vy), (sx, sy) = make_data()
    tensors = {
        "train_x": tx, "train_y": ty.astype(np.int64),
        "val_x": vx, "val_y": vy.astype(np.int64),
        "test_x": sx, "test_y": sy.astype(np.int64),
    }
    meta = {
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "k": str(K), "d": str(D), "seed": str(SEED),
        "opt_cs": json.dumps([name for name, _ in OPT_CS]),
        "opt_tol": repr(TIGHT["tol"]), "opt_max_iter": str(TIGHT["max_iter"]),
    }
    print(f"sklearn {sklearn.__version__}, |x| mean {np.linalg.norm(tx, axis=1).mean():.2f}")

    # Every grid C must converge within the official max_iter (fit() asserts it).
    for c in GRID:
        clf = fit(tx, ty, c)
        print(f"    grid C={c:g}: n_iter {clf.n_iter_[0]}, train acc {accuracy(clf, tx, ty):.3f}")
    # Not linearly separable: even the weakest penalty leaves training errors.
    assert accuracy(fit(tx, ty, 1e6), tx, ty) < 1.0

    for name, c in OPT_CS:
        clf = fit(tx, ty, c, **TIGHT)
        f, gw, gb = objective_grad(tx, ty, K, clf.coef_, clf.intercept_, c)
        gmax = max(np.abs(gw).max(), np.abs(gb).max())
        pw, pb = newton_polish(tx, ty, K, clf.coef_, clf.intercept_, c)
        _, pgw, pgb = objective_grad(tx, ty, K, pw, pb, c)
        dist = np.abs(np.hstack([pw - clf.coef_, (pb - clf.intercept_)[:, None]])).max()
        scale = np.abs(np.hstack([pw, pb[:, None]])).max()
        tensors[f"opt.{name}.coef"] = clf.coef_
        tensors[f"opt.{name}.intercept"] = clf.intercept_
        tensors[f"opt.{name}.test_proba"] = clf.predict_proba(sx)
        tensors[f"opt.{name}.exact.coef"] = pw
        tensors[f"opt.{name}.exact.intercept"] = pb
        tensors[f"opt.{name}.exact.test_proba"] = softmax(sx @ pw.T + pb)
        meta[f"opt.{name}.n_iter"] = str(int(clf.n_iter_[0]))
        meta[f"opt.{name}.objective"] = repr(float(f))
        meta[f"opt.{name}.grad_max"] = repr(float(gmax))
        meta[f"opt.{name}.newton_rel_dist"] = repr(float(dist / scale))
        print(f"    optimum C={name}: n_iter {clf.n_iter_[0]}, f {f:.15g}, max|grad| {gmax:.1e}, "
              f"Newton polish moves it by {dist / scale:.1e} (rel; polished max|grad| "
              f"{max(np.abs(pgw).max(), np.abs(pgb).max()):.1e}), sum(intercept) "
              f"{clf.intercept_.sum():.1e}")

    grid_acc, rounds, c_final, clf = official_search(tx, ty, vx, vy)
    tensors["search.coef"] = clf.coef_
    tensors["search.intercept"] = clf.intercept_
    tensors["search.test_proba"] = clf.predict_proba(sx)
    meta["search.grid"] = json.dumps(GRID)
    meta["search.grid_acc"] = json.dumps(grid_acc)
    meta["search.rounds"] = json.dumps(rounds)
    meta["search.c"] = repr(c_final)
    meta["search.test_acc"] = repr(accuracy(clf, sx, sy))
    print(f"    search: grid acc {grid_acc}")
    for r in rounds:
        print(f"      [{r['c_left']:.6g}, {r['c_right']:.6g}] acc {r['acc_left']:.2f} / "
              f"{r['acc_right']:.2f} -> {r['winner']:.6g} (n_iter {r['n_iter_left']}, "
              f"{r['n_iter_right']})")
    print(f"    chosen C {c_final!r}, test acc {accuracy(clf, sx, sy):.3f}")

    # K = 2: scikit-learn's binomial model (coef_ (1, D): class 1 minus class 0).
    bt, bs = ty < 2, sy < 2
    clf = fit(tx[bt], ty[bt], 1.0, **TIGHT)
    tensors["binary.coef"] = clf.coef_
    tensors["binary.intercept"] = clf.intercept_
    tensors["binary.test_proba"] = clf.predict_proba(sx[bs])
    meta["binary.n_iter"] = str(int(clf.n_iter_[0]))
    print(f"    binary C=1: n_iter {clf.n_iter_[0]}")

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (np.float64, np.int64), (k, v.dtype)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "sklearn.safetensors")
    save_file(tensors, path, metadata=meta)
    canonical_header(path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
