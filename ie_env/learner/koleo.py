"""KoLeo regulariser (Sablayrolles et al. 2019, as used by DINOv2).

Kozachenko-Leonenko differential-entropy estimate on the unit sphere: with ``x`` L2-normalised and
``d_i`` the distance from ``x_i`` to its nearest other row, ``loss = -mean_i log(d_i + eps)``.
Minimising it spreads the features of a batch apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nearest_neighbours(x: torch.Tensor) -> torch.Tensor:
    """Index of each row's most similar *other* row (inner product)."""
    sims = x @ x.t()
    sims.fill_diagonal_(float("-inf"))
    return sims.argmax(dim=1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean log ||x_i - x_nn(i)||`` over L2-normalised rows of ``x`` ``(N, D)``, N >= 2."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"KoLeo needs a (N, D) batch with N >= 2, got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):  # float32 under AMP
        x = F.normalize(x.float(), dim=1, eps=eps)
        with torch.no_grad():
            nn_idx = nearest_neighbours(x)
        dist = torch.linalg.vector_norm(x - x[nn_idx] + eps, dim=1)
        return -torch.log(dist + eps).mean()


class KoLeoLoss(nn.Module):
    """``weight * koleo_loss``, summed over ``chunks`` of the batch (DINOv2: one chunk per global crop)."""

    def __init__(self, weight: float = 0.1, chunks: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if weight < 0 or chunks < 1:
            raise ValueError(f"need weight >= 0 and chunks >= 1, got {weight}, {chunks}")
        self.weight, self.chunks, self.eps = float(weight), int(chunks), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight == 0:
            return x.new_zeros((), dtype=torch.float32)
        return self.weight * sum(koleo_loss(c, self.eps) for c in x.chunk(self.chunks))
