"""Paper-scale GP prior benchmark: the sampler's per-iteration update, and scikit-learn.

Prints one JSON object:

* ``update_seconds``: wall time of one steady-state update as the sampler runs it every iteration
  (``fit_indices`` on all observations so far, then ``predict_all``: mu and sigma for all 146,000
  concepts, 384-d), fixed kernel hyperparameters, the minimum over ``--repeats`` consecutive
  updates that each add ``--batch`` (256) queries drawn from the paper's sampling distribution
  over the previous update's mu + sigma, ending at ``--observations`` (10,000); the median, every
  value, the CPU time and the concept x basis columns each update had to compute are listed too.
  ``setup_seconds`` is ``set_vocabulary``; ``first_update_seconds`` is the cold first update, which
  also chooses the fixed inducing concepts and fills the concept x basis cache (one-time costs, in
  no other figure). ``update_seconds_fitted_hyperparameters`` is the same update with the kernel
  hyperparameters refitted by marginal likelihood every time (the sampler's default).
* ``speedup_vs_sklearn``: scikit-learn's exact ``GaussianProcessRegressor(optimizer=None)`` with the
  same kernel and hyperparameters against ``GPPrior`` (default ``auto`` method) on the same
  ``compare_observations`` observations, both predicting mu and std over all concepts. Ours is
  timed cold, from ``set_vocabulary`` on (every one-time cost included);
  ``speedup_vs_sklearn_update`` uses the steady-state update instead (a GP that had seen all but
  the last ``--batch`` of those observations). ``max_abs_dmu``, ``max_abs_dsigma``,
  ``spearman_ucb`` (Spearman of mu + sigma for never-queried concepts, mu for queried ones) and
  ``top250_overlap`` measure the agreement; ``warm_vs_cold_max_abs_diff`` checks that the cached
  update gives the cold numbers.

The embeddings are a synthetic stand-in for all-MiniLM-L6-v2 WordNet concept embeddings, fitted to
the shipped embedded vocabulary: mean pairwise cosine ~0.09, median nearest-neighbour cosine
~0.66 (in 2,566 concepts), and the same RBF-kernel eigenvalue profile (top-256 eigenvalues carry
~58% of the trace at length scale 0.7). Rewards are a smooth function of the embedding plus noise.
Timings on a shared machine are noisy: compare figures from one run, and read them with
``load_average_1min``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ie_env.checkout import use_checkout_names  # noqa: E402

use_checkout_names()

from ie_agents.gp_prior import GPPrior, GPPriorConfig  # noqa: E402
from ie_agents.gp_sampler import tiered_distribution  # noqa: E402


def synthetic_embeddings(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """Unit vectors: shared direction + 40 themes + 4,000 clusters + private part, with an
    exponentially decaying spectrum (scale e^(-i/120) over the 384 axes)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = np.exp(-np.arange(d) / 120.0)
    scale /= np.sqrt((scale**2).mean())

    def draw(k: int) -> np.ndarray:
        return ((rng.standard_normal((k, d)) * scale) @ Q.T / np.sqrt(d)).astype(np.float32)

    common = draw(1)[0]
    common /= np.linalg.norm(common)
    themes = draw(40)
    themes /= np.linalg.norm(themes, axis=1, keepdims=True)
    clusters = themes[rng.integers(40, size=4000)] + 0.8 * draw(4000)
    X = 0.5 * common + clusters[rng.integers(4000, size=n)] + 0.8 * draw(n)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def synthetic_reward(X: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    targets = X[rng.choice(len(X), 4, replace=False)]
    return 0.2 + 0.3 * np.exp(((X @ targets.T).max(1) - 1.0) / 0.3)


def sampler_scores(mu: np.ndarray, sd: np.ndarray, queried: np.ndarray) -> np.ndarray:
    """The sampler's r: mu + sigma for never-queried concepts, mu for queried ones."""
    return np.where(queried, mu, mu + sd)


def steady_state(
    gp_cls: Any, cfg: Any, X: np.ndarray, f: np.ndarray, observations: int, batch: int, repeats: int, seed: int = 3
) -> dict[str, Any]:
    """Cold first update on ``observations - repeats * batch`` uniform queries, then ``repeats``
    timed updates, each adding ``batch`` queries drawn from the paper's distribution (SMR 3, tiers
    250 / 750 with masses 0.8 / 0.1 / 0.1) over the previous update's scores."""
    rng = np.random.default_rng(seed)
    N = X.shape[0]
    noise = 0.3 * f.std()
    obs = rng.integers(N, size=observations - repeats * batch)
    y = f[obs] + noise * rng.standard_normal(obs.size)
    gp = gp_cls(cfg)
    t0 = time.perf_counter()
    gp.set_vocabulary(X)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    gp.fit_indices(obs, y)
    mu, sd = gp.predict_all()
    first = time.perf_counter() - t0
    walls, cpus, cols = [], [], []
    for _ in range(repeats):
        queried = np.zeros(N, dtype=bool)
        queried[obs] = True
        p, _ = tiered_distribution(sampler_scores(mu, sd, queried), 3.0, (250, 750), (0.8, 0.1, 0.1))
        new = rng.choice(N, size=batch, p=p)
        obs = np.concatenate([obs, new])
        y = np.concatenate([y, f[new] + noise * rng.standard_normal(batch)])
        store = getattr(gp, "_store", None)
        c_before = store.columns_computed if store is not None else 0
        t0, c0 = time.perf_counter(), time.process_time()
        gp.fit_indices(obs, y)
        mu, sd = gp.predict_all()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        cols.append((store.columns_computed if store is not None else 0) - c_before)
    return {
        "setup_seconds": round(setup, 4),
        "first_update_seconds": round(first, 4),
        "update_seconds": round(min(walls), 4),
        "update_seconds_median": round(statistics.median(walls), 4),
        "update_seconds_all": [round(w, 3) for w in walls],
        "update_cpu_seconds": round(min(cpus), 4),
        "new_columns_per_update": cols,
        "method": gp.method_used,
        "distinct_observations": gp.n_distinct,
        "num_inducing": int(gp.inducing_rows.size),
        "hyperparameters_after": {k: round(v, 5) for k, v in gp.hyperparameters.items()},
    }


def compare_sklearn(
    gp_cls: Any, cfg_factory: Any, X: np.ndarray, f: np.ndarray, n: int, batch: int, args: Any, sk: Any = None
) -> tuple[dict[str, Any], Any]:
    """scikit-learn's exact GP against ours on ``n`` uniform distinct observations (all concepts).
    ``sk`` = a previous ``(seconds, mu, sd, obs, y)`` to reuse (same data)."""
    from scipy.stats import spearmanr

    N = X.shape[0]
    if sk is None:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel

        rng = np.random.default_rng(4)
        obs = rng.choice(N, size=n, replace=False)
        y = f[obs] + 0.3 * f.std() * rng.standard_normal(n)
        kernel = ConstantKernel(args.signal_variance, "fixed") * RBF(args.length_scale, "fixed")
        t0 = time.perf_counter()
        reg = GaussianProcessRegressor(kernel=kernel, alpha=args.noise_variance, optimizer=None, normalize_y=True)
        reg.fit(X[obs].astype(np.float64), y)
        mu0 = np.empty(N)
        sd0 = np.empty(N)
        for s in range(0, N, 20_000):  # chunks only bound the memory
            mu0[s : s + 20_000], sd0[s : s + 20_000] = reg.predict(X[s : s + 20_000], return_std=True)
        sk = (time.perf_counter() - t0, mu0, sd0, obs, y)
    t_sk, mu0, sd0, obs, y = sk
    colds = []
    for _ in range(2):
        t0 = time.perf_counter()
        cold = gp_cls(cfg_factory())
        cold.set_vocabulary(X)
        cold.fit_indices(obs, y)
        mu1, sd1 = cold.predict_all()
        colds.append(time.perf_counter() - t0)
    warm = gp_cls(cfg_factory())
    warm.set_vocabulary(X)
    warm.fit_indices(obs[: n - batch], y[: n - batch])
    warm.predict_all()
    t0 = time.perf_counter()
    warm.fit_indices(obs, y)
    mu2, sd2 = warm.predict_all()
    t_upd = time.perf_counter() - t0
    queried = np.zeros(N, dtype=bool)
    queried[obs] = True
    ucb0 = sampler_scores(mu0, sd0, queried)
    ucb1 = sampler_scores(mu1, sd1, queried)
    top0, top1 = set(np.argsort(-ucb0)[:250]), set(np.argsort(-ucb1)[:250])
    out = {
        "compare_observations": n,
        "compare_concepts": N,
        "compare_method": cold.method_used,
        "compare_num_inducing": int(cold.inducing_rows.size),
        "sklearn_seconds": round(t_sk, 3),
        "ours_seconds": round(min(colds), 4),
        "ours_update_seconds": round(t_upd, 4),
        "speedup_vs_sklearn": round(t_sk / min(colds), 2),
        "speedup_vs_sklearn_update": round(t_sk / t_upd, 2),
        "max_abs_dmu": float(np.abs(mu1 - mu0).max()),
        "mu_range": float(np.ptp(mu0)),
        "max_abs_dsigma": float(np.abs(sd1 - sd0).max()),
        "sigma_range": [float(sd0.min()), float(sd0.max())],
        "spearman_ucb": float(spearmanr(ucb0, ucb1)[0]),
        "top250_overlap": len(top0 & top1) / 250,
        "warm_vs_cold_max_abs_diff": float(max(np.abs(mu2 - mu1).max(), np.abs(sd2 - sd1).max())),
    }
    return out, sk


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concepts", type=int, default=146_000)
    ap.add_argument("--observations", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256, help="queries per sampler iteration")
    ap.add_argument("--compare-observations", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=5, help="timed steady-state updates")
    ap.add_argument("--length-scale", type=float, default=0.9)
    ap.add_argument("--signal-variance", type=float, default=1.0)
    ap.add_argument("--noise-variance", type=float, default=0.05)
    ap.add_argument("--num-inducing", type=int, default=None, help="default: GPPriorConfig's")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--skip-fitted", action="store_true", help="skip the run with hyperparameter fitting")
    args = ap.parse_args(argv)

    X = synthetic_embeddings(args.concepts)
    f = synthetic_reward(X)
    hp = dict(
        length_scale=args.length_scale,
        signal_variance=args.signal_variance,
        noise_variance=args.noise_variance,
        fit_hyperparameters=False,
    )
    if args.num_inducing is not None:
        hp["num_inducing"] = args.num_inducing
    out: dict[str, object] = {
        "concepts": args.concepts,
        "dim": int(X.shape[1]),
        "observations": args.observations,
        "batch": args.batch,
        "hyperparameters": {k: hp[k] for k in ("length_scale", "signal_variance", "noise_variance")},
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    out.update(steady_state(GPPrior, GPPriorConfig(**hp), X, f, args.observations, args.batch, args.repeats))
    if not args.skip_fitted:
        fitted = steady_state(
            GPPrior, GPPriorConfig(**{**hp, "fit_hyperparameters": True}), X, f, args.observations, args.batch, 2
        )
        out["update_seconds_fitted_hyperparameters"] = fitted["update_seconds"]
        out["fitted_hyperparameters"] = fitted["hyperparameters_after"]
    if not args.skip_sklearn:
        cmp, _ = compare_sklearn(
            GPPrior, lambda: GPPriorConfig(**hp), X, f, args.compare_observations, args.batch, args
        )
        out.update(cmp)
    out["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
