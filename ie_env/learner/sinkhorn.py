"""Sinkhorn-Knopp centering of teacher outputs (Caron et al. 2020, SwAV; used by DINOv2).

DINO centres the teacher with an EMA of its batch mean; DINOv2 replaces that with a few Sinkhorn-Knopp
iterations that turn ``exp(logits / T)`` into a doubly-normalised assignment matrix: every sample's row
is a probability distribution over the K prototypes, and every prototype receives the same total mass
``B / K`` over the batch. Balanced assignments prevent collapse onto a few prototypes without a running
statistic, so the teacher target depends on the current batch only.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments ``(B, K)`` from teacher ``logits`` ``(B, K)``.

    Alternately rescales the prototype sums to ``1 / K`` and the sample sums to ``1 / B``
    (``iterations`` times each, prototypes first), then scales by ``B`` so each row sums to one.

    :param logits: teacher outputs, one row per sample.
    :param temperature: softmax temperature (DINOv2's teacher temperature, e.g. 0.04-0.07).
    :param iterations: Sinkhorn iterations (DINOv2 uses 3).
    :return: float32 tensor whose rows sum to 1 and whose columns sum to about ``B / K``.
    """
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"sinkhorn_knopp needs a (B, K) tensor, got shape {tuple(logits.shape)}")
    if temperature <= 0 or iterations < 1:
        raise ValueError(f"need temperature > 0 and iterations >= 1, got {temperature}, {iterations}")
    x = logits.float() / temperature
    # Subtracting the global max changes nothing after normalisation and keeps exp() finite.
    q = torch.exp(x - x.max()).t()  # (K, B)
    n_proto, n_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / n_proto
        q = q / q.sum(dim=0, keepdim=True) / n_samples
    return (q * n_samples).t()
