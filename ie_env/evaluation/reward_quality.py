"""Reward quality: how well the query reward ranks concepts by ground-truth relevance.

On a fixed concept panel (every concept with ``g >= 0.5`` plus a seeded random sample of the rest,
the same panel for every run of an episode's target), the reward each concept would get now
(:meth:`InternetExplorerEnv.peek_query_rewards`: no step is taken) is compared with ``g``:

* ``spearman``: Spearman's rank correlation of reward and ``g`` over the panel;
* ``auc``: the probability that a relevant concept (``g >= 0.5``) outranks an irrelevant one;
* ``top20_relevant``: how many of the panel's 20 highest-reward concepts are relevant;
* ``reward_range``: max - min of the panel's rewards (the sampler's softmax divides by it);
* ``latent_pearson`` / ``latent_spearman``: per-concept correlation of the rewards with those of the
  latent twin (same world, seed and targets, stepped through the same queries), scored on the same panel.

A panel of ``sample=-1`` is the whole vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

RELEVANT = 0.5
TOP = 20
PANEL_SEED = 0


def concept_panel(relevance: np.ndarray, sample: int = 200, seed: int = PANEL_SEED) -> np.ndarray:
    """Sorted concept ids: every concept with ``g >= 0.5`` and ``sample`` others drawn with ``seed``
    (``sample < 0``: every concept)."""
    g = np.asarray(relevance, dtype=np.float64)
    if sample < 0:
        return np.arange(len(g))
    relevant = np.flatnonzero(g >= RELEVANT)
    rest = np.flatnonzero(g < RELEVANT)
    pick = np.random.default_rng([int(seed), 0x9A7E1]).choice(rest, size=min(int(sample), len(rest)), replace=False)
    return np.sort(np.concatenate([relevant, pick]))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (ties count half); NaN
    when one class is empty."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    fn = stats.spearmanr if kind == "spearman" else stats.pearsonr
    return float(fn(a, b)[0])


def reward_quality(rewards: np.ndarray, relevance: np.ndarray, top: int = TOP) -> dict[str, float]:
    """The figures of one panel's ``rewards`` against its ground-truth ``relevance``."""
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(relevance, dtype=np.float64)
    if r.shape != g.shape:
        raise ValueError(f"rewards {r.shape} and relevance {g.shape} differ in shape")
    order = np.argsort(-r, kind="stable")[:top]
    return {
        "spearman": _corr(r, g, "spearman"),
        "auc": auc(r, g >= RELEVANT),
        f"top{top}_relevant": int((g[order] >= RELEVANT).sum()),
        "reward_range": float(np.ptp(r)) if len(r) else float("nan"),
        "panel_size": len(r),
        "panel_relevant": int((g >= RELEVANT).sum()),
    }


class RewardQualityProbe:
    """Measures :func:`reward_quality` of an env's current encoder, and its latent twin's agreement.

    Call :meth:`start` after the env's ``reset(seed)``, :meth:`follow` after every step with the concept
    queried, and :meth:`measure` whenever figures are wanted (after reset and each iteration close)."""

    def __init__(self, env: Any, sample: int = 200, seed: int = PANEL_SEED, twin: bool = True) -> None:
        self.env = getattr(env, "unwrapped", env)
        if self.env.config.engine.name != "embedded":
            raise ValueError("reward quality needs ground-truth relevance: the embedded world only, "
                             f"not engine {self.env.config.engine.name}")
        self.sample, self.seed = int(sample), int(seed)
        self.use_twin = twin and self.env.config.world.fidelity == "pixels"
        self.twin: Any = None
        self.panel: np.ndarray | None = None

    def start(self, seed: int | None) -> None:
        """Fix the panel of the episode's target and reset the latent twin with the env's seed."""
        self.panel = concept_panel(self.env.world.relevance, self.sample, self.seed)
        if self.use_twin:
            from ie_env.config import merge
            from ie_env.env import InternetExplorerEnv

            cfg = merge(self.env.config, {"world": {"fidelity": "latent"}, "action_mode": "vocab",
                                          "info_level": "full", "evaluate": False})
            self.twin = InternetExplorerEnv(cfg)
            self.twin.reset(seed=seed)
            if not np.array_equal(self.twin.world.target_ids, self.env.world.target_ids):
                raise RuntimeError("the latent twin drew another target than the env: reset both with the same seed")

    def follow(self, concept: int) -> None:
        """Query ``concept`` in the twin as the env just did (its SSL iterations close in step)."""
        if self.twin is not None:
            self.twin.step(int(concept))

    def measure(self) -> dict[str, Any]:
        """The figures now; ``iteration`` is the env's count of closed iterations."""
        if self.panel is None:
            raise RuntimeError("call start() after the env's reset()")
        g = self.env.world.relevance[self.panel]
        rewards = self.env.peek_query_rewards(self.panel)
        out: dict[str, Any] = {"iteration": int(self.env.iteration), **reward_quality(rewards, g)}
        if self.twin is not None:
            twin = self.twin.peek_query_rewards(self.panel)
            out["latent_pearson"] = _corr(rewards, twin, "pearson")
            out["latent_spearman"] = _corr(rewards, twin, "spearman")
            out["latent_auc"] = auc(twin, g >= RELEVANT)
        return out
