"""Paper-scale GP prior benchmark: one update (fit + mu, sigma over every concept) and scikit-learn.

Prints one JSON object:

* ``update_seconds``: wall time of ``fit_indices`` (10,000 observations) + ``predict_all``
  (146,000 concepts, 384-d), fixed kernel hyperparameters, median of ``--repeats`` runs;
  ``setup_seconds`` is the one-time ``set_vocabulary`` (not included).
* ``speedup_vs_sklearn``: scikit-learn's exact ``GaussianProcessRegressor(optimizer=None)`` with the
  same kernel against ``GPPrior`` (its default ``auto`` method) on the same ``compare_observations``
  observations, both predicting mu and std over all concepts; ``max_abs_dmu`` and ``spearman_ucb``
  (Spearman of mu + sigma for never-queried concepts, mu for queried ones) measure their agreement.

The embeddings are a synthetic stand-in for all-MiniLM-L6-v2 WordNet concept embeddings, fitted to
the shipped embedded vocabulary: mean pairwise cosine ~0.09, median nearest-neighbour cosine
~0.66 (in 2,566 concepts), and the same RBF-kernel eigenvalue profile (top-256 eigenvalues carry
~58% of the trace at length scale 0.7). Rewards are a smooth function of the embedding plus noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.gp_prior import GPPrior, GPPriorConfig  # noqa: E402


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concepts", type=int, default=146_000)
    ap.add_argument("--observations", type=int, default=10_000)
    ap.add_argument("--compare-observations", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--length-scale", type=float, default=0.9)
    ap.add_argument("--signal-variance", type=float, default=1.0)
    ap.add_argument("--noise-variance", type=float, default=0.05)
    ap.add_argument("--num-inducing", type=int, default=None, help="default: GPPriorConfig's")
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args(argv)

    X = synthetic_embeddings(args.concepts)
    f = synthetic_reward(X)
    rng = np.random.default_rng(2)
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
        "hyperparameters": {k: hp[k] for k in ("length_scale", "signal_variance", "noise_variance")},
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }

    gp = GPPrior(GPPriorConfig(**hp))
    t0 = time.perf_counter()
    gp.set_vocabulary(X)
    out["setup_seconds"] = round(time.perf_counter() - t0, 4)
    obs = rng.integers(args.concepts, size=args.observations)  # with repeats, as the sampler sees
    y = f[obs] + 0.3 * f.std() * rng.standard_normal(obs.size)
    walls, cpus = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        gp.fit_indices(obs, y)
        mu, sd = gp.predict_all()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out.update(
        update_seconds=round(statistics.median(walls), 4),
        update_seconds_all=[round(w, 3) for w in walls],
        update_cpu_seconds=round(statistics.median(cpus), 4),
        method=gp.method_used,
        distinct_observations=gp.n_distinct,
        num_inducing=int(gp.inducing_rows.size),
    )

    if not args.skip_sklearn:
        from scipy.stats import spearmanr
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel

        n = args.compare_observations
        obs = rng.choice(args.concepts, size=n, replace=False)
        y = f[obs] + 0.3 * f.std() * rng.standard_normal(n)
        kernel = ConstantKernel(args.signal_variance, "fixed") * RBF(args.length_scale, "fixed")
        t0 = time.perf_counter()
        sk = GaussianProcessRegressor(kernel=kernel, alpha=args.noise_variance, optimizer=None, normalize_y=True)
        sk.fit(X[obs].astype(np.float64), y)
        mu0 = np.empty(args.concepts)
        sd0 = np.empty(args.concepts)
        for s in range(0, args.concepts, 20_000):  # chunks only bound the memory
            mu0[s : s + 20_000], sd0[s : s + 20_000] = sk.predict(X[s : s + 20_000], return_std=True)
        t_sk = time.perf_counter() - t0
        ours = GPPrior(GPPriorConfig(**hp))
        ours.set_vocabulary(X)
        t0 = time.perf_counter()
        ours.fit_indices(obs, y)
        mu1, sd1 = ours.predict_all()
        t_ours = time.perf_counter() - t0
        queried = np.zeros(args.concepts, dtype=bool)
        queried[obs] = True
        ucb0 = np.where(queried, mu0, mu0 + sd0)
        ucb1 = np.where(queried, mu1, mu1 + sd1)
        top0, top1 = set(np.argsort(-ucb0)[:250]), set(np.argsort(-ucb1)[:250])
        out.update(
            compare_observations=n,
            compare_concepts=args.concepts,
            compare_method=ours.method_used,
            compare_num_inducing=int(ours.inducing_rows.size),
            sklearn_seconds=round(t_sk, 3),
            ours_seconds=round(t_ours, 4),
            speedup_vs_sklearn=round(t_sk / t_ours, 2),
            max_abs_dmu=float(np.abs(mu1 - mu0).max()),
            mu_range=float(np.ptp(mu0)),
            max_abs_dsigma=float(np.abs(sd1 - sd0).max()),
            spearman_ucb=float(spearmanr(ucb0, ucb1)[0]),
            top250_overlap=len(top0 & top1) / 250,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
