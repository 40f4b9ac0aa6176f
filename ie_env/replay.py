"""Replay buffer of the best earlier finds (paper: the top 50% of each iteration's new images)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ReplayBuffer:
    """Images with their rewards; ``add_top`` keeps the best ``fraction`` of a batch."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = int(capacity)  # 0 = unbounded
        self.images: np.ndarray | None = None
        self.rewards = np.zeros(0, dtype=np.float32)

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def add_top(self, images: np.ndarray, rewards: np.ndarray, fraction: float = 0.5) -> int:
        """Add the ``fraction`` highest-reward images of the batch; returns how many were added."""
        if len(images) == 0:
            return 0
        keep = int(np.ceil(len(images) * fraction))
        order = np.argsort(-np.asarray(rewards), kind="stable")[:keep]
        self.add_sorted(images[order], np.asarray(rewards, dtype=np.float32)[order])
        return keep

    def add_sorted(self, imgs: np.ndarray, rw: np.ndarray) -> int:
        """Add rows already chosen and ordered as ``add_top`` does (best first); returns how many."""
        keep = len(imgs)
        if self.images is None:
            self.images, self.rewards = imgs.copy(), rw.copy()
        elif not self.capacity and self.images.ndim == 2 and imgs.ndim == 2 and imgs.dtype == self.images.dtype:
            self._append_rows(imgs, rw)
        else:
            self.images = np.concatenate([self.images, imgs])
            self.rewards = np.concatenate([self.rewards, rw])
        if self.capacity and len(self.images) > self.capacity:
            best = np.sort(np.argsort(-self.rewards, kind="stable")[: self.capacity])
            self.images, self.rewards = self.images[best], self.rewards[best]
        return keep

    def _append_rows(self, imgs: np.ndarray, rw: np.ndarray) -> None:
        """Append rows (vectors, as the latent fidelity's) into storage that grows by doubling:
        ``images`` and ``rewards`` stay contiguous views, and an append copies only the new rows."""
        n, m = len(self.images), len(imgs)
        buf = getattr(self, "_buf", None)
        if buf is None or self.images.base is not buf[0] or len(buf[0]) < n + m:
            cap = max(2 * (n + m), 64)
            grown = (np.empty((cap, self.images.shape[1]), self.images.dtype), np.empty(cap, np.float32))
            grown[0][:n], grown[1][:n] = self.images, self.rewards
            buf = self._buf = grown
        buf[0][n : n + m], buf[1][n : n + m] = imgs, rw
        self.images, self.rewards = buf[0][: n + m], buf[1][: n + m]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "images": self.images, "rewards": self.rewards}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.images = state["images"]
        self.rewards = state["rewards"]
