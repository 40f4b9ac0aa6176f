"""Baseline query policies: random, uniform without replacement, greedy GP mean, GP-UCB, oracle.

All honour ``info["action_mask"]`` (bool, False = not allowed) when the env provides one, and are
deterministic given ``ctx.seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ie_agents.base import Agent, AgentContext
from ie_agents.gp_prior import GPPriorConfig
from ie_agents.gp_sampler import GPBatchAgent, _mask_from, build_config

__all__ = [
    "RandomAgent",
    "UniformNoReplacementAgent",
    "GreedyGPMeanAgent",
    "GPUCBAgent",
    "OracleAgent",
    "GreedyConfig",
    "GPUCBConfig",
    "OracleConfig",
]


@dataclass
class _NoConfig:
    """Agents without options (keyword arguments are refused with a clear error)."""


class _SimpleAgent(Agent):
    """A non-learning agent: config, seeded RNG, explicit state, load before or after setup."""

    config_class: type = _NoConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.config = build_config(self.config_class, config, overrides)
        self._ready = False
        self._pending: dict[str, Any] | None = None

    def setup(self, ctx: AgentContext) -> None:
        n = int(np.asarray(ctx.concept_embeddings).shape[0])
        if n < 1:
            raise ValueError("the vocabulary is empty")
        self._ctx = ctx
        self._n = n
        self.rng = np.random.default_rng(ctx.seed)
        self._ready = True
        self._reset(ctx)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def _reset(self, ctx: AgentContext) -> None:
        """Subclass hook: initialise per-episode state."""

    def _mask(self, info: dict[str, Any] | None) -> np.ndarray | None:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.setup(ctx) must be called first")
        mask = _mask_from(info, self._n)
        if mask is not None and not mask.any():
            raise ValueError("action_mask allows no action")
        return mask

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.setup(ctx) must be called first")
        return {"config": asdict(self.config), "rng": self.rng.bit_generator.state, "n": self._n, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._ready:
            self._pending = state
            return
        if int(state["n"]) != self._n:
            raise ValueError(f"state is for {state['n']} actions, this context has {self._n}")
        self.config = build_config(self.config_class, state["config"], {})
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self._load(state)


class RandomAgent(_SimpleAgent):
    """Uniformly random concepts, with replacement (the paper's random-exploration baseline)."""

    name = "random"

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        mask = self._mask(info)
        self._allowed = mask
        if mask is None:
            return int(self.rng.integers(self._n))
        return int(self.rng.choice(np.flatnonzero(mask)))

    def action_distribution(self) -> np.ndarray | None:
        """Uniform over the concepts the latest ``act`` allowed."""
        allowed = getattr(self, "_allowed", None)
        return np.full(self._n, 1.0 / self._n) if allowed is None else allowed / allowed.sum()


class UniformNoReplacementAgent(_SimpleAgent):
    """Each concept once, in a random order; after all were queried a new round starts."""

    name = "uniform"

    def _reset(self, ctx: AgentContext) -> None:
        self._new_round()

    def _new_round(self) -> None:
        self.perm = self.rng.permutation(self._n)
        self.used = np.zeros(self._n, dtype=bool)
        self.pos = 0  # perm[:pos] are all used

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        mask = self._mask(info)
        allowed = np.ones(self._n, dtype=bool) if mask is None else mask
        if not (allowed & ~self.used).any():
            self._new_round()
        rest = self.perm[self.pos :]
        ok = allowed[rest] & ~self.used[rest]
        a = int(rest[int(np.argmax(ok))])
        # The unseen rest of a uniform permutation: the action is uniform over the allowed unused ones.
        self._drawn_from = allowed & ~self.used
        self.used[a] = True
        while self.pos < self._n and self.used[self.perm[self.pos]]:
            self.pos += 1
        return a

    def action_distribution(self) -> np.ndarray | None:
        """Uniform over the allowed concepts not yet used in this round (when the latest ``act`` drew)."""
        drawn_from = getattr(self, "_drawn_from", None)
        return None if drawn_from is None else drawn_from / drawn_from.sum()

    def _state(self) -> dict[str, Any]:
        return {"perm": self.perm.copy(), "used": self.used.copy(), "pos": self.pos}

    def _load(self, state: dict[str, Any]) -> None:
        self.perm = np.asarray(state["perm"], dtype=np.int64).copy()
        self.used = np.asarray(state["used"], dtype=bool).copy()
        self.pos = int(state["pos"])


@dataclass
class GreedyConfig:
    prior: GPPriorConfig = field(default_factory=GPPriorConfig)


@dataclass
class GPUCBConfig:
    beta: float = 2.0  # score = mu + beta * sigma
    prior: GPPriorConfig = field(default_factory=GPPriorConfig)

    def validate(self) -> None:
        if not np.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a non-negative number, got {self.beta!r}")


class _TopMGPAgent(GPBatchAgent):
    """Uniform first iteration, then the M best concepts by a GP score (ties broken randomly)."""

    def _score(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gp_batch(self, M: int) -> np.ndarray:
        self._fit_gp()
        mu, sigma = self._gp.predict_all(return_std=True)
        score = self._score(mu, sigma)
        order = np.lexsort((self.rng.random(score.size), -score))  # by score, ties at random
        self.scores = order
        self.last_stats = {"score_max": float(score.max()), "score_min": float(score.min()), **self._gp_stats()}
        return np.resize(order, M)

    def _replacement(self, mask: np.ndarray) -> int:
        if self.scores is None:
            return super()._replacement(mask)
        in_batch = np.zeros(mask.size, dtype=bool)
        in_batch[self.batch[: self.batch_pos]] = True
        ok = mask[self.scores] & ~in_batch[self.scores]
        if ok.any():
            return int(self.scores[int(np.argmax(ok))])
        return int(self.scores[int(np.argmax(mask[self.scores]))])


class GreedyGPMeanAgent(_TopMGPAgent):
    """Pure exploitation: the top-M concepts by GP posterior mean."""

    name = "greedy"
    config_class = GreedyConfig

    def _score(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return mu


class GPUCBAgent(_TopMGPAgent):
    """GP-UCB: the top-M concepts by ``mu + beta * sigma``."""

    name = "gp_ucb"
    config_class = GPUCBConfig

    def _score(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return mu + self.config.beta * sigma


@dataclass
class OracleConfig:
    top_k: int = 100  # sample among this many highest-relevance concepts
    weighted: bool = False  # in proportion to relevance (else uniformly)

    def validate(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")


class OracleAgent(_SimpleAgent):
    """Knows the ground-truth relevance (embedded world only) and queries among the best concepts."""

    name = "oracle"
    needs_ground_truth = True
    config_class = OracleConfig

    def _reset(self, ctx: AgentContext) -> None:
        g = ctx.ground_truth_relevance
        if g is None:
            raise ValueError(
                "OracleAgent needs ground-truth relevance: build the context with "
                "AgentContext.from_env(env, seed, with_ground_truth=True) on a world that has it"
            )
        g = np.asarray(g, dtype=np.float64).reshape(-1)
        if g.size != self._n or not np.all(np.isfinite(g)):
            raise ValueError(f"ground_truth_relevance must be {self._n} finite values, got shape {g.shape}")
        self._relevance = g
        self._order = np.argsort(-g, kind="stable")

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        mask = self._mask(info)
        order = self._order if mask is None else self._order[mask[self._order]]
        top = order[: self.config.top_k]
        p = np.zeros(self._n)
        if self.config.weighted:
            w = np.clip(self._relevance[top], 0.0, None)
            if w.sum() > 0:
                p[top] = w / w.sum()
                self._p = p
                return int(self.rng.choice(top, p=w / w.sum()))
        p[top] = 1.0 / len(top)
        self._p = p
        return int(self.rng.choice(top))

    def action_distribution(self) -> np.ndarray | None:
        """Uniform (or relevance-weighted) over the ``top_k`` concepts the latest ``act`` chose among."""
        return getattr(self, "_p", None)
