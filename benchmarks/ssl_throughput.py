"""SSL learner throughput: training images/s (and views/s), features() images/s, augmentation views/s.

Prints one JSON object. Default: the default ``SSLConfig`` (resnet18, 32 px, batch 128, MoCo-v3) on
the CPU, and on CUDA too when present. ``backbone_fwd_bwd_images_per_second`` times a bare
forward+backward of the backbone in the same process, as a yardstick for how loaded the machine is
(the MoCo-v3 step costs about 2 fwd+bwd + 2 fwd per image: two views and the momentum encoder).

    python benchmarks/ssl_throughput.py [--steps 5] [--backbone resnet18] [--image-size 32] ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Coloured discs on gradients: cheap stand-ins for the embedded world's renders."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = r.integers(0, 120, 3)
        out[i] = np.clip(base + (yy[..., None] * r.integers(0, 4, 3)), 0, 255)
        cx, cy = r.integers(size // 4, 3 * size // 4, 2)
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r.integers(size // 8, size // 3) ** 2] = r.integers(0, 256, 3)
    return out


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_device(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import timm

    from ie_env.learner.augment import MultiViewAugment, ViewSpec, to_tensor_batch
    from ie_env.learner.ssl import SSLConfig, SSLLearner

    cfg = SSLConfig(
        objective=args.objective,
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=device,
        channels_last=args.channels_last or device == "cuda",
        dino_local_crops=args.local_crops,
    )
    n_img = max(args.batch_size * 2, 256)
    imgs = _images(n_img, args.source_size or args.image_size)
    res: dict[str, Any] = {"device": device}
    if device == "cuda":
        res["device_name"] = torch.cuda.get_device_name()

    # Bare backbone forward+backward (yardstick).
    dev = torch.device(device)
    bb = timm.create_model(args.backbone, num_classes=0).to(dev)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=dev)
    if cfg.channels_last:
        bb, x = bb.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd(model: torch.nn.Module = bb, inp: torch.Tensor = x) -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            y = model(inp).float().sum()
        y.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    fwd_bwd()
    res["backbone_fwd_bwd_images_per_second"] = args.batch_size / _best(fwd_bwd, 3)

    # Augmentation alone (CPU tensors, two views).
    xb = to_tensor_batch(imgs[: args.batch_size])
    for backend in ("roi_align", "torchvision"):
        spec = ViewSpec(
            args.image_size,
            scale=(cfg.crop_min_scale, 1.0),
            jitter=tuple(cfg.color_jitter * j for j in (0.4, 0.4, 0.2, 0.1)),
        )
        aug = MultiViewAugment([spec, spec], backend=backend)
        g = torch.Generator().manual_seed(0)
        xd = xb.to(dev)
        aug(xd, g)
        seconds = _best(lambda aug=aug, xd=xd, g=g: aug(xd, g), 3)
        res[f"augment_{backend}_views_per_second"] = 2 * args.batch_size / seconds

    learner = SSLLearner(cfg)
    learner.update(imgs, steps=1)  # warm-up (allocator, cuDNN autotune)
    out = learner.update(imgs, steps=args.steps)
    res.update(
        train_images_per_second=out["images_per_second"],
        train_views_per_second=out["views_per_second"],
        train_seconds_per_step=out["seconds"] / out["steps"],
        train_loss=out["loss"],
    )
    feats_imgs = _images(args.feature_images, args.source_size or args.image_size, seed=1)
    learner.features(feats_imgs[:64])
    res["features_images_per_second"] = len(feats_imgs) / _best(lambda: learner.features(feats_imgs), 2)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--objective", default="mocov3", choices=["mocov3", "dino"])
    p.add_argument("--local-crops", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--source-size", type=int, default=0, help="stored image size (0 = image size)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--feature-images", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--channels-last", action="store_true", help="also on CPU (always on for CUDA)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append("cuda")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "ssl_throughput",
        "config": {k: v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        "machine": platform.machine(),
        "results": [bench_device(args, d) for d in devices],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
