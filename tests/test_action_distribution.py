"""Agent.action_distribution(): what each agent draws from, and the expected relevance the runner and
ie-compare derive from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ie_agents.base import AgentContext
from ie_agents.baselines import GPUCBAgent, GreedyGPMeanAgent, OracleAgent, RandomAgent, UniformNoReplacementAgent
from ie_agents.gp_sampler import GPSamplerAgent
from ie_experiments.compare import gap_closed, run_metrics
from ie_experiments.run import main
from tests.conftest import latent_config

FAST_PRIOR = {"fit_hyperparameters": False, "length_scale": 0.8, "noise_variance": 0.05}


def _ctx(n=40, M=4, seed=0, g=None, **kw) -> AgentContext:
    X = np.random.default_rng(seed).standard_normal((n, 8))
    E = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    return AgentContext(concept_embeddings=E, queries_per_iteration=M, seed=seed, ground_truth_relevance=g, **kw)


def _drive(agent, n_steps: int, M: int, reward=lambda a: float(np.sin(a))):
    """Act and observe ``n_steps`` times (an iteration closes every ``M``); yield (action, p) per step."""
    for t in range(n_steps):
        a = agent.act(None, {})
        p = agent.action_distribution()
        yield a, p
        agent.observe(a, reward(a), None, {"query_reward": reward(a), "iteration_closed": (t + 1) % M == 0})


def _check_distribution(p: np.ndarray, a: int, n: int) -> None:
    assert p.shape == (n,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p[a] > 0  # the action taken was possible


def test_gp_sampler_states_its_uniform_first_batch_then_its_tiered_p():
    agent = GPSamplerAgent(prior=FAST_PRIOR, tier_sizes=(5, 10))
    agent.setup(_ctx(40, M=4))
    assert agent.action_distribution() is None  # nothing drawn yet
    for t, (a, p) in enumerate(_drive(agent, 12, 4)):
        _check_distribution(p, a, 40)
        if t < 4:
            assert np.allclose(p, 1 / 40)
        else:  # every slot of a GP batch is a draw from the sampler's p
            assert np.array_equal(p, agent.scores) and p.max() > 1 / 40


def test_label_set_variant_mixes_in_the_class_names():
    class_emb = np.random.default_rng(9).standard_normal((2, 8)).astype(np.float32)
    agent = GPSamplerAgent(prior=FAST_PRIOR, tier_sizes=(2, 2), label_set_guided=True, label_set_fraction=0.25,
                           class_name_query_prob=0.5)
    agent.setup(_ctx(40, M=4, class_name_embeddings=class_emb, class_name_actions=[3, 7]))
    steps = list(_drive(agent, 8, 4))
    for a, p in steps:
        _check_distribution(p, a, 40)
        assert p[3] >= 0.25 and p[7] >= 0.25  # half the mass on two class names
    first = steps[0][1]
    others = np.setdiff1d(np.flatnonzero(first), [3, 7])
    assert len(others) == 10 and np.allclose(first[others], 0.5 / 10)  # the other half uniform over 10% of 40


@pytest.mark.parametrize("cls", [GreedyGPMeanAgent, GPUCBAgent])
def test_top_m_gp_agents_are_point_masses_after_the_first_batch(cls):
    agent = cls(prior=FAST_PRIOR)
    agent.setup(_ctx(30, M=3))
    for t, (a, p) in enumerate(_drive(agent, 9, 3)):
        _check_distribution(p, a, 30)
        assert np.allclose(p, 1 / 30) if t < 3 else p[a] == 1.0


def test_random_uniform_and_oracle():
    rnd = RandomAgent()
    rnd.setup(_ctx(20))
    a = rnd.act(None, {})
    _check_distribution(rnd.action_distribution(), a, 20)
    mask = np.zeros(20, bool)
    mask[[1, 4, 9]] = True
    a = rnd.act(None, {"action_mask": mask})
    p = rnd.action_distribution()
    _check_distribution(p, a, 20)
    assert np.allclose(p[mask], 1 / 3) and not p[~mask].any()

    uni = UniformNoReplacementAgent()
    uni.setup(_ctx(10))
    used = []
    for k in range(10):
        a = uni.act(None, {})
        p = uni.action_distribution()
        _check_distribution(p, a, 10)
        assert np.allclose(p[np.flatnonzero(p)], 1 / (10 - k)) and not p[used].any()
        used.append(a)
    a = uni.act(None, {})  # a new round: everything allowed again
    assert np.allclose(uni.action_distribution(), 1 / 10)

    g = np.linspace(0, 1, 20)
    ora = OracleAgent(top_k=4)
    ora.setup(_ctx(20, g=g))
    a = ora.act(None, {})
    p = ora.action_distribution()
    _check_distribution(p, a, 20)
    assert set(np.flatnonzero(p)) == {16, 17, 18, 19}
    ora_w = OracleAgent(top_k=4, weighted=True)
    ora_w.setup(_ctx(20, g=g))
    a = ora_w.act(None, {})
    assert ora_w.action_distribution()[16:] == pytest.approx(g[16:] / g[16:].sum())


def test_runner_logs_expected_relevance_and_compare_turns_it_into_an_expected_gap(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"env": latent_config(), "threads": 1}))
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    g_bar = records[0]["expected_true_relevance"]
    # The random policy's expected relevance is the vocabulary's mean g at every query, whatever it drew
    # (the summary's figure is that mean in float32).
    assert g_bar == pytest.approx(summary["random_policy_expected_relevance"], abs=1e-7)
    assert all(r["expected_true_relevance"] == g_bar for r in records)
    assert summary["expected_true_relevance_per_iteration"] == pytest.approx([g_bar] * 3, abs=1e-12)
    g = [r["true_relevance"] for r in records]
    m = run_metrics(summary, g, [r["reward"] for r in records], 4, g_bar, 1.0,
                    [r["expected_true_relevance"] for r in records])
    assert m["expected_gap_closed_second_half"] == pytest.approx(0.0, abs=1e-12)
    assert m["expected_gap_closed_per_iteration"] == pytest.approx([0.0] * 3, abs=1e-12)
    assert m["gap_closed_second_half"] == pytest.approx(float(gap_closed(np.mean(g[6:]), g_bar, 1.0)))
    # One query without a stated distribution: no expected figures rather than a partial mean.
    partial = [r["expected_true_relevance"] for r in records[:-1]] + [None]
    m2 = run_metrics(summary, g, [r["reward"] for r in records], 4, g_bar, 1.0, partial)
    assert m2["expected_gap_closed_second_half"] is None and m2["expected_gap_closed_per_iteration"] is None
