"""Numerical checks of the GP prior: exact path against scikit-learn, FITC against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from agents.gp_prior import GPPrior, GPPriorConfig, aggregated_log_marginal_likelihood


def unit_vectors(n: int, d: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Clustered unit vectors, a little like sentence embeddings (shared direction + themes)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    centers = rng.standard_normal((clusters, d))
    X = 0.5 * common / np.sqrt(d) + centers[rng.integers(clusters, size=n)] / np.sqrt(d)
    X += 0.7 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def sk_gp(ls: float, s2: float, noise: float, normalize_y: bool) -> GaussianProcessRegressor:
    kernel = ConstantKernel(s2, "fixed") * RBF(ls, "fixed")
    return GaussianProcessRegressor(kernel=kernel, alpha=noise, optimizer=None, normalize_y=normalize_y)


def fixed(**kw) -> GPPriorConfig:
    base = dict(fit_hyperparameters=False, method="exact", dtype="float64")
    base.update(kw)
    return GPPriorConfig(**base)


@pytest.mark.parametrize("normalize_y", [True, False])
def test_exact_matches_sklearn(normalize_y: bool) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 6))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] ** 2 + 0.05 * rng.standard_normal(60)
    Xt = rng.standard_normal((40, 6))
    ls, s2, noise = 1.7, 1.3, 0.05
    ref = sk_gp(ls, s2, noise, normalize_y).fit(X, y)
    mu_ref, sd_ref = ref.predict(Xt, return_std=True)
    gp = GPPrior(fixed(length_scale=ls, signal_variance=s2, noise_variance=noise, normalize_y=normalize_y))
    mu, sd = gp.fit(X, y).predict(Xt, return_std=True)
    assert gp.method_used == "exact"
    np.testing.assert_allclose(mu, mu_ref, atol=1e-5)
    np.testing.assert_allclose(sd, sd_ref, atol=1e-5)
    # float32 products agree to float32 precision
    gp32 = GPPrior(fixed(length_scale=ls, signal_variance=s2, noise_variance=noise, normalize_y=normalize_y, dtype="float32"))
    mu32, sd32 = gp32.fit(X, y).predict(Xt)
    np.testing.assert_allclose(mu32, mu_ref, atol=2e-4)
    np.testing.assert_allclose(sd32, sd_ref, atol=2e-4)


def test_repeats_are_aggregated_exactly() -> None:
    """Repeated inputs (mean with noise / count) give sklearn's posterior on the raw data."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((25, 4))
    idx = rng.integers(25, size=70)
    X, y = base[idx], np.cos(base[idx, 0]) + 0.2 * rng.standard_normal(70)
    ref = sk_gp(1.2, 0.8, 0.1, True).fit(X, y)
    Xt = rng.standard_normal((30, 4))
    mu_ref, sd_ref = ref.predict(Xt, return_std=True)
    gp = GPPrior(fixed(length_scale=1.2, signal_variance=0.8, noise_variance=0.1))
    mu, sd = gp.fit(X, y).predict(Xt)
    assert gp.n_distinct == len(np.unique(idx)) and gp.n_observations == 70
    np.testing.assert_allclose(mu, mu_ref, atol=1e-5)
    np.testing.assert_allclose(sd, sd_ref, atol=1e-5)
    # the same through vocabulary indices
    gv = GPPrior(fixed(length_scale=1.2, signal_variance=0.8, noise_variance=0.1))
    gv.set_vocabulary(base)
    mu_v, sd_v = gv.fit_indices(idx, y).predict_all()
    mu_b, sd_b = ref.predict(base, return_std=True)
    np.testing.assert_allclose(mu_v, mu_b, atol=1e-5)
    np.testing.assert_allclose(sd_v, sd_b, atol=1e-5)


def test_aggregated_likelihood_equals_raw_likelihood() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((12, 3))
    idx = rng.integers(12, size=40)
    idx[:12] = np.arange(12)
    y = base[idx, 0] + 0.3 * rng.standard_normal(40)
    ls, s2, noise = 0.9, 1.1, 0.2
    raw = sk_gp(ls, s2, noise, False).fit(base[idx], y).log_marginal_likelihood_value_
    counts = np.bincount(idx, minlength=12).astype(float)
    ybar = np.bincount(idx, weights=y, minlength=12) / counts
    scatter = float(((y - ybar[idx]) ** 2).sum())
    B = torch.from_numpy(base)
    d2 = torch.cdist(B, B) ** 2
    agg = aggregated_log_marginal_likelihood(
        d2, torch.from_numpy(ybar), torch.from_numpy(counts), scatter, ls, s2, noise
    )
    assert float(agg) == pytest.approx(raw, abs=1e-8)


def test_hyperparameter_fit_reaches_sklearn_optimum() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((80, 3))
    y = np.sin(1.5 * X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.standard_normal(80)
    gp = GPPrior(GPPriorConfig(method="exact", dtype="float64", fit_steps=50, length_scale=1.0))
    gp.fit(X, y)
    hp = gp.hyperparameters
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(1.0, (0.05, 20.0)) + WhiteKernel(0.1, (1e-5, 10.0))
    sk = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0).fit(X, y)
    ours = GPPrior(fixed(**hp)).log_marginal_likelihood(X, y)
    start = GPPrior(fixed()).log_marginal_likelihood(X, y)
    assert ours > start + 1.0
    assert ours >= sk.log_marginal_likelihood_value_ - 1e-3 * abs(sk.log_marginal_likelihood_value_)


def test_fitc_with_every_input_inducing_is_exact() -> None:
    X = unit_vectors(300, 32, seed=4)
    rng = np.random.default_rng(4)
    obs = rng.choice(300, 120, replace=False)
    y = X[obs, 0] + 0.05 * rng.standard_normal(120)
    cfg = dict(length_scale=0.8, noise_variance=0.05)
    ex = GPPrior(fixed(**cfg))
    ex.set_vocabulary(X)
    mu0, sd0 = ex.fit_indices(obs, y).predict_all()
    ap = GPPrior(fixed(method="fitc", num_inducing=500, **cfg))
    ap.set_vocabulary(X)
    mu1, sd1 = ap.fit_indices(obs, y).predict_all()
    assert ap.method_used == "fitc" and ap.inducing_rows.size == 120
    np.testing.assert_allclose(mu1, mu0, atol=1e-4)
    np.testing.assert_allclose(sd1, sd0, atol=1e-4)


def test_fitc_agrees_with_exact_at_moderate_size() -> None:
    """FITC (256 inducing of 1,200 distinct observations) against the exact GP over 4,000 inputs."""
    X = unit_vectors(4000, 64, seed=5)
    rng = np.random.default_rng(5)
    targets = X[rng.choice(4000, 3, replace=False)]
    f = 0.2 + 0.3 * np.exp(((X @ targets.T).max(1) - 1.0) / 0.3)
    obs = rng.choice(4000, 1200, replace=False)
    y = f[obs] + 0.1 * f.std() * rng.standard_normal(obs.size)
    cfg = dict(length_scale=0.9, noise_variance=0.05)
    ex = GPPrior(fixed(**cfg))
    ex.set_vocabulary(X)
    mu0, sd0 = ex.fit_indices(obs, y).predict_all()
    ap = GPPrior(GPPriorConfig(fit_hyperparameters=False, method="fitc", num_inducing=256, **cfg))
    ap.set_vocabulary(X)
    mu1, sd1 = ap.fit_indices(obs, y).predict_all()
    queried = np.zeros(4000, bool)
    queried[obs] = True
    ucb0, ucb1 = np.where(queried, mu0, mu0 + sd0), np.where(queried, mu1, mu1 + sd1)
    max_dmu = float(np.abs(mu1 - mu0).max())
    rho = float(spearmanr(ucb0, ucb1)[0])
    top0, top1 = set(np.argsort(-ucb0)[:250]), set(np.argsort(-ucb1)[:250])
    print(f"FITC m=256 vs exact (n=1200, N=4000): max|dmu|={max_dmu:.4f} "
          f"(mu range {np.ptp(mu0):.3f}), spearman(mu+sigma)={rho:.4f}, top-250 overlap={len(top0 & top1) / 250:.2f}")
    assert ap.method_used == "fitc" and ap.inducing_rows.size == 256
    assert max_dmu < 0.15 * np.ptp(mu0)
    assert rho > 0.95
    assert len(top0 & top1) / 250 > 0.8
    # FITC never claims more certainty than the prior, and is exact-like at its training inputs
    assert np.all(sd1 <= np.sqrt(ap.signal_variance) * ap._y_scale + 1e-9)
    assert np.abs(mu1 - mu0)[queried].max() < 0.05 * np.ptp(mu0)


def test_auto_switches_to_fitc_when_exact_is_expensive() -> None:
    X = unit_vectors(2000, 16, seed=6)
    y = X[:, 0].astype(np.float64)
    gp = GPPrior(GPPriorConfig(fit_hyperparameters=False, num_inducing=64, exact_max_points=500))
    gp.set_vocabulary(X)
    gp.fit_indices(np.arange(400), y[:400])
    assert gp.method_used == "exact"
    gp.fit_indices(np.arange(800), y[:800])
    assert gp.method_used == "fitc" and gp.inducing_rows.size == 64
    mu, sd = gp.predict_all()
    assert np.all(np.isfinite(mu)) and np.all(sd >= 0)


def test_prior_far_from_data_and_before_any_data() -> None:
    gp = GPPrior(fixed(length_scale=0.3, signal_variance=2.0, normalize_y=False))
    mu, sd = gp.predict(np.zeros((3, 2)))
    np.testing.assert_allclose(sd, np.sqrt(2.0))
    np.testing.assert_allclose(mu, 0.0)
    gp.fit(np.zeros((5, 2)), np.ones(5))
    mu, sd = gp.predict(np.full((1, 2), 50.0))
    assert sd[0] == pytest.approx(np.sqrt(2.0), rel=1e-9) and mu[0] == pytest.approx(0.0, abs=1e-12)
    mu_near, sd_near = gp.predict(np.zeros((1, 2)))
    assert sd_near[0] < 0.5 and mu_near[0] > 0.9


def test_bad_input_gives_clear_errors() -> None:
    gp = GPPrior(fixed())
    with pytest.raises(ValueError, match="NaN"):
        gp.fit(np.zeros((2, 3)), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="rows"):
        gp.fit(np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        gp.fit(np.zeros(3), np.ones(3))
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        gp.predict_all()
    gp.set_vocabulary(np.eye(3))
    with pytest.raises(ValueError, match="indices"):
        gp.fit_indices(np.array([0, 3]), np.ones(2))
    with pytest.raises(ValueError, match="dimension"):
        gp.fit(np.zeros((2, 4)), np.ones(2))
    with pytest.raises(ValueError, match="length_scale"):
        GPPriorConfig(length_scale=-1.0)
