"""Baseline policies and the agent registry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from ie_agents.base import Agent, AgentContext
from ie_agents.baselines import GPUCBAgent, GreedyGPMeanAgent, OracleAgent, RandomAgent, UniformNoReplacementAgent
from ie_agents.gp_prior import GPPrior
from ie_agents.registry import AGENTS, make_agent, register_prefix, PREFIX_HANDLERS
from ie_env.config import ConfigError

FAST_PRIOR = {"fit_hyperparameters": False, "length_scale": 0.8, "noise_variance": 0.05}


def embeddings(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def ctx(n: int = 60, M: int = 8, seed: int = 0, g: np.ndarray | None = None) -> AgentContext:
    return AgentContext(concept_embeddings=embeddings(n), queries_per_iteration=M, seed=seed, ground_truth_relevance=g)


def test_random_is_uniform_with_replacement_and_honours_mask() -> None:
    agent = RandomAgent()
    agent.setup(ctx(20, seed=1))
    acts = [agent.act(None, {}) for _ in range(4000)]
    assert chisquare(np.bincount(acts, minlength=20)).pvalue > 1e-3
    assert len(set(acts[:30])) < 30  # repeats happen
    mask = np.zeros(20, bool)
    mask[[2, 5]] = True
    assert {agent.act(None, {"action_mask": mask}) for _ in range(200)} == {2, 5}
    other = RandomAgent()
    other.setup(ctx(20, seed=1))
    assert [other.act(None, {}) for _ in range(4000)] == acts  # deterministic given the seed


def test_uniform_without_replacement() -> None:
    agent = UniformNoReplacementAgent()
    agent.setup(ctx(30, seed=2))
    first = [agent.act(None, {}) for _ in range(30)]
    assert sorted(first) == list(range(30))
    second = [agent.act(None, {}) for _ in range(30)]
    assert sorted(second) == list(range(30)) and second != first
    mask = np.zeros(30, bool)
    mask[10:15] = True
    agent.setup(ctx(30, seed=3))
    masked = [agent.act(None, {"action_mask": mask}) for _ in range(5)]
    assert sorted(masked) == list(range(10, 15))
    unmasked = [agent.act(None, {}) for _ in range(25)]
    assert sorted(masked + unmasked) == list(range(30))  # masked-out concepts were kept for later


def test_uniform_state_round_trip() -> None:
    a = UniformNoReplacementAgent()
    a.setup(ctx(25, seed=4))
    [a.act(None, {}) for _ in range(7)]
    b = UniformNoReplacementAgent()
    b.setup(ctx(25, seed=0))
    b.load_state_dict(a.state_dict())
    assert [a.act(None, {}) for _ in range(40)] == [b.act(None, {}) for _ in range(40)]


def _feed(agent: Agent, f: np.ndarray, M: int, iters: int) -> list[list[int]]:
    batches = []
    for _ in range(iters):
        batch = []
        for k in range(M):
            a = agent.act(None, {})
            agent.observe(a, float(f[a]), None, {"query_reward": float(f[a]), "iteration_closed": k == M - 1})
            batch.append(a)
        batches.append(batch)
    return batches


def test_greedy_and_ucb_pick_the_top_m_of_their_score() -> None:
    c = ctx(80, M=6, seed=5)
    f = c.concept_embeddings[:, 0].astype(np.float64)
    for cls, beta in ((GreedyGPMeanAgent, 0.0), (GPUCBAgent, 2.0)):
        agent = cls(prior=FAST_PRIOR)
        agent.setup(c)
        first, second = _feed(agent, f, 6, 2)
        gp = GPPrior(agent.config.prior)
        gp.set_vocabulary(c.concept_embeddings)
        mu, sd = gp.fit_indices(np.array(first), f[first]).predict_all()
        score = mu + beta * sd
        assert len(set(second)) == 6
        assert set(second) == set(np.argsort(-score)[:6])
    ucb = GPUCBAgent(prior=FAST_PRIOR, beta=0.5)
    assert ucb.config.beta == 0.5


def test_greedy_breaks_ties_at_random() -> None:
    picks = set()
    for seed in range(4):
        agent = GreedyGPMeanAgent(prior=FAST_PRIOR)
        agent.setup(ctx(50, M=5, seed=seed))
        batches = _feed(agent, np.zeros(50), 5, 2)  # constant reward: every mu ties
        picks.add(tuple(sorted(batches[1])))
    assert len(picks) > 1


def test_oracle_samples_among_the_most_relevant() -> None:
    g = np.linspace(0.0, 1.0, 40)[::-1].copy()
    agent = OracleAgent(top_k=5)
    assert agent.needs_ground_truth
    agent.setup(ctx(40, g=g))
    acts = {agent.act(None, {}) for _ in range(300)}
    assert acts == {0, 1, 2, 3, 4}
    mask = np.ones(40, bool)
    mask[:3] = False
    assert {agent.act(None, {"action_mask": mask}) for _ in range(300)} == {3, 4, 5, 6, 7}
    weighted = OracleAgent(top_k=2, weighted=True)
    g2 = np.zeros(40)
    g2[7], g2[9] = 0.9, 0.1
    weighted.setup(ctx(40, g=g2))
    counts = np.bincount([weighted.act(None, {}) for _ in range(2000)], minlength=40)
    assert counts[7] > 5 * counts[9] > 0
    with pytest.raises(ValueError, match="ground-truth relevance"):
        OracleAgent().setup(ctx(40))


def test_all_baselines_honour_masks() -> None:
    mask = np.zeros(50, bool)
    mask[[1, 4, 9, 16, 25, 36, 49]] = True
    f = embeddings(50)[:, 1].astype(np.float64)
    for name in AGENTS:
        extra = {"prior": FAST_PRIOR} if name in ("gp", "greedy", "gp_ucb") else {}
        agent = make_agent(name, **extra)
        agent.setup(ctx(50, M=4, seed=0, g=np.arange(50.0)))
        for k in range(12):
            a = agent.act(None, {"action_mask": mask})
            assert mask[a], name
            agent.observe(a, float(f[a]), None, {"query_reward": float(f[a]), "iteration_closed": k % 4 == 3})


def test_registry() -> None:
    assert set(AGENTS) == {"gp", "random", "uniform", "greedy", "gp_ucb", "oracle"}
    assert isinstance(make_agent("gp_ucb", beta=3.0), GPUCBAgent)
    with pytest.raises(ValueError, match="registered: .*gp_ucb"):
        make_agent("nope")
    with pytest.raises(ValueError, match="unknown agent prefix"):
        make_agent("sb3x:model.zip")
    with pytest.raises(ConfigError, match="valid keys"):
        make_agent("random", beta=1.0)
    seen = {}

    def handler(rest: str, **config) -> Agent:
        seen.update(rest=rest, **config)
        return RandomAgent()

    register_prefix("test", handler)
    try:
        assert isinstance(make_agent("test:path/to/model.zip", device="cpu"), RandomAgent)
        assert seen == {"rest": "path/to/model.zip", "device": "cpu"}
    finally:
        PREFIX_HANDLERS.pop("test")
