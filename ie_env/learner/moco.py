"""MoCo-v3 (Chen, Xie, He 2021) for a single process: loss, heads and the momentum encoder.

Online branch: backbone -> projector MLP (BN) -> predictor MLP. Momentum branch: an EMA copy of
backbone + projector. Loss: ``ctr(q1, k2) + ctr(q2, k1)``, each an InfoNCE over the batch with the
positives on the diagonal, scaled by ``2 T`` as in MoCo-v3.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def build_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo-v3 MLP: (Linear no-bias, BN, ReLU) x (L-1), Linear no-bias, [BN without affine]."""
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries ``q`` against keys ``k`` (row i of each is a positive pair), times ``2 T``."""
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(f"q and k must be (N, D) of the same shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    with torch.autocast(device_type=q.device.type, enabled=False):  # logits in float32 under AMP
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        logits = q @ k.t() / temperature
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, labels) * (2.0 * temperature)


def symmetric_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo-v3's ``ctr(q1, k2) + ctr(q2, k1)``."""
    return contrastive_loss(q1, k2, temperature) + contrastive_loss(q2, k1, temperature)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * source`` over parameters (buffers are the target's own)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t = [p.data for p in target.parameters()]
    s = [p.data for p in source.parameters()]
    if len(t) != len(s):
        raise ValueError("EMA target and source have different parameter lists")
    if momentum < 1.0:
        torch._foreach_lerp_(t, s, 1.0 - momentum)


class MoCoV3(nn.Module):
    """Online encoder (backbone, projector, predictor) and its momentum copy."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        hidden_dim: int = 4096,
        proj_dim: int = 256,
        temperature: float = 1.0,
        proj_layers: int = 3,
        pred_layers: int = 2,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.backbone = backbone
        self.projector = build_mlp(proj_layers, feature_dim, hidden_dim, proj_dim, last_bn=True)
        self.predictor = build_mlp(pred_layers, proj_dim, hidden_dim, proj_dim, last_bn=False)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)

    def momentum_parameters(self) -> list[nn.Parameter]:
        return list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters())

    def online_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters the optimiser trains (the momentum branch is excluded)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("momentum_")]

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"MoCo-v3 takes exactly two views, got {len(views)}")
        x1, x2 = views
        q1 = self.predictor(self.projector(self.backbone(x1)))
        q2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = symmetric_loss(q1, q2, k1, k2, self.temperature)
        return loss, {}

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        ema_update(self.momentum_backbone, self.backbone, momentum)
        ema_update(self.momentum_projector, self.projector, momentum)
