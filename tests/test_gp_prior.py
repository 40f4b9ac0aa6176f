"""Numerical checks of the GP prior: exact path against scikit-learn, FITC against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from ie_agents.gp_prior import (
    GPPrior,
    GPPriorConfig,
    _aggregated_mll_and_grad,
    aggregated_log_marginal_likelihood,
)


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


def test_closed_form_likelihood_gradient_matches_autograd() -> None:
    rng = np.random.default_rng(8)
    base = rng.standard_normal((30, 5))
    idx = rng.integers(30, size=70)
    idx[:30] = np.arange(30)
    y = np.sin(base[idx, 0]) + 0.3 * rng.standard_normal(70)
    counts = torch.from_numpy(np.bincount(idx, minlength=30).astype(float))
    ybar = torch.from_numpy(np.bincount(idx, weights=y, minlength=30)) / counts
    scatter = float(((y - ybar.numpy()[idx]) ** 2).sum())
    B = torch.from_numpy(base)
    d2 = torch.cdist(B, B) ** 2
    theta = torch.tensor([1.3, 0.7, 0.15], dtype=torch.float64, requires_grad=True)
    ref = aggregated_log_marginal_likelihood(d2, ybar, counts, scatter, *theta, jitter=1e-6)
    ref.backward()
    mll, grad = _aggregated_mll_and_grad(d2, ybar, counts, scatter, 1.3, 0.7, 0.15, jitter=1e-6)
    assert float(mll) == pytest.approx(float(ref.detach()), abs=1e-10)
    np.testing.assert_allclose(grad.numpy(), theta.grad.numpy(), rtol=1e-8, atol=1e-10)


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
    # every observed concept is inducing (the top-reward share covers all 120; fixed vocabulary
    # picks come on top), so FITC's conditional independence is exact
    assert ap.method_used == "fitc" and set(obs.tolist()) <= set(ap.inducing_rows.tolist())
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


def _sampler_like_history(N: int, seed: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Queries with repeats, later ones concentrated on the best concepts (as the sampler's)."""
    rng = np.random.default_rng(seed)
    X = unit_vectors(N, 48, seed=seed)
    f = 0.2 + 0.3 * np.exp((X @ X[rng.integers(N)] - 1.0) / 0.3)
    obs = rng.integers(N, size=sizes[0])
    for k in sizes[1:]:
        p = np.exp((f - f.max()) / 0.02)
        obs = np.concatenate([obs, rng.choice(N, size=k - obs.size, p=p / p.sum())])
    return X, (obs, f[obs] + 0.02 * rng.standard_normal(obs.size))


def test_cached_exact_path_matches_sklearn() -> None:
    """Small n: the exact GP through the concept x basis cache (float32 products) is sklearn's."""
    X = unit_vectors(3000, 64, seed=10)
    rng = np.random.default_rng(10)
    idx = rng.integers(3000, size=300)  # repeats aggregated
    y = X[idx, 0] + 0.1 * X[idx, 1] ** 2 + 0.02 * rng.standard_normal(300)
    gp = GPPrior(GPPriorConfig(fit_hyperparameters=False, length_scale=0.8, noise_variance=0.05))
    gp.set_vocabulary(X)
    mu, sd = gp.fit_indices(idx, y).predict_all()
    assert gp.method_used == "exact" and gp._store.columns_computed == np.unique(idx).size
    mu_ref, sd_ref = sk_gp(0.8, 1.0, 0.05, True).fit(X[idx].astype(np.float64), y).predict(X, return_std=True)
    scale = y.std()
    assert np.abs(mu - mu_ref).max() < 2e-4 * scale
    assert np.abs(sd - sd_ref).max() < 2e-4 * scale
    # sigma: smallest at the observed concepts, never above the prior
    observed = np.zeros(3000, bool)
    observed[idx] = True
    prior_sd = np.sqrt(gp.signal_variance) * gp._y_scale
    assert np.all(sd <= prior_sd * (1 + 1e-6))
    assert sd[observed].max() < 0.5 * prior_sd < np.median(sd[~observed])


@pytest.mark.parametrize("method", ["exact", "fitc", "dtc"])
def test_cached_prediction_equals_direct_prediction(method: str) -> None:
    """predict_all (cached distances, triangular panels) = predict on the same rows (direct kernel,
    full C) at unobserved concepts, to float32 precision; the cache off gives the same numbers."""
    X, (obs, y) = _sampler_like_history(2500, 11, (400, 700))
    cfg = dict(fit_hyperparameters=False, method=method, num_inducing=300, length_scale=0.7)
    gp = GPPrior(GPPriorConfig(**cfg))
    gp.set_vocabulary(X)
    mu, sd = gp.fit_indices(obs, y).predict_all()
    assert gp._basis_vocab is not None and gp.method_used == method
    rest = np.setdiff1d(np.arange(2500), obs)
    mu_d, sd_d = gp.predict(X[rest])
    tol = 1e-4 * y.std()
    assert np.abs(mu[rest] - mu_d).max() < tol and np.abs(sd[rest] - sd_d).max() < tol
    off = GPPrior(GPPriorConfig(**cfg, cache_max_bytes=0))
    off.set_vocabulary(X)
    mu_o, sd_o = off.fit_indices(obs, y).predict_all()
    assert off._store.columns_computed == 0
    assert np.abs(mu - mu_o).max() < tol and np.abs(sd - sd_o).max() < tol


def test_warm_cache_gives_the_cold_numbers_and_reuses_columns() -> None:
    """A GP refit iteration after iteration (columns reused, slots in history order) predicts what
    a fresh GP fit once on the same observations predicts; only new basis concepts cost a column."""
    X, (obs, y) = _sampler_like_history(3000, 12, (500, 700, 900, 1100, 1300))
    cfg = dict(fit_hyperparameters=False, method="fitc", num_inducing=200, length_scale=0.7)
    warm = GPPrior(GPPriorConfig(**cfg))
    warm.set_vocabulary(X)
    previous = None
    for n in (500, 700, 900, 1100, 1300):
        before = warm._store.columns_computed
        warm.fit_indices(obs[:n], y[:n])
        mu_w, sd_w = warm.predict_all()
        basis = set(warm.inducing_rows.tolist())
        assert warm.method_used == "fitc" and len(basis) == 200
        if previous is not None:  # one column per concept that entered the basis, no more
            assert warm._store.columns_computed - before == len(basis - previous)
        previous = basis
    cold = GPPrior(GPPriorConfig(**cfg))
    cold.set_vocabulary(X)
    mu_c, sd_c = cold.fit_indices(obs, y).predict_all()
    np.testing.assert_array_equal(warm.inducing_rows, cold.inducing_rows)
    np.testing.assert_allclose(mu_w, mu_c, rtol=0, atol=1e-6 * y.std())
    np.testing.assert_allclose(sd_w, sd_c, rtol=0, atol=1e-6 * y.std())
    # half the inducing concepts are fixed per vocabulary, half are the best observations
    fixed = warm._fixed_vocab_inducing(100)
    assert set(fixed.tolist()) <= set(warm.inducing_rows.tolist())


def test_hyperparameter_changes_reuse_the_cache() -> None:
    """A new length scale costs no column (the cache holds distances); the fixed inducing concepts
    depend on the length scale only through its bucket (a function of l, not of the history)."""
    X, (obs, y) = _sampler_like_history(2000, 13, (900,))
    gp = GPPrior(GPPriorConfig(fit_hyperparameters=False, num_inducing=120, length_scale=0.7))
    gp.set_vocabulary(X)
    mu0, _ = gp.fit_indices(obs, y).predict_all()
    cols, fixed = gp._store.columns_computed, gp._fixed_vocab_inducing(60)
    gp.length_scale = 0.75  # same bucket: same basis, no column
    mu1, sd1 = gp.fit_indices(obs, y).predict_all()
    assert gp._store.columns_computed == cols and not np.allclose(mu0, mu1)
    ref = GPPrior(GPPriorConfig(fit_hyperparameters=False, num_inducing=120, length_scale=0.75))
    ref.set_vocabulary(X)
    ref._fixed_inducing[(60, 0)] = fixed  # the bucket of 0.75 around config 0.75 is 0
    mu2, sd2 = ref.fit_indices(obs, y).predict_all()
    np.testing.assert_allclose(mu1, mu2, atol=1e-6 * y.std())
    gp.length_scale = 0.7 * 2.0  # another bucket: the fixed concepts are chosen again
    gp.fit_indices(obs, y)
    assert not np.array_equal(gp._fixed_vocab_inducing(60), fixed)


def test_fitc_sigma_behaviour_at_paper_like_scale() -> None:
    """FITC (cached) on 10,000 concepts: sigma shrinks at observed concepts and near them, returns
    the prior far away, and is never above it; the observed concepts' mu is exact-like."""
    X = unit_vectors(10_000, 64, seed=14)
    rng = np.random.default_rng(14)
    obs = rng.choice(10_000, 1500, replace=False)
    y = X[obs, 0] + 0.05 * rng.standard_normal(obs.size)
    gp = GPPrior(GPPriorConfig(fit_hyperparameters=False, method="fitc", num_inducing=256, length_scale=0.8))
    gp.set_vocabulary(X)
    mu, sd = gp.fit_indices(obs, y).predict_all()
    assert gp.method_used == "fitc"
    prior_sd = np.sqrt(gp.signal_variance) * gp._y_scale
    assert np.all(sd <= prior_sd * (1 + 1e-6))
    observed = np.zeros(10_000, bool)
    observed[obs] = True
    assert np.median(sd[observed]) < 0.8 * np.median(sd[~observed])
    far = np.full((1, X.shape[1]), 10.0)  # a point far from every concept
    assert gp.predict(far)[1][0] == pytest.approx(prior_sd, rel=1e-6)
    ex = GPPrior(fixed(length_scale=0.8))
    ex.set_vocabulary(X)
    mu_ex, _ = ex.fit_indices(obs, y).predict_all()
    assert np.abs(mu - mu_ex)[observed].max() < 0.1 * np.ptp(mu_ex)


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
