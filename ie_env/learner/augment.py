"""Batched SSL view augmentation on uint8 image tensors.

Every random parameter (crop box, flip, jitter factors, ...) is drawn on the CPU from a caller-owned
``torch.Generator``, so a view is a pure function of the pixels and the generator state, on any device.
The pixel work is vectorised over the batch:

* RandomResizedCrop: boxes sampled as torchvision's ``RandomResizedCrop.get_params`` does (10 tries
  of area/aspect, then a centre-crop fallback), applied to the whole batch in one
  ``torchvision.ops.roi_align`` call (bilinear when enlarging, area-averaging when shrinking); the
  ``"torchvision"`` backend applies the same boxes per sample with ``transforms.v2.functional``.
* flip, colour jitter (brightness, contrast, saturation, hue; fixed order), grayscale, Gaussian
  blur and solarisation, each with its own per-sample probability, then normalisation.

Colour carries class information in the embedded world, so jitter defaults are mild and every
probability is a config value (DESIGN section 3a, point 2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.299, 0.587, 0.114)

CropBackend = Literal["roi_align", "torchvision"]


@dataclass(frozen=True)
class ViewSpec:
    """How one view is drawn. ``jitter`` = (brightness, contrast, saturation, hue) strengths."""

    size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.1, 0.1, 0.05, 0.025)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of the output view
    solarize_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"view size must be >= 1, got {self.size}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if any(j < 0 for j in self.jitter) or self.jitter[3] > 0.5:
            raise ValueError(f"jitter strengths must be >= 0 (hue <= 0.5), got {self.jitter}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur sigma must satisfy 0 < min <= max, got {self.blur_sigma}")


def to_tensor_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate ``uint8 (N, H, W, 3)`` images and return a ``uint8 (N, 3, H, W)`` tensor view."""
    if isinstance(images, torch.Tensor):
        arr = images
    elif isinstance(images, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            arr = torch.from_numpy(np.ascontiguousarray(images))
    else:
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if arr.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(arr.shape)}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"images must have a positive height and width, got {tuple(arr.shape)}")
    return arr.permute(0, 3, 1, 2)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> torch.Tensor:
    """``(n, 4)`` integer-valued float boxes ``(x1, y1, x2, y2)``, RandomResizedCrop's rule."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, tries, generator=generator, dtype=torch.float64
    )
    ar = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * ar))
    h = torch.round(torch.sqrt(target / ar))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # Fallback: the largest centre crop whose aspect ratio lies within ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u[:, 1] * (width - w + 1)).clamp(max=width - w)
    return torch.stack([left, top, left + w, top + h], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, backend: CropBackend = "roi_align") -> torch.Tensor:
    """Crop ``boxes`` out of ``x`` (uint8 or float ``(N, 3, H, W)``), resize to ``size``; float [0, 1]."""
    if backend == "roi_align":
        xf = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        idx = torch.arange(x.shape[0], dtype=torch.float64)[:, None]
        rois = torch.cat([idx, boxes], dim=1).to(device=x.device, dtype=xf.dtype)
        return roi_align(xf, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if backend == "torchvision":
        out = []
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            out.append(
                TF.resized_crop(x[i], int(y1), int(x1), int(y2 - y1), int(x2 - x1), [size, size], antialias=True)
            )
        y = torch.stack(out)
        return y.float().div_(255.0) if y.dtype == torch.uint8 else y.float()
    raise ValueError(f"unknown crop backend {backend!r}; use 'roi_align' or 'torchvision'")


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` luma of float RGB ``x``."""
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """Float RGB in [0, 1] -> HSV in [0, 1] (all channels), vectorised. Grey pixels get hue 0."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = x.amax(dim=1)
    delta = maxc - x.amin(dim=1)
    inv = 1.0 / delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h = torch.where(delta > 0, h, torch.zeros_like(h)).div_(6.0).remainder_(1.0)
    s = delta / maxc.clamp_min(1e-12)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (the ``f(n) = v - v s max(0, min(k, 4 - k, 1))`` form)."""
    h, s, v = x.unbind(dim=1)
    chans = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        chans.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(chans, dim=1)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply per-sample ``factors`` ``(N, 4)`` = brightness, contrast, saturation (multiplicative,
    1 = identity) and hue shift (in turns, 0 = identity) to float RGB ``x`` in [0, 1]."""
    b, c, s, hue = (_per_sample(factors[:, i], x) for i in range(4))
    x = (x * b).clamp_(0.0, 1.0)
    mean = grayscale(x).mean(dim=(2, 3), keepdim=True)
    x = (c * x + (1.0 - c) * mean).clamp_(0.0, 1.0)
    x = (s * x + (1.0 - s) * grayscale(x)).clamp_(0.0, 1.0)
    if bool((factors[:, 3] != 0).any()):
        hsv = rgb_to_hsv(x)
        hsv = torch.cat([(hsv[:, :1] + hue) % 1.0, hsv[:, 1:]], dim=1)
        x = hsv_to_rgb(hsv).clamp_(0.0, 1.0)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` ``(N,)`` (reflect padding)."""
    n, c, hgt, wid = x.shape
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    radius = min(radius, hgt - 1, wid - 1) if min(hgt, wid) > 1 else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sig = sigma.to(device=x.device, dtype=x.dtype).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / sig) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (N, K)
    k = k.repeat_interleave(c, dim=0)  # (N*C, K)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, hgt, wid)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def random_view(
    x: torch.Tensor,
    spec: ViewSpec,
    generator: torch.Generator,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    backend: CropBackend = "roi_align",
) -> torch.Tensor:
    """One augmented, normalised float view ``(N, 3, size, size)`` of uint8 ``x`` ``(N, 3, H, W)``."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    n, _, hgt, wid = x.shape
    g = generator
    boxes = sample_crop_boxes(n, hgt, wid, spec.scale, spec.ratio, g)
    v = crop_resize(x, boxes, spec.size, backend)
    if spec.flip_prob > 0:
        flip = _bernoulli(n, spec.flip_prob, g).to(v.device).view(-1, 1, 1, 1)
        v = torch.where(flip, v.flip(-1), v)
    bj, cj, sj, hj = spec.jitter
    if spec.jitter_prob > 0 and (bj or cj or sj or hj):
        on = _bernoulli(n, spec.jitter_prob, g)
        f = torch.stack(
            [
                _uniform(n, max(0.0, 1 - bj), 1 + bj, g),
                _uniform(n, max(0.0, 1 - cj), 1 + cj, g),
                _uniform(n, max(0.0, 1 - sj), 1 + sj, g),
                _uniform(n, -hj, hj, g),
            ],
            dim=1,
        ).float()
        identity = torch.tensor([1.0, 1.0, 1.0, 0.0])
        f = torch.where(on[:, None], f, identity)
        v = color_jitter(v, f)
    if spec.grayscale_prob > 0:
        gray = _bernoulli(n, spec.grayscale_prob, g).to(v.device).view(-1, 1, 1, 1)
        v = torch.where(gray, grayscale(v).expand_as(v), v)
    if spec.blur_prob > 0:
        on = _bernoulli(n, spec.blur_prob, g)
        sigma = _uniform(n, spec.blur_sigma[0], spec.blur_sigma[1], g).float()
        v = torch.where(on.to(v.device).view(-1, 1, 1, 1), gaussian_blur(v, sigma), v)
    if spec.solarize_prob > 0:
        on = _bernoulli(n, spec.solarize_prob, g).to(v.device).view(-1, 1, 1, 1)
        v = torch.where(on & (v >= 0.5), 1.0 - v, v)
    return normalize(v, mean, std)


class MultiViewAugment:
    """Draws one view per :class:`ViewSpec` from the same batch (two specs = MoCo's two views)."""

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        backend: CropBackend = "roi_align",
    ) -> None:
        if not specs:
            raise ValueError("need at least one view spec")
        self.specs = list(specs)
        self.mean, self.std, self.backend = tuple(mean), tuple(std), backend

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        return [random_view(x, s, generator, self.mean, self.std, self.backend) for s in self.specs]


def eval_transform(
    x: torch.Tensor, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Deterministic view for features: resize the shorter side to ``size``, centre-crop, normalise."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, [size], antialias=True)
        x = TF.center_crop(x, [size, size])
    return normalize(x.float().div_(255.0), mean, std)
