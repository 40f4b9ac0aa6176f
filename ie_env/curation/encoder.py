"""The image encoder curation embeds with: any timm backbone, from local weights or a run's learner.

Weights come from ``checkpoint`` (a plain state dict, a MoCo-v3/DINO checkpoint, or an
``SSLLearner`` state, as :func:`ie_env.learner.ssl.load_backbone_checkpoint` reads them) or from timm's
hub when ``pretrained`` is set and a network or warm cache is there. Features are the backbone's pooled
output, L2-normalised, on the deterministic evaluation view (resize, centre crop, normalise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ie_env.config import ConfigError
from ie_env.learner.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from ie_env.learner.ssl import SSLConfig, create_backbone


def checkpoint_image_size(path: str) -> int | None:
    """The ``image_size`` an ``SSLLearner`` state was trained at, when the file records one."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the backbone loader, with the reason
        return None
    for key in ("learner", "ssl"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    cfg = obj.get("config") if isinstance(obj, dict) else None
    size = cfg.get("image_size") if isinstance(cfg, dict) else None
    return int(size) if isinstance(size, int) else None


class ImageEncoder:
    """``encode(images) -> (N, D)`` float32 L2-normalised features of ``uint8 (N, H, W, 3)`` images.

    :param backbone: a timm model name.
    :param image_size: the side the encoder sees.
    :param checkpoint: local weights (see module docstring); its recorded image size must match.
    :param pretrained: timm hub weights (needs a network or a warm cache).
    :param device: ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        image_size: int = 32,
        checkpoint: str | None = None,
        pretrained: bool = False,
        device: str = "cpu",
        batch_size: int = 256,
    ) -> None:
        if checkpoint:
            trained = checkpoint_image_size(checkpoint)
            if trained is not None and trained != image_size:
                raise ConfigError(
                    f"encoder checkpoint {checkpoint} was trained at image_size {trained}, but curation embeds at "
                    f"{image_size}: pass --set encoder.image_size={trained}"
                )
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("encoder device 'cuda' requested but CUDA is not available")
        cfg = SSLConfig(
            backbone=backbone, image_size=image_size, checkpoint=checkpoint, pretrained=pretrained, device="cpu"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = create_backbone(cfg).eval().to(device)
        pcfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean = tuple(pcfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(pcfg.get("std", IMAGENET_STD))
        self.image_size, self.device, self.batch_size = image_size, torch.device(device), batch_size
        self.dim = int(self.model.num_features)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        """Images may differ in size: each is resized (shorter side) and centre-cropped first."""
        out = np.zeros((len(images), self.dim), np.float32)
        for s in range(0, len(images), self.batch_size):
            batch = [
                torch.from_numpy(np.array(im, np.uint8)).permute(2, 0, 1)[None]
                for im in images[s : s + self.batch_size]
            ]
            views = torch.cat([eval_transform(b, self.image_size, self.mean, self.std) for b in batch])
            f = F.normalize(self.model(views.to(self.device)).float(), dim=1)
            out[s : s + len(batch)] = f.cpu().numpy()
        return out
