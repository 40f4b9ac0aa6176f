"""The representation that scores images: an SSL encoder (pixels) or a surrogate (latent fidelity)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class Learner(ABC):
    """Maps images to L2-normalised features and is updated on the images the agent found.

    ``images`` are whatever the world's fidelity produces: ``uint8 (N, H, W, 3)`` pixel arrays, or
    ``float32 (N, d)`` image latents in the ``latent`` fidelity.
    """

    @abstractmethod
    def features(self, images: np.ndarray) -> torch.Tensor:
        """``(N, D)`` float32, rows L2-normalised, computed with the current weights (no grad)."""

    @abstractmethod
    def update(self, images: np.ndarray) -> dict[str, float]:
        """Train on ``images`` (new finds already mixed with replay and target images).

        Returns scalars for logging, at least ``loss`` and ``steps``.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser and RNG state: enough to continue bit-for-bit where possible."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
