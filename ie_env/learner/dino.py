"""DINO self-distillation (Caron et al. 2021), with DINOv2's additions as options.

The student (backbone + :class:`DINOHead`) sees every crop; the teacher, an EMA copy of the student,
sees the global crops only. Teacher outputs are centred (EMA of their batch mean, or DINOv2's
Sinkhorn-Knopp, :mod:`ie_env.learner.sinkhorn`) and sharpened with a low temperature; the loss is the
cross-entropy between the teacher's and the student's distributions over the prototypes, averaged over
every (teacher crop, other student crop) pair. DINOv2's options: the KoLeo term on the student's
global features, and for ViT backbones iBOT's masked-patch loss (:mod:`ie_env.learner.ibot`), where the
student sees its global crops with masked patches and predicts the teacher's distribution for each.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ie_env.learner.ibot import ibot_patch_loss, is_token_backbone, num_patch_tokens, random_patch_masks, vit_tokens
from ie_env.learner.koleo import KoLeoLoss
from ie_env.learner.moco import ema_update
from ie_env.learner.sinkhorn import sinkhorn_knopp

CENTERINGS = ("ema", "sinkhorn")


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
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
        centering: str = "ema",
    ):
        super().__init__()
        if student_temp <= 0 or teacher_temp <= 0 or not 0.0 <= center_momentum <= 1.0:
            raise ValueError("DINO temperatures must be > 0 and the center momentum in [0, 1]")
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float | None = None) -> torch.Tensor:
        """Centred, sharpened teacher distributions ``(N, K)``: softmax of ``(t - center) / T`` for EMA
        centering, balanced Sinkhorn-Knopp assignments otherwise (the EMA center is not updated here)."""
        tt = self.teacher_temp if teacher_temp is None else teacher_temp
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_out, tt)
        return F.softmax((teacher_out.float() - self.center) / tt, dim=-1)

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
        s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_student)
        t = self.teacher_probs(teacher_out, teacher_temp).chunk(n_teacher)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for i, ti in enumerate(t):
            for j, sj in enumerate(s):
                if i != j:
                    total = total + (-(ti * sj).sum(dim=-1)).mean()
                    terms += 1
        if self.centering == "ema":
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
        centering: str = "ema",
        ibot_weight: float = 0.0,
        ibot_mask_ratio: tuple[float, float] = (0.1, 0.5),
        ibot_mask_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if ibot_weight < 0:
            raise ValueError(f"ibot_weight must be >= 0, got {ibot_weight}")
        if ibot_weight > 0 and not is_token_backbone(backbone):
            raise ValueError(
                f"iBOT (ibot_weight > 0) needs a timm Vision Transformer backbone, got {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.head = DINOHead(feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in list(self.teacher_backbone.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.loss = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum, centering)
        self.koleo = KoLeoLoss(koleo_weight, chunks=2)
        self.ibot_weight = float(ibot_weight)
        self.ibot_mask_ratio, self.ibot_mask_prob = tuple(ibot_mask_ratio), float(ibot_mask_prob)
        if self.ibot_weight > 0:
            self.ibot_loss = DINOLoss(out_dim, student_temp, teacher_temp, center_momentum, centering)
            self.mask_token = nn.Parameter(torch.zeros(1, int(backbone.num_features)))

    def online_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher_")]

    def forward(
        self, views: Sequence[torch.Tensor], teacher_temp: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``views``: 2 global crops (same size), then any number of local crops (same size)."""
        if len(views) < 2:
            raise ValueError(f"DINO needs 2 global crops (+ optional local crops), got {len(views)} views")
        glob = torch.cat(list(views[:2]))
        if self.ibot_weight > 0:
            return self._forward_ibot(glob, views, teacher_temp)
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(glob))
        f_glob = self.backbone(glob)
        s = [self.head(f_glob)]
        if len(views) > 2:
            s.append(self.head(self.backbone(torch.cat(list(views[2:])))))
        dino = self.loss(torch.cat(s), t, n_student=len(views), n_teacher=2, teacher_temp=teacher_temp)
        koleo = self.koleo(f_glob)
        return dino + koleo, {"dino": dino.detach(), "koleo": koleo.detach()}

    def _forward_ibot(
        self, glob: torch.Tensor, views: Sequence[torch.Tensor], teacher_temp: float | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DINO on the image features plus iBOT on the masked patch tokens of the global crops."""
        n_glob = glob.shape[0]
        masks = random_patch_masks(
            n_glob,
            num_patch_tokens(self.backbone, glob.shape[-2], glob.shape[-1]),
            self.ibot_mask_ratio,
            self.ibot_mask_prob,
            device=glob.device.type,
        )
        with torch.no_grad():
            t_cls, t_patch = vit_tokens(self.teacher_backbone, glob)
            t = self.teacher_head(t_cls)
            t_patch_logits = self.teacher_head(t_patch[masks])
        f_glob, s_patch = vit_tokens(self.backbone, glob, masks, self.mask_token)
        s = [self.head(f_glob)]
        if len(views) > 2:
            s.append(self.head(self.backbone(torch.cat(list(views[2:])))))
        dino = self.loss(torch.cat(s), t, n_student=len(views), n_teacher=2, teacher_temp=teacher_temp)
        image_index = masks.nonzero(as_tuple=True)[0]
        t_probs = self.ibot_loss.teacher_probs(t_patch_logits, teacher_temp) if len(image_index) else t_patch_logits
        ibot = ibot_patch_loss(
            self.head(s_patch[masks]), t_probs, image_index, n_glob, self.ibot_loss.student_temp
        )
        if self.ibot_loss.centering == "ema" and len(image_index):
            self.ibot_loss.update_center(t_patch_logits)
        koleo = self.koleo(f_glob)
        loss = dino + koleo + self.ibot_weight * ibot
        return loss, {"dino": dino.detach(), "koleo": koleo.detach(), "ibot": ibot.detach()}

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
