"""Action modes and observations, chosen by config as HighwayEnv chooses its action types.

* ``vocab``: ``Discrete(N)``, one action per concept, with ``action_masks()`` for MaskablePPO.
* ``embedding``: ``Box(-1, 1, (d,))``, a proto-action mapped to the nearest concept (optionally the
  nearest not queried yet) by :class:`NearestConceptIndex` (Wolpertinger-style, Dulac-Arnold 2015).
* ``slate``: ``Discrete(K)`` over ``K`` candidate concepts proposed at every step (neighbours of the
  best concepts so far plus random ones); the candidates' embeddings and what the episode revealed
  about them are in the observation, so a policy can score them without growing with ``K``.

Everything here depends only on an :class:`EpisodeHistory` (the concepts queried so far, their query
rewards and the budget), never on the target: the environment and an SB3 agent driven by the runner
rebuild the same observations from the same history. The ``N x d`` vocabulary is an attribute, never
part of an observation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from ie_env.config import ConfigError
from ie_env.extras import require
from ie_env.latent_fast import array_mean, fill_context

__all__ = [
    "ACTION_MODES",
    "ActionConfig",
    "EpisodeHistory",
    "NearestConceptIndex",
    "ActionMode",
    "VocabMode",
    "EmbeddingMode",
    "SlateMode",
    "make_action_mode",
    "project_embeddings",
    "text_neighbors",
    "CANDIDATE_FEATURES",
]

ACTION_MODES = ("vocab", "embedding", "slate")
#: Per-candidate numbers after the embedding in a slate observation.
CANDIDATE_FEATURES = (
    "known_reward", "queried", "max_similarity", "reward_of_most_similar", "kernel_reward", "proposed_as_neighbour",
    "kernel_reward_vs_mean", "reward_of_most_similar_vs_mean",
)


@dataclass
class ActionConfig:
    """Options of the action modes and of the observation (see the module doc)."""

    embed_dim: int = 0  # 0 = the full text embedding; else its first principal directions
    summary: bool = False  # add best-so-far concept, mean reward and distinct share to the observation
    slate_size: int = 16  # K
    slate_neighbor_share: float = 0.5  # share of the slate proposed from neighbours of the best concepts
    slate_seeds: int = 4  # best queried concepts whose text neighbours are proposed
    slate_neighbors: int = 16  # neighbours kept per concept
    kernel_width: float = 0.1  # similarity kernel exp((s - 1) / width) of the kernel_reward feature
    embedding_unqueried: bool = True  # embedding mode: map to the nearest concept not yet queried
    index_backend: Literal["auto", "numpy", "faiss"] = "auto"

    def validate(self) -> None:
        if self.embed_dim < 0:
            raise ConfigError(f"actions.embed_dim must be >= 0, got {self.embed_dim}")
        if self.slate_size < 2:
            raise ConfigError(f"actions.slate_size must be at least 2, got {self.slate_size}")
        if not 0.0 <= self.slate_neighbor_share <= 1.0:
            raise ConfigError(f"actions.slate_neighbor_share must lie in [0, 1], got {self.slate_neighbor_share}")
        if self.slate_seeds < 1 or self.slate_neighbors < 1:
            raise ConfigError("actions.slate_seeds and actions.slate_neighbors must be at least 1")
        if self.kernel_width <= 0:
            raise ConfigError(f"actions.kernel_width must be > 0, got {self.kernel_width}")
        if self.index_backend not in ("auto", "numpy", "faiss"):
            raise ConfigError(f"actions.index_backend must be auto, numpy or faiss, got {self.index_backend!r}")


# ---------------------------------------------------------------------------------------------
# Shared per-vocabulary tables (computed once per process and vocabulary)
# ---------------------------------------------------------------------------------------------
_TABLES: dict[tuple, np.ndarray] = {}


def _key(embeddings: np.ndarray, *extra: Any) -> tuple:
    h = hashlib.sha1(np.ascontiguousarray(embeddings).view(np.uint8)).hexdigest()
    return (h, embeddings.shape, *extra)


def project_embeddings(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """Unit rows in the first ``dim`` principal directions of ``embeddings`` (0 = unchanged).

    Deterministic: each direction's sign makes its largest coefficient positive.
    """
    e = np.ascontiguousarray(embeddings, dtype=np.float32)
    if dim <= 0 or dim >= e.shape[1]:
        return e
    key = _key(e, "pca", dim)
    if key not in _TABLES:
        x = e.astype(np.float64)
        x -= x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        vt = vt[:dim]
        vt *= np.sign(vt[np.arange(dim), np.abs(vt).argmax(axis=1)])[:, None]
        p = (x @ vt.T).astype(np.float32)
        p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
        _TABLES[key] = p
    return _TABLES[key]


def text_neighbors(embeddings: np.ndarray, m: int) -> np.ndarray:
    """``(N, m)`` nearest other concepts by cosine similarity, nearest first."""
    e = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(e)
    m = min(m, n - 1)
    key = _key(e, "nn", m)
    if key not in _TABLES:
        out = np.empty((n, m), dtype=np.int64)
        for s in range(0, n, 2048):
            sims = e[s : s + 2048] @ e.T
            rows = np.arange(sims.shape[0])
            sims[rows, s + rows] = -np.inf
            part = np.argpartition(-sims, m - 1, axis=1)[:, :m]
            order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
            out[s : s + 2048] = np.take_along_axis(part, order, 1)
        _TABLES[key] = out
    return _TABLES[key]


# ---------------------------------------------------------------------------------------------
# What an episode has revealed
# ---------------------------------------------------------------------------------------------
class EpisodeHistory:
    """Queried concepts in order with their query rewards, and the query budget."""

    def __init__(self, num_concepts: int, budget: int) -> None:
        self.num_concepts = int(num_concepts)
        self.budget = int(budget)
        self.actions = np.zeros(self.budget, dtype=np.int64)
        self.rewards = np.zeros(self.budget, dtype=np.float32)
        self.queried = np.zeros(self.num_concepts, dtype=bool)
        self.last_reward = np.zeros(self.num_concepts, dtype=np.float32)
        self.t = 0
        self.n_distinct = 0

    def record(self, concept: int, reward: float) -> None:
        if self.t >= self.budget:  # a history longer than its budget keeps the latest entries
            self.actions[:-1], self.rewards[:-1] = self.actions[1:], self.rewards[1:]
            self.t -= 1
        self.actions[self.t] = concept
        self.rewards[self.t] = reward
        self.t += 1
        if not self.queried[concept]:
            self.queried[concept] = True
            self.n_distinct += 1
        self.last_reward[concept] = reward

    @property
    def left(self) -> float:
        return max(0.0, 1.0 - self.t / self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {"actions": self.actions[: self.t].copy(), "rewards": self.rewards[: self.t].copy(), "budget": self.budget}

    @classmethod
    def from_state(cls, num_concepts: int, state: dict[str, Any]) -> "EpisodeHistory":
        h = cls(num_concepts, int(state["budget"]))
        for a, r in zip(state["actions"], state["rewards"]):
            h.record(int(a), float(r))
        return h


# ---------------------------------------------------------------------------------------------
# Nearest-concept index (embedding mode)
# ---------------------------------------------------------------------------------------------
class NearestConceptIndex:
    """Maximum inner product search over unit concept vectors, optionally skipping some concepts.

    ``numpy`` is exact brute force (one BLAS product); ``faiss`` (``IndexFlatIP``) is used for
    large vocabularies when installed (``auto`` picks it from 50,000 concepts on).
    """

    def __init__(self, vectors: np.ndarray, backend: str = "auto") -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._faiss = None
        if backend == "faiss" or (backend == "auto" and len(self.vectors) >= 50_000):
            try:
                import faiss

                self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
                self._faiss.add(self.vectors)
            except ImportError:
                if backend == "faiss":
                    require("corpus", "index_backend='faiss'", ("faiss",))
                    raise
        self.backend = "faiss" if self._faiss is not None else "numpy"

    def nearest(self, query: np.ndarray, exclude: np.ndarray | None = None) -> int:
        """Index of the vector with the largest inner product with ``query`` among those not excluded
        (``exclude``: bool per concept; when it excludes everything it is ignored)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if self._faiss is not None:
            n_ex = 0 if exclude is None else int(exclude.sum())
            if n_ex < len(self.vectors):
                k = min(len(self.vectors), n_ex + 1)
                _, idx = self._faiss.search(q[None, :], k)
                for i in idx[0]:
                    if i >= 0 and (exclude is None or not exclude[i]):
                        return int(i)
            return int(self._faiss.search(q[None, :], 1)[1][0, 0])
        s = self.vectors @ q
        if exclude is not None and not exclude.all():
            s[exclude] = -np.inf
        return int(s.argmax())


# ---------------------------------------------------------------------------------------------
# Action modes
# ---------------------------------------------------------------------------------------------
class ActionMode:
    """An action space, an observation space and the map from actions to concepts."""

    name = "base"
    uses_rng = False  # whether the mode draws at random (the env then gives it an episode generator)

    def __init__(self, cfg: ActionConfig, embeddings: np.ndarray, history_len: int, budget: int, mask_queried: bool = False) -> None:
        self.cfg = cfg
        self.num_concepts = int(len(embeddings))
        self.text_embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.E = project_embeddings(self.text_embeddings, cfg.embed_dim)
        self.d = int(self.E.shape[1])
        self.history_len = int(history_len)
        self.budget = int(budget)
        self.mask_queried = bool(mask_queried)
        self.context_dim = (self.d + 1) * (1 + self.history_len) + (self.d + 3 if cfg.summary else 0) + 1
        self.action_space: gym.Space = gym.spaces.Discrete(self.num_concepts)
        self.observation_space: gym.Space = gym.spaces.Box(-1.0, 1.0, (self.context_dim,), np.float32)
        self.rng = np.random.default_rng(0)
        self._ctx_buf = np.zeros(self.context_dim, dtype=np.float32)
        self._ctx_hist: EpisodeHistory | None = None
        self._ctx_t = -1

    # --- episode ----------------------------------------------------------------------------
    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode; ``rng`` drives any randomness of the mode (slate proposals)."""
        self.rng = rng

    def context(self, hist: EpisodeHistory) -> np.ndarray:
        """``[last (d+1) | history H x (d+1) | summary? | budget left]`` (zeros where nothing yet).

        When ``hist`` grew by one query since the last call, the window is shifted in place.
        """
        d, d1, H = self.d, self.d + 1, self.history_len
        t = hist.t
        out = np.empty(self.context_dim, dtype=np.float32)
        if fill_context(out, self.E, hist.actions, hist.rewards, t, H, hist.left):  # compiled, same numbers
            if self.cfg.summary and t:
                self._summary(out, hist)
            return out
        buf = self._ctx_buf
        if hist is self._ctx_hist and t == self._ctx_t + 1 and t >= 1:
            a = hist.actions[t - 1]
            if H > 1:
                buf[2 * d1 : (H + 1) * d1] = buf[d1 : H * d1].copy()
            buf[:d] = self.E[a]
            buf[d] = hist.rewards[t - 1]
            if H:
                buf[d1 : 2 * d1] = buf[:d1]
        else:
            buf = self._ctx_buf = np.zeros(self.context_dim, dtype=np.float32)
            if t:
                buf[:d] = self.E[hist.actions[t - 1]]
                buf[d] = hist.rewards[t - 1]
                n = min(H, t)
                if n:
                    idx = hist.actions[t - n : t][::-1]
                    block = buf[d1 : d1 + n * d1].reshape(n, d1)
                    block[:, :d] = self.E[idx]
                    block[:, d] = hist.rewards[t - n : t][::-1]
        if self.cfg.summary and t:
            self._summary(buf, hist)
        buf[-1] = hist.left
        self._ctx_hist, self._ctx_t = hist, t
        return buf.copy()

    def _summary(self, buf: np.ndarray, hist: EpisodeHistory) -> None:
        """The summary block: best concept so far, its reward, the mean reward, the distinct share."""
        d, t = self.d, hist.t
        s = (d + 1) * (1 + self.history_len)
        rw = hist.rewards[:t]
        b = int(rw.argmax())
        buf[s : s + d] = self.E[hist.actions[b]]
        buf[s + d] = rw[b]
        buf[s + d + 1] = rw.mean()
        buf[s + d + 2] = hist.n_distinct / max(1, hist.budget)

    def observation(self, hist: EpisodeHistory) -> Any:
        return self.context(hist)

    @property
    def plain_context(self) -> bool:
        """The observation is the context alone, without the summary block (what the latent fidelity's
        compiled step writes: :func:`ie_env.latent_fast.latent_step`)."""
        return type(self).observation is ActionMode.observation and not self.cfg.summary

    def to_concept(self, action: Any, hist: EpisodeHistory) -> int:
        raise NotImplementedError

    def action_masks(self, hist: EpisodeHistory) -> np.ndarray | None:
        return None


class VocabMode(ActionMode):
    """``Discrete(N)``: the action is the concept index."""

    name = "vocab"

    def to_concept(self, action: Any, hist: EpisodeHistory) -> int:
        a = int(action)
        if not 0 <= a < self.num_concepts:
            raise ValueError(f"action {a} outside [0, {self.num_concepts})")
        return a

    def action_masks(self, hist: EpisodeHistory) -> np.ndarray:
        if not self.mask_queried or hist.n_distinct in (0, self.num_concepts):
            return np.ones(self.num_concepts, dtype=bool)
        return ~hist.queried


class EmbeddingMode(ActionMode):
    """``Box(-1, 1, (d,))``: the proto-action's nearest concept (not yet queried, by default)."""

    name = "embedding"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.d,), np.float32)
        self.index = NearestConceptIndex(self.E, self.cfg.index_backend)

    def to_concept(self, action: Any, hist: EpisodeHistory) -> int:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.d,) or not np.all(np.isfinite(a)):
            raise ValueError(f"embedding action must be {self.d} finite numbers, got shape {a.shape}")
        exclude = hist.queried if self.cfg.embedding_unqueried and hist.n_distinct else None
        return self.index.nearest(a, exclude)


class SlateMode(ActionMode):
    """``Discrete(K)`` over proposed candidates; the observation is a ``Dict`` of context and slate."""

    name = "slate"
    uses_rng = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.K = int(self.cfg.slate_size)
        if self.K > self.num_concepts:
            raise ConfigError(f"actions.slate_size={self.K} exceeds the vocabulary ({self.num_concepts} concepts)")
        self.cand_dim = self.d + len(CANDIDATE_FEATURES)
        self.action_space = gym.spaces.Discrete(self.K)
        self.observation_space = gym.spaces.Dict(
            {
                "context": gym.spaces.Box(-1.0, 1.0, (self.context_dim,), np.float32),
                "candidates": gym.spaces.Box(-1.0, 1.0, (self.K, self.cand_dim), np.float32),
            }
        )
        self.neighbors = text_neighbors(self.text_embeddings, self.cfg.slate_neighbors)
        self.candidates = np.zeros(self.K, dtype=np.int64)
        self.from_neighbors = np.zeros(self.K, dtype=bool)
        self._slots = np.arange(self.K)
        # E[hist.actions[:t]] of the episode so far, one row appended per query (see _queried_rows).
        self._rows_hist: EpisodeHistory | None = None
        self._rows = np.zeros((0, self.d), dtype=np.float32)
        self._rows_t = 0

    def propose(self, hist: EpisodeHistory) -> None:
        """Draw the next slate: neighbours of the best concepts so far, then random unqueried ones."""
        K, rng = self.K, self.rng
        chosen: list[int] = []
        taken = hist.queried.copy()
        if hist.t:
            ids = np.flatnonzero(hist.queried)
            seeds = ids[np.argsort(-hist.last_reward[ids], kind="stable")[: self.cfg.slate_seeds]]
            pool = self.neighbors[seeds].ravel()
            pool = pool[~taken[pool]]
            if len(pool):
                pool = np.unique(pool)
                n_nb = min(len(pool), int(round(self.cfg.slate_neighbor_share * K)))
                pick = rng.choice(pool, size=n_nb, replace=False) if n_nb < len(pool) else pool
                chosen = pick.tolist()
                taken[pick] = True
        n_nb = len(chosen)
        free = self.num_concepts - int(np.count_nonzero(taken))
        need = K - n_nb
        if free >= need:
            while len(chosen) < K:
                for c in rng.integers(0, self.num_concepts, size=2 * (K - len(chosen)) + 4).tolist():
                    if not taken[c]:
                        taken[c] = True
                        chosen.append(c)
                        if len(chosen) == K:
                            break
        else:  # nearly everything was queried: fill with any concepts (repeats allowed)
            chosen += np.flatnonzero(~taken).tolist()
            chosen += rng.integers(0, self.num_concepts, size=K - len(chosen)).tolist()
        self.candidates = np.array(chosen, dtype=np.int64)
        self.from_neighbors = self._slots < n_nb

    def _queried_rows(self, hist: EpisodeHistory) -> np.ndarray:
        """``E[hist.actions[:t]]`` (C-contiguous), kept between steps and grown by the new queries only."""
        t = hist.t
        if hist is not self._rows_hist or t < self._rows_t or t >= hist.budget:  # another or a shifted history
            self._rows_hist, self._rows_t = hist, 0
        if len(self._rows) < t:  # grows by doubling, up to the budget
            grown = np.empty((min(max(2 * t, 64), max(hist.budget, t)), self.d), dtype=np.float32)
            grown[: self._rows_t] = self._rows[: self._rows_t]
            self._rows = grown
        if self._rows_t < t:
            self._rows[self._rows_t : t] = self.E[hist.actions[self._rows_t : t]]
            self._rows_t = t
        return self._rows[:t]

    def candidate_features(self, hist: EpisodeHistory) -> np.ndarray:
        c = self.candidates
        out = np.zeros((self.K, self.cand_dim), dtype=np.float32)
        d = self.d
        ec = self.E[c]
        out[:, :d] = ec
        out[:, d] = hist.last_reward[c]
        out[:, d + 1] = hist.queried[c]
        if hist.t:
            sims = ec @ self._queried_rows(hist).T  # (K, t); contiguous operands keep this on BLAS
            best = sims.argmax(axis=1)
            out[:, d + 2] = sims[self._slots, best]
            rw = hist.rewards[: hist.t]
            out[:, d + 3] = rw[best]
            w = np.exp((sims - 1.0) / self.cfg.kernel_width)
            out[:, d + 4] = (w @ rw) / (w.sum(axis=1) + 1e-6)
            # The same two estimates against the episode's mean reward so far (reward levels differ
            # between targets; what matters is which candidate looks better than usual), x 4.
            mean_r = array_mean(rw)
            out[:, d + 6] = 4.0 * (out[:, d + 4] - mean_r)
            out[:, d + 7] = 4.0 * (out[:, d + 3] - mean_r)
        out[:, d + 5] = self.from_neighbors
        np.maximum(out, -1.0, out=out)  # np.clip(out, -1, 1), without its Python-level overhead
        np.minimum(out, 1.0, out=out)
        return out

    def observation(self, hist: EpisodeHistory) -> dict[str, np.ndarray]:
        self.propose(hist)
        return {"context": self.context(hist), "candidates": self.candidate_features(hist)}

    def to_concept(self, action: Any, hist: EpisodeHistory) -> int:
        a = int(np.asarray(action).reshape(-1)[0]) if np.ndim(action) else int(action)
        if not 0 <= a < self.K:
            raise ValueError(f"action {a} outside [0, {self.K})")
        return int(self.candidates[a])

    def action_masks(self, hist: EpisodeHistory) -> np.ndarray:
        mask = np.ones(self.K, dtype=bool)
        if self.mask_queried:
            mask = ~hist.queried[self.candidates]
            if not mask.any():
                mask[:] = True
        return mask


_MODES = {"vocab": VocabMode, "embedding": EmbeddingMode, "slate": SlateMode}


def make_action_mode(
    name: str, cfg: ActionConfig, embeddings: np.ndarray, history_len: int, budget: int, mask_queried: bool = False
) -> ActionMode:
    """The action mode ``name`` (one of :data:`ACTION_MODES`)."""
    if name not in _MODES:
        raise ConfigError(f"action_mode {name!r} is not supported; valid: {', '.join(ACTION_MODES)}")
    return _MODES[name](cfg, embeddings, history_len, budget, mask_queried)
