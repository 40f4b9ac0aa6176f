"""LARS (You, Gitman, Ginsburg 2017) as MoCo-v3 / BYOL use it.

For an adapted parameter ``w`` with gradient ``g``::

    u = g + wd * w
    u = u * eta * ||w|| / ||u||      (only when both norms are > 0)
    mu = momentum * mu + u
    w = w - lr * mu

Parameters that are *excluded* (biases and normalisation weights: every parameter with ``ndim <= 1``
by default, or every parameter of a group with ``exclude=True``) get neither weight decay nor the
trust ratio: plain SGD with momentum.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        exclude: bool | None = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight decay {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"invalid trust coefficient {trust_coefficient}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "exclude": exclude,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _excluded(group: dict[str, Any], p: torch.Tensor) -> bool:
        flag = group.get("exclude")
        return p.ndim <= 1 if flag is None else bool(flag)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                if not self._excluded(group, p):
                    if group["weight_decay"]:
                        u = u.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(u)
                    ratio = group["trust_coefficient"] * w_norm / u_norm.clamp_min(torch.finfo(u_norm.dtype).tiny)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                    u = u * ratio
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(u)
                p.add_(mu, alpha=-group["lr"])
        return loss
