"""iBOT's masked-patch objective (Zhou et al. 2022, as used by DINOv2) for timm Vision Transformers.

The student sees its global crops with some patch tokens replaced by a learned mask token; the teacher
sees them whole. For every masked patch the student's prototype distribution is trained towards the
teacher's distribution for that same patch (cross-entropy, teacher centred and sharpened). Per image
the loss is averaged over its masked patches, then over the images that have any mask, so the loss
scale does not depend on how many images are masked.

Masks here are uniformly random patches (one of the two masking schemes iBOT reports), drawn for a
fraction ``prob`` of the images with a masking ratio spread evenly over ``ratio`` across them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def random_patch_masks(
    batch: int, num_patches: int, ratio: tuple[float, float] = (0.1, 0.5), prob: float = 0.5, device: str = "cpu"
) -> torch.Tensor:
    """``(batch, num_patches)`` bool masks drawn with torch's global generator.

    The first ``round(prob * batch)`` images are masked, image ``i`` of those ``m`` with ratio
    ``ratio[0] + (ratio[1] - ratio[0]) * i / m`` (at least one patch each); the rest are not masked.

    :param batch: number of images.
    :param num_patches: patch tokens per image.
    :param ratio: smallest and largest share of an image's patches to mask.
    :param prob: share of the images that are masked at all.
    :param device: where the masks live.
    """
    lo, hi = ratio
    if not (0.0 <= lo <= hi <= 1.0) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"need 0 <= ratio[0] <= ratio[1] <= 1 and prob in [0, 1], got {ratio}, {prob}")
    if batch < 0 or num_patches < 1:
        raise ValueError(f"need batch >= 0 and num_patches >= 1, got {batch}, {num_patches}")
    masks = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    n_masked = round(prob * batch)
    for i in range(n_masked):
        r = lo + (hi - lo) * i / max(n_masked, 1)
        k = min(num_patches, max(1, math.floor(r * num_patches)))
        order = torch.rand(num_patches, device=device).argsort()
        masks[i, order[:k]] = True
    return masks


def ibot_patch_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    image_index: torch.Tensor,
    n_images: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Masked-patch cross-entropy.

    :param student_logits: ``(M, K)`` student prototype scores of the M masked patches.
    :param teacher_probs: ``(M, K)`` teacher distributions for the same patches (rows sum to 1).
    :param image_index: ``(M,)`` index of the image each patch belongs to, in ``[0, n_images)``.
    :param n_images: number of images in the batch.
    :param student_temp: student softmax temperature.
    :return: mean over images with any masked patch of the mean over their patches of
        ``-sum_k t_k log softmax(s / student_temp)_k``; zero when nothing is masked.
    """
    if student_logits.shape != teacher_probs.shape or student_logits.ndim != 2:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_probs.shape)} differ")
    if student_logits.shape[0] == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    ce = -(teacher_probs.float() * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    per_image = torch.zeros(n_images, dtype=torch.float32, device=ce.device).index_add_(0, image_index, ce)
    counts = torch.zeros(n_images, dtype=torch.float32, device=ce.device).index_add_(
        0, image_index, torch.ones_like(ce)
    )
    has = counts > 0
    return (per_image[has] / counts[has]).mean()


def is_token_backbone(model: nn.Module) -> bool:
    """True for timm Vision Transformers, whose patch tokens :func:`vit_tokens` can mask and read."""
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"))


def num_patch_tokens(model: nn.Module, height: int, width: int) -> int:
    """Patch tokens a timm ViT makes of an ``height x width`` image."""
    ph, pw = model.patch_embed.patch_size
    return (height // ph) * (width // pw)


def vit_tokens(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm ViT on ``x``, replacing masked patch embeddings by ``mask_token``.

    :return: the pooled image feature (what ``model(x)`` returns with ``num_classes=0``) and the
        ``(B, N, D)`` patch tokens after the final norm (prefix tokens removed).
    """
    if not is_token_backbone(model):
        raise ValueError(f"iBOT needs a timm Vision Transformer backbone (e.g. vit_tiny_*), got {type(model).__name__}")
    t = model.patch_embed(x)
    if masks is not None:
        if mask_token is None:
            raise ValueError("masks given without a mask token")
        m = masks.reshape(t.shape[:-1]).unsqueeze(-1)
        t = torch.where(m, mask_token.to(t.dtype).reshape(*([1] * (t.ndim - 1)), -1), t)
    t = model._pos_embed(t)
    t = model.patch_drop(t)
    t = model.norm_pre(t)
    t = model.blocks(t)
    t = model.norm(t)
    pooled = model.forward_head(t)
    return pooled, t[:, model.num_prefix_tokens :].reshape(t.shape[0], -1, t.shape[-1])
