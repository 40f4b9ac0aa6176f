"""Latent fidelity's learner: a whitening map refit to everything trained on so far.

DESIGN §7: in the ``latent`` fidelity image features are the world's image latents seen through a
cheap surrogate encoder. Here it is whitening by the running mean and covariance ``C`` of every
latent the learner has been updated on (replay, target and new finds), shrunk towards the identity:
``W = L^-T`` of the Cholesky factor ``C = L L^T``. Similarities between features depend on
``W W^T = C^-1`` only, so every reward is the one ZCA whitening ``C^-1/2`` would give (to rounding);
the triangular map costs a 16 x 16 Cholesky instead of an eigendecomposition. As training data accrue
the map changes, so rewards drift as they do under SSL and the ``gain`` reward (change of a query's
target similarity across an update) is defined.

An update needs only the batch's size, mean and centred second moment (:func:`batch_moments`), so
the environment hands over those (:meth:`WhiteningSurrogate.update_moments`, :func:`moments_from_sums`),
gathered from new finds, target train and replay images without concatenating the pool. Moments of a
read-only array (the environment's cached warm-up batch) are computed once per array, and the map of
a state seen before (the prior, the post-warm-up state) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ie_env.latent_fast import stack_rows, surrogate_update, surrogate_update_rows, whitening
from ie_env.learner.base import Learner

_MOMENTS: dict[int, tuple[np.ndarray, tuple[float, np.ndarray, np.ndarray]]] = {}


def batch_moments(images: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(n, mean, C)`` of a batch in float64, ``C`` the sum of outer products about the mean.

    For a read-only array the result is kept (with a reference to the array, so that its id stays
    its own) and reused when the same array comes again.
    """
    ro = isinstance(images, np.ndarray) and not images.flags.writeable
    if ro:
        hit = _MOMENTS.get(id(images))
        if hit is not None and hit[0] is images:
            return hit[1]
    x = np.asarray(images, dtype=np.float64)
    bmean = x.mean(axis=0)
    centred = x - bmean
    out = (float(len(x)), bmean, centred.T @ centred)
    if ro:
        if len(_MOMENTS) >= 64:
            _MOMENTS.clear()
        _MOMENTS[id(images)] = (images, out)
    return out


_REFITS: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _eigh(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh(cov)`` (LAPACK ``dsyevd`` on the lower triangle), called without numpy's wrapper
    when scipy's LAPACK is there (no numba): the wrapper costs more than the 16 x 16 problem."""
    if _dsyevd is not None:
        vals, vecs, info = _dsyevd(cov, compute_v=1, lower=1)
        if info == 0:
            return vals, vecs
    return np.linalg.eigh(cov)


try:
    from scipy.linalg.lapack import dsyevd as _dsyevd
except ImportError:  # pragma: no cover - scipy is a dependency
    _dsyevd = None


def whitening_map(cov: np.ndarray) -> np.ndarray:
    """``W`` with ``W W^T = cov^-1``: ``L^-T`` of the Cholesky factor ``cov = L L^T``, or
    ``(vecs / sqrt(max(vals, 1e-8))) @ vecs.T`` from ``eigh`` when ``cov`` is not positive definite.
    Features ``(x - mu) W`` then have identity covariance, and their inner products (all a reward
    uses) are those of any other whitening of ``cov``."""
    try:
        L = np.linalg.cholesky(cov)
        if np.all(np.diag(L) > 1e-6):
            return np.linalg.inv(L).T
    except np.linalg.LinAlgError:
        pass
    vals, vecs = _eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, 1e-8))) @ vecs.T


def moments_from_sums(n: float, total: np.ndarray, outer: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(n, mean, C)`` from ``n``, the sum of the rows and the sum of their outer products."""
    mean = total / n
    return float(n), mean, outer - n * (mean[:, None] * mean[None, :])


@dataclass
class SurrogateConfig:
    shrinkage: float = 0.1  # weight of the identity in the covariance estimate
    prior_count: float = 64.0  # pseudo-observations of the identity-covariance prior
    # A constant feature coordinate (in whitened units): cosine similarity then falls with distance
    # instead of measuring only the direction from the mean, as an SSL encoder's similarity does.
    # 0 = pure whitening; the default sqrt(16) matches a 16-d latent's typical whitened norm.
    bias: float = 4.0


class WhiteningSurrogate(Learner):
    """``features(x) = normalize([(x - mu) W, bias])`` with ``W W^T = ((1 - s) C + s I)^-1`` of the data seen."""

    def __init__(self, dim: int, cfg: SurrogateConfig | None = None) -> None:
        self.cfg = cfg or SurrogateConfig()
        self.dim = dim
        self.bias = float(self.cfg.bias)
        self.count = float(self.cfg.prior_count)
        self.mean = np.zeros(dim)
        self.m2 = np.eye(dim) * self.cfg.prior_count  # sum of outer products about the mean
        self.steps = 0
        self._refit()

    def _refit(self) -> None:
        # The same state gives the same map: the prior and the post-warm-up state (updates 0 and 1)
        # recur at every reset of an environment, so their maps are kept.
        key = (self.count, self.cfg.shrinkage, self.mean.tobytes(), self.m2.tobytes()) if self.steps <= 1 else None
        hit = _REFITS.get(key) if key is not None else None
        if hit is None:
            hit = whitening(self.m2, self.count, self.cfg.shrinkage, self.mean)  # compiled, same numbers
        if hit is None:
            W = whitening_map((1 - self.cfg.shrinkage) * (self.m2 / max(self.count - 1.0, 1.0))
                              + self.cfg.shrinkage * np.eye(self.dim))
            hit = (W, W.astype(np.float32), self.mean.astype(np.float32))
        if key is not None and key not in _REFITS:
            for a in hit:  # shared by every learner in this state: never written
                a.setflags(write=False)
            if len(_REFITS) >= 64:
                _REFITS.clear()
            _REFITS[key] = hit
        self.W, self._W32, self._mu32 = hit

    def features_np(self, images: np.ndarray) -> np.ndarray:
        f = (np.asarray(images, dtype=np.float32) - self._mu32) @ self._W32
        if self.bias:
            f = np.concatenate([f, np.full((len(f), 1), self.bias, np.float32)], axis=1)
        f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
        return f

    def features(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.features_np(images))

    def update(self, images: np.ndarray) -> dict[str, float]:
        if len(images):
            return self.update_moments(*batch_moments(images))
        return {"loss": 0.0, "steps": 0.0}

    def update_moments(self, n: float, bmean: np.ndarray, centred_m2: np.ndarray) -> dict[str, float]:
        """:meth:`update` on a batch given by its size, mean and centred second moment."""
        if n <= 0:
            return {"loss": 0.0, "steps": 0.0}
        if self.steps >= 1:  # compiled: the same element-wise operations and the same map, in one call
            out = surrogate_update(self.m2, self.mean, self.count, n, bmean, centred_m2, self.cfg.shrinkage)
            if out is not None:
                return self._apply(*out)
        delta = bmean - self.mean
        total = self.count + n
        self.m2 = self.m2 + centred_m2 + delta[:, None] * delta[None, :] * self.count * n / total  # np.outer
        self.mean = self.mean + delta * n / total
        self.count = total
        self.steps += 1
        self._refit()
        return {"loss": 0.0, "steps": 1.0}

    def _apply(self, m2, mean, count, W, W32, mu32) -> dict[str, float]:
        """Take the state of a compiled update (:mod:`ie_env.latent_fast`): one more update step."""
        self.m2, self.mean, self.count, self.W, self._W32, self._mu32 = m2, mean, float(count), W, W32, mu32
        self.steps += 1
        return {"loss": 0.0, "steps": 1.0}

    def update_rows(self, first: np.ndarray, a: np.ndarray, b: np.ndarray | None, idx: np.ndarray) -> dict[str, float]:
        """:meth:`update` on ``concat([first, concat([a, b])[idx]])`` without building it (the latent
        environment's batch: new finds plus images drawn from target train + replay)."""
        if len(first) + len(idx) == 0:
            return {"loss": 0.0, "steps": 0.0}
        if self.steps >= 1:
            out = surrogate_update_rows(first, a, b, idx, self.m2, self.mean, self.count, self.cfg.shrinkage)
            if out is not None:
                return self._apply(*out)
        x, total = stack_rows(first, a, b, idx)
        return self.update_moments(*moments_from_sums(len(x), total, x.T @ x))

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = np.array(state["mean"])
        self.m2 = np.array(state["m2"])
        self.steps = int(state["steps"])
        self._refit()
