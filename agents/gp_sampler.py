"""The paper's query sampler: a GP prior over concepts, a tempered softmax and rank tiers.

Per SSL iteration the agent draws a batch of ``M = ctx.queries_per_iteration`` concepts, with
replacement, from ``p``; ``act`` serves them one by one. The first iteration is uniform. After each
iteration a GP (:mod:`ie_agents.gp_prior`) is fit on every ``(concept, query reward)`` seen so far and

* ``r(c) = mu(c) + sigma(c)`` for a concept never queried, ``mu(c)`` for a queried one;
* ``q(c) ∝ exp(r(c) / tau)``, ``tau = (max r - min r) / SMR`` (so max q / min q = e^SMR);
* rank tiers: the top 250 concepts by ``r`` share 80% of the mass, the next 750 share 10%, the
  rest 10% (within a tier in proportion to ``q``).

``GPBatchAgent`` holds what the GP baselines share (observation log, GP refit, batch bookkeeping,
action masks, exact state round trip); ``GPSamplerAgent`` adds the distribution above.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ie_agents.base import Agent, AgentContext, uniform_over
from ie_agents.gp_prior import GPPrior, GPPriorConfig
from ie_env.config import from_dict

__all__ = [
    "GPSamplerConfig",
    "GPBatchAgent",
    "GPSamplerAgent",
    "tempered_softmax",
    "tiered_distribution",
    "label_set_candidates",
    "build_config",
]


def build_config(cls: type, config: Any, overrides: Mapping[str, Any]) -> Any:
    """A config dataclass from an instance, a mapping and/or keyword overrides (unknown keys ->
    ``ConfigError`` naming the valid ones)."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, cls):
        data = asdict(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"config must be a {cls.__name__} or a mapping, got {type(config).__name__}")
    data.update(overrides)
    return from_dict(cls, data)


def tempered_softmax(r: np.ndarray, smr: float) -> tuple[np.ndarray, float]:
    """Weights ``exp((r - max r) / tau)`` with ``tau = (max r - min r) / smr`` (unnormalised, in
    ``[e^-smr, 1]``) and ``tau``. A constant ``r`` gives equal weights and ``tau = inf``."""
    r = np.asarray(r, dtype=np.float64)
    span = float(r.max() - r.min())
    if not math.isfinite(span) or span <= 0.0:
        return np.ones_like(r), math.inf
    tau = span / smr
    return np.exp((r - r.max()) / tau), tau


def tiered_distribution(
    r: np.ndarray, smr: float, tier_sizes: tuple[int, ...], tier_masses: tuple[float, ...]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The paper's sampling distribution over ``r`` (see module doc).

    Tiers are consecutive ranks by ``r`` (ties broken by index); the last tier holds every
    remaining concept. Tiers that do not exist (fewer concepts than the tier sizes) are dropped and
    the masses of the others renormalised. Returns ``p`` and ``{"temperature", "softmax",
    "tier_masses", "tier_sizes"}``.
    """
    r = np.asarray(r, dtype=np.float64)
    n = r.size
    if n == 0:
        raise ValueError("cannot build a distribution over zero concepts")
    if len(tier_masses) != len(tier_sizes) + 1:
        raise ValueError("tier_masses needs one entry per tier size plus one for the rest")
    w, tau = tempered_softmax(r, smr)
    order = np.argsort(-r, kind="stable")
    edges = np.minimum(np.concatenate([[0], np.cumsum(tier_sizes), [n]]), n).astype(np.int64)
    sizes = np.diff(edges)
    masses = np.asarray(tier_masses, dtype=np.float64) * (sizes > 0)
    masses = masses / masses.sum()
    p = np.zeros(n, dtype=np.float64)
    for t in range(len(sizes)):
        if sizes[t] == 0:
            continue
        idx = order[edges[t] : edges[t + 1]]
        p[idx] = masses[t] * w[idx] / w[idx].sum()
    return p, {"temperature": tau, "softmax": w / w.sum(), "tier_masses": masses, "tier_sizes": sizes}


def label_set_candidates(
    concept_embeddings: np.ndarray, class_name_embeddings: np.ndarray, fraction: float
) -> np.ndarray:
    """Indices (sorted) of the ``ceil(fraction * N)`` concepts closest to the class names, scored
    by the mean of the top-k cosine similarities, ``k = max(1, n_classes // 3)``."""
    E = np.asarray(concept_embeddings, dtype=np.float32)
    C = np.asarray(class_name_embeddings, dtype=np.float32)
    if C.ndim != 2 or C.shape[0] == 0 or C.shape[1] != E.shape[1]:
        raise ValueError(f"class_name_embeddings must be (n_classes, {E.shape[1]}), got {C.shape}")
    En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    Cn = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    k = max(1, C.shape[0] // 3)
    sims = En @ Cn.T
    score = -np.sort(-sims, axis=1)[:, :k].mean(1)
    keep = max(1, int(math.ceil(fraction * E.shape[0])))
    order = np.argsort(-score, kind="stable")
    return np.sort(order[:keep])


@dataclass
class GPSamplerConfig:
    """The paper's sampler (defaults = the paper's values)."""

    smr: float = 3.0
    tier_sizes: tuple[int, ...] = (250, 750)
    tier_masses: tuple[float, ...] = (0.8, 0.1, 0.1)  # one per tier, the last for all the rest
    exploration_bonus: bool = True  # r = mu + sigma for concepts never queried
    prior: GPPriorConfig = field(default_factory=GPPriorConfig)
    # Label-set-guided variant (active only when the context provides class names).
    label_set_guided: bool = False
    label_set_fraction: float = 0.1
    class_name_query_prob: float = 0.5
    # When the env re-scores the episode's queries under its updated encoder (env.rescore_history),
    # fit the GP on those rewards instead of the ones observed under earlier encoders.
    use_rescored: bool = True

    def validate(self) -> None:
        if not (math.isfinite(self.smr) and self.smr > 0):
            raise ValueError(f"smr must be a positive number, got {self.smr!r}")
        if any(int(s) < 1 for s in self.tier_sizes):
            raise ValueError(f"tier_sizes must be positive, got {self.tier_sizes}")
        if len(self.tier_masses) != len(self.tier_sizes) + 1:
            raise ValueError("tier_masses needs len(tier_sizes) + 1 entries (the last is the rest)")
        if any(m <= 0 for m in self.tier_masses) or abs(sum(self.tier_masses) - 1.0) > 1e-9:
            raise ValueError(f"tier_masses must be positive and sum to 1, got {self.tier_masses}")
        if not 0.0 < self.label_set_fraction <= 1.0:
            raise ValueError("label_set_fraction must lie in (0, 1]")
        if not 0.0 <= self.class_name_query_prob <= 1.0:
            raise ValueError("class_name_query_prob must lie in [0, 1]")

    def __post_init__(self) -> None:
        self.tier_sizes = tuple(int(s) for s in self.tier_sizes)
        self.tier_masses = tuple(float(m) for m in self.tier_masses)
        if isinstance(self.prior, Mapping):
            self.prior = from_dict(GPPriorConfig, self.prior)
        self.validate()


class GPBatchAgent(Agent):
    """Shared machinery of the batch-per-iteration GP agents (subclasses choose the batch)."""

    config_class: type = GPSamplerConfig

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.config = build_config(self.config_class, config, overrides)
        self._ready = False
        self._pending: dict[str, Any] | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def setup(self, ctx: AgentContext) -> None:
        E = np.asarray(ctx.concept_embeddings)
        if E.ndim != 2 or E.shape[0] == 0:
            raise ValueError(f"concept_embeddings must be a non-empty (N, d) array, got {E.shape}")
        if int(ctx.queries_per_iteration) < 1:
            raise ValueError("queries_per_iteration must be >= 1")
        self._ctx = ctx
        self._gp = GPPrior(self.config.prior)
        self._gp.set_vocabulary(E)
        self.rng = np.random.default_rng(ctx.seed)
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.batch = np.zeros(0, dtype=np.int64)
        self.batch_pos = 0
        self.iteration = 0  # batches drawn so far
        self.closed = False  # the env closed an iteration since the last batch
        self.scores: np.ndarray | None = None  # what the current batch was drawn from
        self._batch_p: np.ndarray | None = None
        self._last_action: int | None = None
        self._replaced = False
        self.last_stats: dict[str, float] = {}
        self._candidates = np.arange(E.shape[0])
        self._class_actions = np.zeros(0, dtype=np.int64)
        self._ready = True
        self._setup_extra(ctx)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def _setup_extra(self, ctx: AgentContext) -> None:
        """Hook for subclasses (restrict candidates, etc.)."""

    def _require_setup(self) -> None:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.setup(ctx) must be called first")

    # --- acting ----------------------------------------------------------------------------------
    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        self._require_setup()
        if self.closed or self.batch_pos >= self.batch.size:
            self._new_batch()
        a = int(self.batch[self.batch_pos])
        self.batch_pos += 1
        self._last_action, self._replaced = a, False
        mask = _mask_from(info, self._ctx.num_actions)
        if mask is not None and not mask[a]:
            a = self._replacement(mask)
            self.batch[self.batch_pos - 1] = a
            self._last_action, self._replaced = a, True
        return a

    def action_distribution(self) -> np.ndarray | None:
        """What the latest action was drawn from (see :meth:`Agent.action_distribution`): the first
        batch's uniform draw over the candidates, else :meth:`_batch_distribution`; None after a
        masked slot was replaced."""
        if self._last_action is None or self._replaced:
            return None
        if self._batch_p is None:
            self._batch_p = self._batch_distribution()
        if self._batch_p is not None:
            return self._batch_p
        return uniform_over([self._last_action], self._ctx.num_actions)  # a point mass

    def _batch_distribution(self) -> np.ndarray | None:
        """The per-slot distribution of the current batch; None: each slot is a deterministic choice."""
        if self.scores is None:  # the uniform first batch
            return self._with_class_names(uniform_over(self._candidates, self._ctx.num_actions))
        return None

    def _with_class_names(self, p: np.ndarray) -> np.ndarray:
        """``p`` as a slot sees it when the label-set variant may query a class name instead."""
        return p

    def observe(self, action: int, reward: float, obs: Any, info: dict[str, Any] | None = None) -> None:
        self._require_setup()
        info = info or {}
        r = info.get("query_reward", reward)
        try:
            r = float(r)
        except (TypeError, ValueError):
            r = math.nan
        a = int(action)
        if math.isfinite(r) and 0 <= a < self._ctx.num_actions:
            self.actions.append(a)
            self.rewards.append(r)
        if info.get("iteration_closed"):
            self.closed = True
            rescored = (info.get("iteration_stats") or {}).get("rescored_rewards")
            if rescored is not None and self.config.use_rescored:
                self._take_rescored(rescored)

    def _take_rescored(self, rescored: dict[str, list]) -> None:
        """Replace the observed rewards by the env's re-scored ones (same queries, current encoder)."""
        acts = np.asarray(rescored["actions"], dtype=np.int64)
        rws = np.asarray(rescored["rewards"], dtype=np.float64)
        ok = np.isfinite(rws) & (acts >= 0) & (acts < self._ctx.num_actions)
        self.actions, self.rewards = acts[ok].tolist(), rws[ok].tolist()

    def _new_batch(self) -> None:
        M = int(self._ctx.queries_per_iteration)
        if self.iteration == 0 or not self.actions:
            self.batch = self._first_batch(M)  # the first iteration is uniform
        else:
            self.batch = self._gp_batch(M)
        self.batch = np.asarray(self.batch, dtype=np.int64)
        self._batch_p = None  # built on demand by action_distribution()
        self.batch_pos = 0
        self.iteration += 1
        self.closed = False

    def _first_batch(self, M: int) -> np.ndarray:
        self.scores = None
        self.last_stats = {}
        return self.rng.choice(self._candidates, size=M, replace=True)

    def _gp_batch(self, M: int) -> np.ndarray:
        """The batch of an iteration after the first (subclasses fit the GP here)."""
        raise NotImplementedError

    def _fit_gp(self) -> None:
        self._gp.fit_indices(np.asarray(self.actions, dtype=np.int64), np.asarray(self.rewards))

    def _replacement(self, mask: np.ndarray) -> int:
        """An allowed action in place of a masked batch entry."""
        allowed = np.flatnonzero(mask)
        if allowed.size == 0:
            raise ValueError("action_mask allows no action")
        return int(self.rng.choice(allowed))

    # --- GP helpers ------------------------------------------------------------------------------
    def _queried(self) -> np.ndarray:
        q = np.zeros(self._ctx.num_actions, dtype=bool)
        q[np.asarray(self.actions, dtype=np.int64)] = True
        return q

    def _gp_stats(self) -> dict[str, float]:
        hp = self._gp.hyperparameters
        return {
            "gp_length_scale": hp["length_scale"],
            "gp_signal_variance": hp["signal_variance"],
            "gp_noise_variance": hp["noise_variance"],
            "gp_exact": float(self._gp.method_used == "exact"),
            "gp_num_inducing": float(self._gp.inducing_rows.size),
        }

    def stats(self) -> dict[str, float]:
        if not self._ready:
            return {}
        out = dict(self.last_stats)
        out["num_observations"] = float(len(self.actions))
        out["num_distinct_queried"] = float(len(set(self.actions)))
        out["iteration"] = float(self.iteration)
        return out

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._require_setup()
        return {
            "config": asdict(self.config),
            "rng": self.rng.bit_generator.state,
            "actions": list(self.actions),
            "rewards": list(self.rewards),
            "batch": self.batch.copy(),
            "batch_pos": self.batch_pos,
            "iteration": self.iteration,
            "closed": self.closed,
            "scores": None if self.scores is None else self.scores.copy(),
            "last_stats": dict(self.last_stats),
            "gp": self._gp.state_dict(),
            "num_actions": self._ctx.num_actions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; before ``setup`` it is kept and applied by ``setup``."""
        if not self._ready:
            self._pending = state
            return
        if int(state["num_actions"]) != self._ctx.num_actions:
            raise ValueError(
                f"state is for {state['num_actions']} actions, this context has {self._ctx.num_actions}"
            )
        self.config = build_config(self.config_class, state["config"], {})
        self._gp = GPPrior(self.config.prior)
        self._gp.set_vocabulary(self._ctx.concept_embeddings)
        self._gp.load_state_dict(state["gp"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.actions = [int(a) for a in state["actions"]]
        self.rewards = [float(r) for r in state["rewards"]]
        self.batch = np.asarray(state["batch"], dtype=np.int64).copy()
        self.batch_pos = int(state["batch_pos"])
        self.iteration = int(state["iteration"])
        self.closed = bool(state["closed"])
        self.scores = None if state["scores"] is None else np.asarray(state["scores"]).copy()
        self._batch_p, self._last_action, self._replaced = None, None, False
        self.last_stats = dict(state["last_stats"])
        self._setup_extra(self._ctx)


def _mask_from(info: dict[str, Any] | None, n: int) -> np.ndarray | None:
    if not info or info.get("action_mask") is None:
        return None
    mask = np.asarray(info["action_mask"], dtype=bool).reshape(-1)
    if mask.size != n:
        raise ValueError(f"action_mask has {mask.size} entries, the vocabulary {n}")
    return mask


class GPSamplerAgent(GPBatchAgent):
    """Internet Explorer's GP sampler (see module doc); ``stats()`` reports temperature, entropy
    of ``p``, tier masses and the number of observations."""

    name = "gp"
    config_class = GPSamplerConfig

    def _setup_extra(self, ctx: AgentContext) -> None:
        cfg = self.config
        self.label_set_active = bool(
            cfg.label_set_guided and ctx.class_name_embeddings is not None and len(ctx.class_name_embeddings)
        )
        if self.label_set_active:
            self._candidates = label_set_candidates(
                ctx.concept_embeddings, ctx.class_name_embeddings, cfg.label_set_fraction
            )
            acts = np.asarray(ctx.class_name_actions or [], dtype=np.int64)
            if acts.size and (acts.min() < 0 or acts.max() >= ctx.num_actions):
                raise ValueError("class_name_actions must be valid concept indices")
            self._class_actions = acts

    def _mix_class_names(self, M: int, draw: Callable[[int], np.ndarray]) -> np.ndarray:
        """Label-set variant: each slot is a class name with probability ``class_name_query_prob``."""
        if not (self.label_set_active and self._class_actions.size):
            return draw(M)
        is_class = self.rng.random(M) < self.config.class_name_query_prob
        out = np.empty(M, dtype=np.int64)
        n_cls = int(is_class.sum())
        out[is_class] = self.rng.choice(self._class_actions, size=n_cls, replace=True)
        out[~is_class] = draw(M - n_cls)
        return out

    def _batch_distribution(self) -> np.ndarray | None:
        if self.scores is None:
            return super()._batch_distribution()
        return self._with_class_names(self.scores)

    def _with_class_names(self, p: np.ndarray) -> np.ndarray:
        if not (self.label_set_active and self._class_actions.size):
            return p
        q = float(self.config.class_name_query_prob)
        return (1.0 - q) * p + q * uniform_over(self._class_actions, p.size)

    def _first_batch(self, M: int) -> np.ndarray:
        self.scores = None
        self.last_stats = {"label_set_active": float(self.label_set_active)}
        uniform = lambda k: self.rng.choice(self._candidates, size=k, replace=True)  # noqa: E731
        return self._mix_class_names(M, uniform)

    def sampling_distribution(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Fit the GP on all observations and return ``(p over all N concepts, details)``;
        ``details`` has ``r``, ``mu``, ``sigma``, ``temperature``, ``softmax`` (over the
        candidates), ``tier_masses`` and ``candidates``. (A fit with hyperparameter fitting on
        warm-starts later fits, so calling this between batches can change later batches.)"""
        self._require_setup()
        cfg = self.config
        if self.actions:
            self._fit_gp()
        mu, sigma = self._gp.predict_all(return_std=True)
        r = mu + sigma * ~self._queried() if cfg.exploration_bonus else mu.copy()
        cand = self._candidates
        p_c, info = tiered_distribution(r[cand], cfg.smr, cfg.tier_sizes, cfg.tier_masses)
        p = np.zeros(self._ctx.num_actions, dtype=np.float64)
        p[cand] = p_c
        info.update(r=r, mu=mu, sigma=sigma, candidates=cand)
        return p, info

    def _gp_batch(self, M: int) -> np.ndarray:
        p, info = self.sampling_distribution()
        self.scores = p
        nz = p[p > 0]
        stats = {
            "temperature": float(info["temperature"]),
            "entropy": float(-(nz * np.log(nz)).sum()),
            "r_max": float(info["r"][info["candidates"]].max()),
            "r_min": float(info["r"][info["candidates"]].min()),
            "label_set_active": float(self.label_set_active),
        }
        for t, m in enumerate(info["tier_masses"]):
            stats[f"tier_mass_{t}"] = float(m)
        stats.update(self._gp_stats())
        self.last_stats = stats
        draw = lambda k: self.rng.choice(p.size, size=k, replace=True, p=p)  # noqa: E731
        return self._mix_class_names(M, draw)

    def _replacement(self, mask: np.ndarray) -> int:
        if self.scores is None:
            allowed = np.intersect1d(self._candidates, np.flatnonzero(mask))
            if allowed.size == 0:
                allowed = np.flatnonzero(mask)
            if allowed.size == 0:
                raise ValueError("action_mask allows no action")
            return int(self.rng.choice(allowed))
        q = self.scores * mask
        if q.sum() <= 0:
            return super()._replacement(mask)
        return int(self.rng.choice(q.size, p=q / q.sum()))
