"""Latent fidelity's learner: a whitening map refit to everything trained on so far.

DESIGN §7: in the ``latent`` fidelity image features are the world's image latents seen through a
cheap surrogate encoder. Here it is ZCA whitening of the running mean and covariance of every latent
the learner has been updated on (replay, target and new finds), shrunk towards the identity. As
training data accrue the map changes, so rewards drift as they do under SSL and the ``gain`` reward
(change of a query's target similarity across an update) is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ie_env.learner.base import Learner


@dataclass
class SurrogateConfig:
    shrinkage: float = 0.1  # weight of the identity in the covariance estimate
    prior_count: float = 64.0  # pseudo-observations of the identity-covariance prior
    # A constant feature coordinate (in whitened units): cosine similarity then falls with distance
    # instead of measuring only the direction from the mean, as an SSL encoder's similarity does.
    # 0 = pure whitening; the default sqrt(16) matches a 16-d latent's typical whitened norm.
    bias: float = 4.0


class WhiteningSurrogate(Learner):
    """``features(x) = normalize([W (x - mu), bias])`` with ``W = (C + s I)^{-1/2}`` of the data seen."""

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
        cov = self.m2 / max(self.count - 1.0, 1.0)
        cov = (1 - self.cfg.shrinkage) * cov + self.cfg.shrinkage * np.eye(self.dim)
        vals, vecs = np.linalg.eigh(cov)
        self.W = (vecs / np.sqrt(np.maximum(vals, 1e-8))) @ vecs.T
        self._W32 = self.W.astype(np.float32)
        self._mu32 = self.mean.astype(np.float32)

    def features_np(self, images: np.ndarray) -> np.ndarray:
        f = (np.asarray(images, dtype=np.float32) - self._mu32) @ self._W32
        if self.bias:
            f = np.concatenate([f, np.full((len(f), 1), self.bias, np.float32)], axis=1)
        f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
        return f

    def features(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.features_np(images))

    def update(self, images: np.ndarray) -> dict[str, float]:
        x = np.asarray(images, dtype=np.float64)
        if len(x):
            n = float(len(x))
            bmean = x.mean(axis=0)
            centred = x - bmean
            delta = bmean - self.mean
            total = self.count + n
            self.m2 = self.m2 + centred.T @ centred + np.outer(delta, delta) * self.count * n / total
            self.mean = self.mean + delta * n / total
            self.count = total
            self.steps += 1
            self._refit()
        return {"loss": 0.0, "steps": 1.0 if len(x) else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = np.array(state["mean"])
        self.m2 = np.array(state["m2"])
        self.steps = int(state["steps"])
        self._refit()
