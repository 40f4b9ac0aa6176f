"""DINO self-distillation (Caron et al. 2021), with DINOv2's KoLeo term as an option.

The student (backbone + :class:`DINOHead`) sees every crop; the teacher, an EMA copy of the student,
sees the global crops only. Teacher outputs are centred (EMA of their batch mean) and sharpened with a
low temperature; the loss is the cross-entropy between the teacher's and the student's distributions
over the prototypes, averaged over every (teacher crop, other student crop) pair.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ie_env.learner.koleo import KoLeoLoss
from ie_env.learner.moco import ema_update


def cosine_momentum(step: int, total: int, base: float) -> float:
    """EMA momentum rising from ``base`` at ``step = 0`` to 1 at ``step = total`` (half cosine)."""
    if total <= 0:
        return base
    t = min(max(step, 0), total) / total
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def auto_out_dim(feature_dim: int) -> int:
    """Prototype count scaled to the backbone: 16 x its width, rounded to a power of 2, in [1024, 65536]."""
    return int(min(65536, max(1024, 2 ** round(math.log2(16 * feature_dim)))))


class DINOHead(nn.Module):
    """MLP (GELU) -> L2-normalised bottleneck -> cosine layer onto ``out_dim`` prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1 or out_dim < 1:
            raise ValueError(f"need layers >= 1 and out_dim >= 1, got {layers}, {out_dim}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student; keeps the EMA center."""

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9
    ):
        super().__init__()
        if student_temp <= 0 or teacher_temp <= 0 or not 0.0 <= center_momentum <= 1.0:
            raise ValueError("DINO temperatures must be > 0 and the center momentum in [0, 1]")
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        n_student: int,
        n_teacher: int = 2,
        teacher_temp: float | None = None,
    ) -> torch.Tensor:
        """``student_out`` ``(n_student * B, K)``, ``teacher_out`` ``(n_teacher * B, K)``; crop j of the
        teacher is crop j of the student (the global crops come first)."""
        if n_student < 2 or n_teacher < 1 or n_teacher > n_student:
            raise ValueError(f"need n_student >= 2 and 1 <= n_teacher <= n_student, got {n_student}, {n_teacher}")
        tt = self.teacher_temp if teacher_temp is None else teacher_temp
        s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_student)
        t = F.softmax((teacher_out.float() - self.center) / tt, dim=-1).detach().chunk(n_teacher)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for i, ti in enumerate(t):
            for j, sj in enumerate(s):
                if i != j:
                    total = total + (-(ti * sj).sum(dim=-1)).mean()
                    terms += 1
        self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.float().mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


class DINO(nn.Module):
    """Student (``backbone`` + ``head``), EMA teacher, DINO loss and optional KoLeo on global features."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        koleo_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in list(self.teacher_backbone.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.loss = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum)
        self.koleo = KoLeoLoss(koleo_weight, chunks=2)

    def online_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher_")]

    def forward(
        self, views: Sequence[torch.Tensor], teacher_temp: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``views``: 2 global crops (same size), then any number of local crops (same size)."""
        if len(views) < 2:
            raise ValueError(f"DINO needs 2 global crops (+ optional local crops), got {len(views)} views")
        glob = torch.cat(list(views[:2]))
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(glob))
        f_glob = self.backbone(glob)
        s = [self.head(f_glob)]
        if len(views) > 2:
            s.append(self.head(self.backbone(torch.cat(list(views[2:])))))
        dino = self.loss(torch.cat(s), t, n_student=len(views), n_teacher=2, teacher_temp=teacher_temp)
        koleo = self.koleo(f_glob)
        return dino + koleo, {"dino": dino.detach(), "koleo": koleo.detach()}

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
