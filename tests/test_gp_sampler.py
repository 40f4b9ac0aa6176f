"""The paper's GP sampler, piece by piece: softmax, tiers, exploration bonus, batches, state."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from scipy.stats import chisquare

from ie_agents.base import AgentContext
from ie_agents.gp_prior import GPPrior
from ie_agents.gp_sampler import (
    GPSamplerAgent,
    GPSamplerConfig,
    label_set_candidates,
    tempered_softmax,
    tiered_distribution,
)

FAST_PRIOR = {"fit_hyperparameters": False, "length_scale": 0.8, "noise_variance": 0.05}


def embeddings(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d))
    X = centers[rng.integers(20, size=n)] + 0.6 * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def smooth_reward(X: np.ndarray, seed: int = 1) -> np.ndarray:
    t = X[np.random.default_rng(seed).integers(len(X))]
    return 0.2 + 0.5 * np.exp((X @ t - 1.0) / 0.3)


def run(agent: GPSamplerAgent, f: np.ndarray, M: int, iterations: int, noise_seed: int = 0) -> list[int]:
    """Drive ``agent`` like the env does: a query reward per step, iteration_closed every M steps."""
    rng = np.random.default_rng(noise_seed)
    out = []
    for _ in range(iterations):
        for k in range(M):
            a = agent.act(None, {})
            r = float(f[a] + 0.01 * rng.standard_normal())
            agent.observe(a, -1.0, None, {"query_reward": r, "iteration_closed": k == M - 1})
            out.append(a)
    return out


def test_tier_masses_are_exact() -> None:
    r = np.random.default_rng(0).standard_normal(5000)
    p, info = tiered_distribution(r, 3.0, (250, 750), (0.8, 0.1, 0.1))
    order = np.argsort(-r)
    assert abs(p.sum() - 1.0) < 1e-12
    assert abs(p[order[:250]].sum() - 0.8) < 1e-9
    assert abs(p[order[250:1000]].sum() - 0.1) < 1e-9
    assert abs(p[order[1000:]].sum() - 0.1) < 1e-9
    # within a tier, p follows the tempered softmax
    w = info["softmax"]
    top = order[:250]
    np.testing.assert_allclose(p[top] / p[top[0]], w[top] / w[top[0]], rtol=1e-12)


def test_softmax_ratio_is_e_to_the_smr() -> None:
    r = np.random.default_rng(1).uniform(-2.0, 5.0, size=777)
    for smr in (1.0, 3.0, 7.5):
        w, tau = tempered_softmax(r, smr)
        assert tau == pytest.approx((r.max() - r.min()) / smr)
        assert w.max() / w.min() == pytest.approx(math.exp(smr), rel=1e-12)
        assert w.max() / w.min() == pytest.approx(math.exp((r.max() - r.min()) / tau), rel=1e-12)
    w, tau = tempered_softmax(np.full(5, 0.3), 3.0)
    assert tau == math.inf and np.all(w == 1.0)


def test_tiers_renormalise_for_small_vocabularies() -> None:
    r = np.arange(600, dtype=float)
    p, info = tiered_distribution(r, 3.0, (250, 750), (0.8, 0.1, 0.1))
    assert abs(p[350:].sum() - 0.8 / 0.9) < 1e-12 and abs(p[:350].sum() - 0.1 / 0.9) < 1e-12
    assert list(info["tier_sizes"]) == [250, 350, 0]
    p, _ = tiered_distribution(np.arange(100.0), 3.0, (250, 750), (0.8, 0.1, 0.1))
    assert abs(p.sum() - 1.0) < 1e-12 and p[-1] / p[0] == pytest.approx(math.exp(3.0))


def test_first_iteration_is_uniform() -> None:
    N, M = 50, 20000
    agent = GPSamplerAgent(prior=FAST_PRIOR)
    agent.setup(AgentContext(concept_embeddings=embeddings(N), queries_per_iteration=M, seed=3))
    batch = [agent.act(None, {}) for _ in range(M)]
    counts = np.bincount(batch, minlength=N)
    assert chisquare(counts).pvalue > 1e-3
    assert agent.iteration == 1


def test_exploration_bonus_mu_plus_sigma_only_for_unqueried() -> None:
    X = embeddings(400)
    f = smooth_reward(X)
    agent = GPSamplerAgent(prior=FAST_PRIOR)
    agent.setup(AgentContext(concept_embeddings=X, queries_per_iteration=40, seed=0))
    run(agent, f, 40, 1)
    p, info = agent.sampling_distribution()
    queried = np.zeros(400, bool)
    queried[agent.actions] = True
    gp = GPPrior(agent.config.prior)
    gp.set_vocabulary(X)
    mu, sigma = gp.fit_indices(np.array(agent.actions), np.array(agent.rewards)).predict_all()
    np.testing.assert_allclose(info["mu"], mu, atol=1e-12)
    np.testing.assert_allclose(info["r"][queried], mu[queried], atol=1e-12)
    np.testing.assert_allclose(info["r"][~queried], (mu + sigma)[~queried], atol=1e-12)
    assert np.all(sigma[~queried] > 0)
    # without the bonus r = mu everywhere
    plain = GPSamplerAgent(prior=FAST_PRIOR, exploration_bonus=False)
    plain.setup(AgentContext(concept_embeddings=X, queries_per_iteration=40, seed=0))
    run(plain, f, 40, 1)
    _, info2 = plain.sampling_distribution()
    np.testing.assert_allclose(info2["r"], info2["mu"], atol=0)


def test_batches_are_drawn_with_replacement() -> None:
    X = embeddings(300)
    f = smooth_reward(X)
    agent = GPSamplerAgent(prior=FAST_PRIOR, smr=30.0, tier_sizes=(2, 10), tier_masses=(0.98, 0.01, 0.01))
    agent.setup(AgentContext(concept_embeddings=X, queries_per_iteration=64, seed=2))
    run(agent, f, 64, 1)
    second = [agent.act(None, {}) for _ in range(64)]
    values, counts = np.unique(second, return_counts=True)
    assert counts.max() > 5  # repeats: the top-2 concepts hold 98% of the mass
    p, _ = agent.sampling_distribution()
    assert set(np.argsort(-p)[:2]) >= set(values[counts == counts.max()])


def test_sampler_concentrates_on_high_reward_concepts() -> None:
    X = embeddings(1500, seed=4)
    f = smooth_reward(X, seed=5)
    good = f >= np.quantile(f, 0.95)
    agent = GPSamplerAgent(prior=FAST_PRIOR, tier_sizes=(50, 150))
    agent.setup(AgentContext(concept_embeddings=X, queries_per_iteration=64, seed=1))
    acts = run(agent, f, 64, 4)
    p, _ = agent.sampling_distribution()
    stats = agent.stats()
    assert p[good].sum() > 0.5  # 5% of the concepts hold most of the mass
    assert f[acts[-64:]].mean() > f[acts[:64]].mean() + 0.1  # GP batches beat the uniform one
    assert stats["num_observations"] == 4 * 64
    for key in ("temperature", "entropy", "tier_mass_0", "tier_mass_1", "tier_mass_2"):
        assert key in stats
    assert stats["tier_mass_0"] == pytest.approx(0.8, abs=1e-9)
    assert 0 < stats["entropy"] < math.log(1500)


def test_new_batch_after_iteration_closes_early() -> None:
    X = embeddings(200)
    agent = GPSamplerAgent(prior=FAST_PRIOR)
    agent.setup(AgentContext(concept_embeddings=X, queries_per_iteration=10, seed=0))
    for k in range(4):
        a = agent.act(None, {})
        agent.observe(a, 0.5, None, {"iteration_closed": k == 3})
    agent.act(None, {})
    assert agent.iteration == 2 and agent.batch_pos == 1


def _ctx(X: np.ndarray, M: int, seed: int) -> AgentContext:
    return AgentContext(concept_embeddings=X, queries_per_iteration=M, seed=seed)


def test_state_round_trip_draws_the_same_future_batches(tmp_path) -> None:
    X = embeddings(600, seed=6)
    f = smooth_reward(X, seed=7)
    M = 24
    cfg = {"prior": {"fit_hyperparameters": True, "fit_steps": 5, "method": "fitc", "num_inducing": 40}}
    a = GPSamplerAgent(**cfg)
    a.setup(_ctx(X, M, 11))
    run(a, f, M, 2, noise_seed=1)
    for k in range(M // 2):  # stop in the middle of an iteration
        act = a.act(None, {})
        a.observe(act, 0.0, None, {"query_reward": float(f[act])})
    a.save(tmp_path / "agent.pkl")
    b = GPSamplerAgent().load(tmp_path / "agent.pkl")  # load before setup: applied by setup
    b.setup(_ctx(X, M, 999))  # the seed in the state wins
    c = GPSamplerAgent(**cfg)
    c.setup(_ctx(X, M, 11))
    c.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))

    def rest(agent: GPSamplerAgent) -> list[int]:
        out = []
        for k in range(M // 2):
            act = agent.act(None, {})
            agent.observe(act, 0.0, None, {"query_reward": float(f[act]), "iteration_closed": k == M // 2 - 1})
            out.append(act)
        return out + run(agent, f, M, 3, noise_seed=2)

    ref = rest(a)
    fresh = GPSamplerAgent(**cfg)
    fresh.setup(_ctx(X, M, 11))
    assert rest(fresh) != ref  # the restored history matters
    assert rest(b) == ref
    assert rest(c) == ref
    assert a.stats()["temperature"] == b.stats()["temperature"]


class _Planted:
    """Unpickling this creates the file at ``path`` (how a planted pickle would run code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_agent_state_files_hold_data_only(tmp_path) -> None:
    """``Agent.save`` writes an npz of arrays plus JSON (RNG state dict included) that ``np.load``
    reads with ``allow_pickle=False``; ``Agent.load`` refuses a pickle without unpickling it."""
    from ie_env.plain_state import UnsafeFileError

    X = embeddings(200, seed=3)
    a = GPSamplerAgent(prior={"fit_hyperparameters": False})
    a.setup(_ctx(X, 8, 5))
    run(a, smooth_reward(X, seed=4), 8, 1, noise_seed=1)
    a.save(tmp_path / "agent.state")
    with np.load(tmp_path / "agent.state", allow_pickle=False) as z:
        assert "__json__" in z.files
    b = GPSamplerAgent().load(tmp_path / "agent.state")
    b.setup(_ctx(X, 8, 5))
    assert b.state_dict()["rng"] == a.state_dict()["rng"]
    np.testing.assert_array_equal(b.state_dict()["batch"], a.state_dict()["batch"])
    marker = tmp_path / "pickle_ran"
    planted = tmp_path / "planted.pkl"
    planted.write_bytes(pickle.dumps({"class": "GPSamplerAgent", "state": _Planted(str(marker))}))
    with pytest.raises(UnsafeFileError, match="pickle"):
        GPSamplerAgent().load(planted)
    assert not marker.exists()


def test_action_mask_is_honoured() -> None:
    X = embeddings(100)
    f = smooth_reward(X)
    mask = np.zeros(100, bool)
    mask[::3] = True
    agent = GPSamplerAgent(prior=FAST_PRIOR)
    agent.setup(_ctx(X, 16, 0))
    for it in range(3):
        for k in range(16):
            a = agent.act(None, {"action_mask": mask})
            assert mask[a]
            agent.observe(a, 0.0, None, {"query_reward": float(f[a]), "iteration_closed": k == 15})
    with pytest.raises(ValueError, match="action_mask"):
        agent.act(None, {"action_mask": np.ones(5, bool)})


def test_label_set_variant() -> None:
    X = embeddings(1000, seed=8)
    classes = X[[3, 17, 42, 99, 500, 777]] + 0.01
    class_actions = [3, 17, 42, 99, 500, 777]
    ctx = AgentContext(
        concept_embeddings=X, queries_per_iteration=400, seed=0,
        class_name_embeddings=classes, class_name_actions=class_actions,
    )
    cand = label_set_candidates(X, classes, 0.1)
    assert cand.size == 100
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Cn = classes / np.linalg.norm(classes, axis=1, keepdims=True)
    score = np.sort(Xn @ Cn.T, axis=1)[:, -2:].mean(1)  # k = 6 // 3 = 2
    assert set(cand) == set(np.argsort(-score)[:100])
    agent = GPSamplerAgent(prior=FAST_PRIOR, label_set_guided=True)
    agent.setup(ctx)
    f = smooth_reward(X)
    for it in range(2):
        acts = []
        for k in range(400):
            a = agent.act(None, {})
            acts.append(a)
            agent.observe(a, 0.0, None, {"query_reward": float(f[a]), "iteration_closed": k == 399})
        acts = np.array(acts)
        is_class = np.isin(acts, class_actions)
        assert 0.4 < is_class.mean() < 0.62  # class names half of the time (plus candidates that are)
        assert np.isin(acts[~is_class], cand).all()
    p, _ = agent.sampling_distribution()
    assert p[np.setdiff1d(np.arange(1000), cand)].sum() == 0.0
    assert agent.stats()["label_set_active"] == 1.0
    # without class names in the context the variant is off
    off = GPSamplerAgent(prior=FAST_PRIOR, label_set_guided=True)
    off.setup(_ctx(X, 10, 0))
    assert not off.label_set_active and off._candidates.size == 1000


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="tier_masses"):
        GPSamplerAgent(tier_masses=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="smr"):
        GPSamplerConfig(smr=0.0)
    with pytest.raises(ValueError, match="unknown config key"):
        GPSamplerAgent(smrr=3.0)
    with pytest.raises(RuntimeError, match="setup"):
        GPSamplerAgent().act(None, {})
