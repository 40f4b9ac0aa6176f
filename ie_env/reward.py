"""The paper's reward: image = mean cosine similarity to its k nearest target features; query =
mean of its top-10 image rewards."""

from __future__ import annotations

import numpy as np
import torch


def image_rewards(image_feats: torch.Tensor, target_feats: torch.Tensor, k: int = 15) -> torch.Tensor:
    """``(n,)`` mean cosine similarity of each image to its ``k`` nearest targets.

    Both inputs are L2-normalised ``(n, D)`` / ``(T, D)``; ``k`` is capped at ``T``.
    """
    if image_feats.shape[0] == 0:
        return image_feats.new_zeros(0)
    k = min(int(k), target_feats.shape[0])
    sims = image_feats @ target_feats.T
    return sims.topk(k, dim=1).values.mean(dim=1)


def query_reward(rewards: np.ndarray | torch.Tensor, top: int = 10) -> float:
    """Mean of the ``top`` highest image rewards of one query (all of them if fewer)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if r.numel() == 0:
        return 0.0
    return float(r.topk(min(top, r.numel())).values.mean())
