"""The pixel-fidelity learner: a timm backbone trained with MoCo-v3 (default) or DINO + KoLeo.

``SSLLearner.update(images)`` trains on exactly the given ``uint8 (N, H, W, 3)`` array for
``clamp(ceil(epochs_per_iteration * N / batch), min_steps, max_steps)`` steps (the paper's epochs
over new + replayed images); ``features(images)`` embeds with the online backbone. All randomness
(shuffling, augmentation, dropout inside the model) derives from the learner's own seeded generator,
and ``state_dict`` carries it, so a restored learner continues bit-for-bit on the CPU.

Defaults are sized for a 2-core CPU; :meth:`SSLConfig.paper` gives the paper's settings.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ie_env.config import ConfigError, to_dict
from ie_env.learner.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewAugment,
    ViewSpec,
    eval_transform,
    to_tensor_batch,
)
from ie_env.learner.base import Learner
from ie_env.learner.dino import DINO, auto_out_dim, cosine_momentum
from ie_env.learner.ibot import is_token_backbone
from ie_env.learner.lars import LARS
from ie_env.learner.moco import MoCoV3
from ie_env.learner.pretrained import BUILD_COMMAND, PretrainConfig, apply_init

STATE_FORMAT = "ie_env.SSLLearner/1"
# MoCo-v3's colour jitter (brightness, contrast, saturation, hue); ``color_jitter`` scales it.
BASE_JITTER = (0.4, 0.4, 0.2, 0.1)


@dataclass
class SSLConfig:
    """SSL learner settings. Defaults: a 2-core CPU at 32 px; ``SSLConfig.paper()``: the paper."""

    objective: Literal["mocov3", "dino"] = "mocov3"
    # Backbone: any timm model name, created with num_classes=0 (pooled features).
    backbone: str = "resnet18"
    pretrained: bool = False  # timm/HF-hub weights (needs network or a warm cache)
    checkpoint: str | None = None  # local weights for the backbone (timm, MoCo-v3 or SSLLearner state)
    # The start point (ie_env.learner.pretrained): "scratch" (timm's init), "pretrained" (the artifact
    # `ie-pretrain` builds for the env's world, backbone and recipe) or the path of a weights file.
    init: str = "scratch"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the budget of "pretrained"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {drop_path_rate: 0.1}
    image_size: int = 32
    # Optimisation.
    batch_size: int = 128  # paper 224
    optimizer: Literal["adamw", "lars", "sgd"] = "adamw"  # paper lars
    lr: float = 1e-3  # paper: LARS 0.8 * 224 / 256, constant
    weight_decay: float = 1e-4  # biases and norm weights are never decayed
    sgd_momentum: float = 0.9  # LARS / SGD momentum
    lars_trust_coefficient: float = 0.001
    lr_warmup_steps: int = 0  # linear warm-up over the first global steps (0 = constant lr)
    grad_clip: float | None = None  # max global grad norm (DINO uses 3.0)
    # Momentum (EMA) encoder / teacher.
    momentum_ema: float = 0.99  # paper 0.9985
    momentum_schedule: Literal["auto", "constant", "cosine"] = "auto"  # auto: MoCo constant, DINO cosine
    momentum_schedule_steps: int | None = None  # cosine horizon in global steps; None = each update()
    # MoCo-v3 heads and loss.
    temperature: float = 0.2  # MoCo-v3 ViT 0.2, ResNet 1.0
    proj_dim: int = 256
    hidden_dim: int = 1024  # paper 4096
    proj_layers: int = 3
    pred_layers: int = 2
    # Augmentation (colour is class-relevant in the embedded world: keep jitter mild).
    crop_min_scale: float = 0.2
    flip_prob: float = 0.5
    color_jitter: float = 0.25  # strength: multiplies MoCo-v3's (0.4, 0.4, 0.2, 0.1); paper 1.0
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.0  # paper 0.2
    blur_prob: tuple[float, float] = (0.0, 0.0)  # per global view; paper (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at 224 px, scaled to image_size
    solarize_prob: tuple[float, float] = (0.0, 0.0)  # per global view; paper (0.0, 0.2)
    crop_backend: Literal["roi_align", "torchvision"] = "roi_align"
    # DINO (+ KoLeo) objective.
    dino_out_dim: int | None = None  # prototypes; None = 16 x backbone width (power of 2, 1024..65536)
    dino_hidden_dim: int = 1024  # DINO 2048
    dino_bottleneck_dim: int = 256
    dino_student_temp: float = 0.1
    dino_teacher_temp: float = 0.04
    dino_warmup_teacher_temp: float = 0.04
    dino_warmup_teacher_temp_steps: int = 0
    dino_center_momentum: float = 0.9
    dino_local_crops: int = 0  # DINO 8-10
    dino_local_size: int | None = None  # None = round(image_size * 96 / 224)
    dino_local_scale: tuple[float, float] = (0.05, 0.4)
    koleo_weight: float = 0.1  # 0 disables KoLeo
    dino_centering: Literal["ema", "sinkhorn"] = "ema"  # DINOv2: sinkhorn (Sinkhorn-Knopp)
    ibot_weight: float = 0.0  # iBOT masked-patch loss (ViT backbones); DINOv2 1.0, 0 disables it
    ibot_mask_ratio: tuple[float, float] = (0.1, 0.5)  # share of a masked image's patches
    ibot_mask_prob: float = 0.5  # share of global crops that are masked
    # Step budget: steps = clamp(ceil(epochs * N / batch), min_steps, max_steps).
    epochs_per_iteration: float = 1.0  # paper 10
    min_steps: int = 1
    max_steps: int | None = None
    # Runtime.
    eval_batch_size: int = 512
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = False  # helps on CUDA; measured neutral-to-slower on CPU
    deterministic: bool = False  # CUDA: deterministic cuDNN/algorithms (process-wide flags)
    num_threads: int | None = None  # torch.set_num_threads (process-wide) when set

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"learner config: {msg}")

        need(self.objective in ("mocov3", "dino"), f"objective must be 'mocov3' or 'dino', got {self.objective!r}")
        need(self.optimizer in ("adamw", "lars", "sgd"), f"unknown optimizer {self.optimizer!r}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        need(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        need(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        need(0.0 <= self.sgd_momentum < 1.0, f"sgd_momentum must be in [0, 1), got {self.sgd_momentum}")
        need(0.0 <= self.momentum_ema <= 1.0, f"momentum_ema must be in [0, 1], got {self.momentum_ema}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(0.0 < self.crop_min_scale <= 1.0, f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        need(self.color_jitter >= 0 and self.color_jitter * BASE_JITTER[3] <= 0.5, "color_jitter must be in [0, 5]")
        for name in ("flip_prob", "color_jitter_prob", "grayscale_prob"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        for name in ("blur_prob", "solarize_prob"):
            v = getattr(self, name)
            need(len(v) == 2 and all(0.0 <= p <= 1.0 for p in v), f"{name} must be two probabilities")
        need(len(self.blur_sigma) == 2 and 0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma: 0 < min <= max")
        lo, hi = self.dino_local_scale
        need(0.0 < lo <= hi <= 1.0, f"dino_local_scale must satisfy 0 < min <= max <= 1, got {self.dino_local_scale}")
        need(self.dino_local_crops >= 0 and self.koleo_weight >= 0, "dino_local_crops and koleo_weight must be >= 0")
        need(self.dino_out_dim is None or self.dino_out_dim >= 1, "dino_out_dim must be >= 1")
        need(self.dino_local_size is None or self.dino_local_size >= 4, "dino_local_size must be >= 4")
        need(self.dino_centering in ("ema", "sinkhorn"), f"dino_centering: ema or sinkhorn, got {self.dino_centering}")
        need(self.ibot_weight >= 0, f"ibot_weight must be >= 0, got {self.ibot_weight}")
        need(self.ibot_weight == 0 or self.objective == "dino", "ibot_weight > 0 needs objective 'dino'")
        mlo, mhi = self.ibot_mask_ratio
        need(0.0 <= mlo <= mhi <= 1.0, f"ibot_mask_ratio: need 0 <= min <= max <= 1, got {self.ibot_mask_ratio}")
        need(0.0 <= self.ibot_mask_prob <= 1.0, f"ibot_mask_prob must be in [0, 1], got {self.ibot_mask_prob}")
        need(self.epochs_per_iteration > 0, f"epochs_per_iteration must be > 0, got {self.epochs_per_iteration}")
        need(self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}")
        need(self.max_steps is None or self.max_steps >= self.min_steps, "max_steps must be >= min_steps")
        need(self.eval_batch_size >= 1 and self.lr_warmup_steps >= 0, "eval_batch_size >= 1, lr_warmup_steps >= 0")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or null")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1 or null")
        need(isinstance(self.init, str) and bool(self.init.strip()), "init must be scratch, pretrained or a file path")
        need(self.init == "scratch" or not self.checkpoint,
             f"set ssl.init ({self.init!r}) or ssl.checkpoint ({self.checkpoint!r}), not both")
        if isinstance(self.pretrain, dict):  # a plain mapping given to the constructor
            self.pretrain = PretrainConfig(**self.pretrain)
        self.pretrain.validate()

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def paper(cls, **overrides: Any) -> SSLConfig:
        """Internet Explorer's MoCo-v3 setting (ResNet-50, 224 px, LARS, batch 224, 10 epochs)."""
        base = cls(
            backbone="resnet50",
            image_size=224,
            batch_size=224,
            optimizer="lars",
            lr=0.8 * 224 / 256,
            weight_decay=1.5e-6,  # MoCo-v3 ResNet-50
            momentum_ema=0.9985,
            momentum_schedule="constant",
            temperature=1.0,  # MoCo-v3 ResNet-50
            hidden_dim=4096,
            proj_dim=256,
            color_jitter=1.0,
            grayscale_prob=0.2,
            blur_prob=(1.0, 0.1),
            solarize_prob=(0.0, 0.2),
            epochs_per_iteration=10.0,
        )
        return replace(base, **overrides)

    def planned_steps(self, n_images: int) -> int:
        """SSL steps that :meth:`SSLLearner.update` runs on ``n_images`` images."""
        if n_images < 2:
            return 0
        batch = min(self.batch_size, n_images)
        steps = max(self.min_steps, math.ceil(self.epochs_per_iteration * n_images / batch))
        return steps if self.max_steps is None else min(steps, self.max_steps)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("learner config: device 'cuda' requested but CUDA is not available")
    return torch.device(name)


def create_backbone(cfg: SSLConfig) -> nn.Module:
    """``timm.create_model(cfg.backbone, pretrained, num_classes=0)``, sized to ``image_size`` where the
    model takes an ``img_size`` (ViTs), then ``cfg.checkpoint`` loaded when given."""
    import timm

    extra: list[dict[str, Any]] = []
    if "img_size" not in cfg.backbone_kwargs:
        if cfg.objective == "dino" and cfg.dino_local_crops > 0:
            extra.append({"img_size": cfg.image_size, "dynamic_img_size": True})
        extra.append({"img_size": cfg.image_size})
    extra.append({})
    model = None
    for i, kw in enumerate(extra):
        try:
            model = timm.create_model(
                cfg.backbone, pretrained=cfg.pretrained, num_classes=0, **cfg.backbone_kwargs, **kw
            )
            break
        except TypeError:
            if i == len(extra) - 1:
                raise
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"learner config: unknown timm model {cfg.backbone!r}") from exc
            raise
    assert model is not None
    if cfg.checkpoint:
        load_backbone_checkpoint(model, cfg.checkpoint)
    return model


_PREFIXES = ("module.", "base_encoder.", "backbone.", "encoder.", "model.")


def load_backbone_checkpoint(model: nn.Module, path: str) -> None:
    """Load backbone weights from a local file: a plain state dict, a MoCo-v3 / DINO checkpoint
    (``state_dict`` / ``model`` / ``teacher`` entries, ``module.base_encoder.`` prefixes) or an
    ``SSLLearner.state_dict()``. Classifier/projection keys the backbone lacks are ignored."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"learner config: checkpoint {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"learner config: cannot read checkpoint {p}: {exc}") from exc
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"learner config: checkpoint {p} holds no state dict")
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        name = k
        changed = True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if name.startswith(pre) and name not in own:
                    name, changed = name[len(pre) :], True
        if name in own and own[name].shape == v.shape and not k.startswith(("momentum_", "teacher_")):
            mapped[name] = v
    if not mapped:
        raise ConfigError(f"learner config: checkpoint {p} has no weights matching backbone {type(model).__name__}")
    missing = [k for k in own if k not in mapped]
    if missing:
        warnings.warn(f"checkpoint {p}: {len(missing)} backbone tensors not found (e.g. {missing[:3]})", stacklevel=2)
    model.load_state_dict(mapped, strict=False)


def shuffled_batches(src: torch.Tensor, batch: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``batch`` rows of ``src``: passes in a fresh random order (``randperm`` from
    ``generator`` whenever the rest of a pass is shorter than a batch). Every learner draws its batches
    here, so equal seeds give equal batches in the single-process and the distributed learner."""
    n = int(src.shape[0])
    perm, pos = None, n
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        assert perm is not None
        idx = perm[pos : pos + batch]
        pos += batch
        yield src[idx.to(src.device)] if src.device.type != "cpu" else src[idx]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


class SSLLearner(Learner):
    """MoCo-v3 / DINO learner on uint8 image arrays (see module docstring)."""

    def __init__(self, cfg: SSLConfig | None = None, init_rebuild: str = "", **overrides: Any) -> None:
        """``init_rebuild``: the command that rebuilds ``cfg.init``'s file, named when it is missing or corrupt
        (the env passes it for ``init: pretrained``, which it resolves to the artifact's path)."""
        cfg = cfg or SSLConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        cfg.validate()
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = _resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
            if cfg.deterministic:
                torch.backends.cudnn.deterministic = True
                torch.use_deterministic_algorithms(True, warn_only=True)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            backbone = create_backbone(cfg)
            self.feature_dim = int(backbone.num_features)
            pcfg = getattr(backbone, "pretrained_cfg", None) or {}
            self.mean = tuple(pcfg.get("mean", IMAGENET_MEAN))
            self.std = tuple(pcfg.get("std", IMAGENET_STD))
            if cfg.objective == "mocov3":
                self.model: MoCoV3 | DINO = MoCoV3(
                    backbone,
                    self.feature_dim,
                    cfg.hidden_dim,
                    cfg.proj_dim,
                    cfg.temperature,
                    cfg.proj_layers,
                    cfg.pred_layers,
                )
            else:
                if cfg.ibot_weight > 0 and not is_token_backbone(backbone):
                    raise ConfigError(
                        f"learner config: ibot_weight > 0 needs a timm Vision Transformer backbone (e.g. "
                        f"vit_tiny_patch16_224), got {cfg.backbone!r}"
                    )
                self.model = DINO(
                    backbone,
                    self.feature_dim,
                    cfg.dino_out_dim or auto_out_dim(self.feature_dim),
                    cfg.dino_hidden_dim,
                    cfg.dino_bottleneck_dim,
                    cfg.dino_student_temp,
                    cfg.dino_teacher_temp,
                    cfg.dino_center_momentum,
                    cfg.koleo_weight,
                    cfg.dino_centering,
                    cfg.ibot_weight,
                    cfg.ibot_mask_ratio,
                    cfg.ibot_mask_prob,
                )
        self.init_record = self._load_init(init_rebuild)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.augment = MultiViewAugment(self._view_specs(), self.mean, self.std, cfg.crop_backend)
        self.optimizer = self._build_optimizer()
        self.train_steps_total = 0
        self.updates = 0

    # ----------------------------------------------------------------------------- construction
    def _load_init(self, rebuild: str) -> dict[str, Any]:
        """Apply ``cfg.init``; returns what a run records of its start."""
        init = self.cfg.init
        if init == "scratch":
            return {"init": "scratch"}
        if init == "pretrained":
            raise ConfigError(
                "ssl.init: 'pretrained' names the artifact of an env's world; build the learner through the env "
                f"(InternetExplorerEnv resolves it) or give the file's path (`{BUILD_COMMAND}` prints it)")
        rec = apply_init(self.model, init, self.cfg.backbone, self.cfg.image_size, self.cfg.objective, rebuild)
        return {"init": "path", **rec}

    def _view_specs(self) -> list[ViewSpec]:
        c = self.cfg
        jitter = tuple(c.color_jitter * j for j in BASE_JITTER)
        sigma = tuple(s * c.image_size / 224.0 for s in c.blur_sigma)
        common: dict[str, Any] = {
            "flip_prob": c.flip_prob,
            "jitter": jitter,
            "jitter_prob": c.color_jitter_prob,
            "grayscale_prob": c.grayscale_prob,
            "blur_sigma": sigma,
        }
        specs = [
            ViewSpec(
                c.image_size,
                scale=(c.crop_min_scale, 1.0),
                blur_prob=c.blur_prob[i],
                solarize_prob=c.solarize_prob[i],
                **common,
            )
            for i in range(2)
        ]
        if c.objective == "dino" and c.dino_local_crops:
            size = c.dino_local_size or max(4, round(c.image_size * 96 / 224))
            local = ViewSpec(size, scale=c.dino_local_scale, blur_prob=0.5 * max(c.blur_prob), **common)
            specs += [local] * c.dino_local_crops
        return specs

    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        decay, no_decay = [], []
        for name, p in self.model.online_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        if c.optimizer == "lars":
            groups = [
                {"params": decay, "weight_decay": c.weight_decay, "exclude": False},
                {"params": no_decay, "weight_decay": 0.0, "exclude": True},
            ]
            return LARS(groups, lr=c.lr, momentum=c.sgd_momentum, trust_coefficient=c.lars_trust_coefficient)
        groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        cls: Any = torch.optim.SGD if c.optimizer == "sgd" else torch.optim.AdamW
        kw: dict[str, Any] = {"momentum": c.sgd_momentum} if c.optimizer == "sgd" else {}
        try:  # the fused kernels are ~8x faster than the per-tensor loop on the CPU
            return cls(groups, lr=c.lr, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            return cls(groups, lr=c.lr, **kw)

    # ----------------------------------------------------------------------------- features
    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, on_device: bool = False) -> torch.Tensor:
        """``(N, D)`` float32 CPU, L2-normalised online-backbone features (eval mode, resize/centre crop);
        ``on_device``: left on the learner's device, for scoring there (the reward's top-k on CUDA)."""
        x = to_tensor_batch(images)
        if x.shape[0] == 0:
            return torch.zeros(0, self.feature_dim, device=self.device if on_device else "cpu")
        bb = self.backbone
        was_training = bb.training
        bb.eval()
        out = []
        try:
            for i in range(0, x.shape[0], self.cfg.eval_batch_size):
                xb = x[i : i + self.cfg.eval_batch_size].to(self.device, non_blocking=True)
                v = eval_transform(xb, self.cfg.image_size, self.mean, self.std)
                if self.cfg.channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    f = bb(v)
                f = F.normalize(f.float(), dim=1)
                out.append(f if on_device else f.cpu())
        finally:
            bb.train(was_training)
        return torch.cat(out)

    def _autocast(self) -> Any:
        use = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use)

    # ----------------------------------------------------------------------------- training
    def planned_steps(self, n_images: int) -> int:
        return self.cfg.planned_steps(n_images)

    def _lr(self) -> float:
        w = self.cfg.lr_warmup_steps
        return self.cfg.lr * (min(1.0, (self.train_steps_total + 1) / w) if w else 1.0)

    def _momentum(self, step_in_call: int, steps: int) -> float:
        c = self.cfg
        kind = c.momentum_schedule
        if kind == "auto":
            kind = "cosine" if c.objective == "dino" else "constant"
        if kind == "constant":
            return c.momentum_ema
        if c.momentum_schedule_steps:
            return cosine_momentum(self.train_steps_total, c.momentum_schedule_steps, c.momentum_ema)
        return cosine_momentum(step_in_call, max(steps - 1, 1), c.momentum_ema)

    def _teacher_temp(self) -> float:
        c = self.cfg
        w = c.dino_warmup_teacher_temp_steps
        if w <= 0 or self.train_steps_total >= w:
            return c.dino_teacher_temp
        t = self.train_steps_total / w
        return c.dino_warmup_teacher_temp + t * (c.dino_teacher_temp - c.dino_warmup_teacher_temp)

    def update(self, images: np.ndarray, steps: int | None = None) -> dict[str, float]:
        """Train on ``images`` (``planned_steps(N)`` steps unless ``steps`` is given); returns
        ``loss`` (mean over steps), ``loss_first``, ``loss_last``, ``steps``, ``epochs``, ``images_per_second``,
        ``views_per_second``, ``seconds``, ``lr``, ``momentum`` (+ ``dino``, ``koleo`` for DINO)."""
        x_all = to_tensor_batch(images)
        n = int(x_all.shape[0])
        if n < 2:
            raise ValueError(f"update needs at least 2 images (contrastive batch), got {n}")
        if steps is None:
            steps = self.planned_steps(n)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        batch = min(self.cfg.batch_size, n)
        n_views = len(self.augment.specs)
        if steps == 0:
            return {"loss": float("nan"), "steps": 0.0, "images_per_second": 0.0, "views_per_second": 0.0}
        src = x_all
        if self.device.type == "cuda" and x_all.numel() < 2**31:
            src = x_all.to(self.device)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        cuda_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        losses: list[torch.Tensor] = []
        extras: dict[str, list[torch.Tensor]] = {}
        m = self.cfg.momentum_ema
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            self.model.train()
            for s, xb in enumerate(shuffled_batches(src, batch, steps, self.generator)):
                views = self.augment(xb, self.generator)
                if self.cfg.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                lr = self._lr()
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with self._autocast():
                    if self.cfg.objective == "dino":
                        loss, logs = self.model(views, teacher_temp=self._teacher_temp())
                    else:
                        loss, logs = self.model(views)
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"SSL loss is {float(loss)} at global step {self.train_steps_total}; the step was not "
                        "applied (lower lr, enable grad_clip, or check the images)"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.grad_clip:
                    nn.utils.clip_grad_norm_([p for _, p in self.model.online_parameters()], self.cfg.grad_clip)
                self.optimizer.step()
                m = self._momentum(s, steps)
                self.model.momentum_update(m)
                self.train_steps_total += 1
                losses.append(loss.detach())
                for k, v in logs.items():
                    extras.setdefault(k, []).append(v)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = max(time.perf_counter() - t0, 1e-9)
        self.updates += 1
        ls = torch.stack(losses).float().cpu()
        out = {
            "loss": float(ls.mean()),
            "loss_first": float(ls[0]),
            "loss_last": float(ls[-1]),
            "steps": float(steps),
            "batch_size": float(batch),
            "epochs": steps * batch / n,
            "images_per_second": steps * batch / dt,
            "views_per_second": steps * batch * n_views / dt,
            "seconds": dt,
            "lr": float(self._lr()),
            "momentum": float(m),
            "train_steps_total": float(self.train_steps_total),
        }
        for k, v in extras.items():
            out[k] = float(torch.stack(v).float().mean())
        return out

    # ----------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """CPU copies of weights (online + momentum/teacher), optimiser, RNG and counters."""
        return {
            "format": STATE_FORMAT,
            "config": to_dict(self.cfg),
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "train_steps_total": int(self.train_steps_total),
            "updates": int(self.updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an SSLLearner state (expected format {STATE_FORMAT!r})")
        saved = state.get("config", {})
        for key in ("objective", "backbone"):
            mine = getattr(self.cfg, key)
            if saved.get(key) != mine:
                raise ValueError(f"SSLLearner state was saved with {key}={saved.get(key)!r}, this learner has {mine!r}")
        try:
            self.model.load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            raise ValueError(f"SSLLearner state does not fit this model: {exc}") from exc
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"SSLLearner optimiser state does not fit (optimizer={self.cfg.optimizer}): {exc}"
            ) from exc
        self.generator.set_state(state["generator"].clone())
        self.train_steps_total = int(state["train_steps_total"])
        self.updates = int(state.get("updates", 0))
