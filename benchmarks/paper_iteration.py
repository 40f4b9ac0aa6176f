"""One Internet Explorer iteration at the paper's settings in the embedded world, timed stage by stage.

Prints one JSON object. The paper's iteration: 256 queries x 100 images are "downloaded" (rendered by
the embedded world), each image is scored under the current encoder (mean cosine similarity to its
k = 15 nearest target features; a query's reward is the mean of its top 10), then the encoder
trains for 10 epochs on the 25,600 new images plus PCR = 2 x as many drawn from replay buffer and
target train set (MoCo-v3, ResNet-50 from scratch via timm, 224 px views, LARS, batch 224,
lr 0.8 x 224 / 256, momentum encoder 0.9985, crop min area 0.2), then every query is scored again
(its gain) and k-NN accuracy is evaluated. The world renders at ``--render-size`` px (64: the
renderer's largest tested size); the learner's crops and eval resize upsample to 224 px.

Timed: rendering (in ``--render-workers`` processes), scoring, ONE epoch of SSL (``--max-steps`` and
``--max-train-seconds`` cut it short; the time per step is then extrapolated to the epoch) and one
evaluation. ``seconds_per_iteration`` extrapolates to the full paper iteration:
render + score + 10 epochs + score again (gains) + evaluation. The replay buffer is taken to hold
the best half of this iteration's new images (as after the first iteration).

    python benchmarks/paper_iteration.py --device cuda --max-steps 150   # one GPU: ~1-2 minutes
    python benchmarks/paper_iteration.py --tiny --device cpu             # a smoke run: seconds

Needs torch, timm, torchvision, numpy, pyyaml and scikit-learn; not gymnasium or numba.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ie_env.evaluation.knn import knn_accuracies  # noqa: E402
from ie_env.learner.ssl import SSLConfig, SSLLearner  # noqa: E402
from ie_env.reward import image_rewards  # noqa: E402
from ie_env.vocab.text_embed import concept_embeddings  # noqa: E402
from ie_env.worlds.embedded import NS_WEB, EmbeddedWorld, WorldConfig, load_vocabulary  # noqa: E402

_WORLD: EmbeddedWorld | None = None  # the world of render workers (inherited through fork)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="paper_iteration", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tiny", action="store_true", help="test_resnet, 32 px, 8 queries x 10 images, 2 steps")
    p.add_argument("--queries", type=int, default=None, help="queries per iteration (paper 256)")
    p.add_argument("--images-per-query", type=int, default=None, help="paper 100")
    p.add_argument("--backbone", default=None, help="timm model (paper resnet50)")
    p.add_argument("--image-size", type=int, default=None, help="SSL view size (paper 224)")
    p.add_argument("--render-size", type=int, default=None, help="rendered image size (default 64; 32 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="paper 224")
    p.add_argument("--epochs", type=float, default=10.0, help="SSL epochs per iteration (paper 10)")
    p.add_argument("--pcr", type=float, default=2.0, help="replayed + target images per new image (paper 2)")
    p.add_argument("--k", type=int, default=15, help="nearest targets per image reward (paper 15)")
    p.add_argument("--top-images", type=int, default=10, help="image rewards averaged into a query reward")
    p.add_argument("--num-targets", type=int, default=None, help="target classes (default: the world's 20)")
    p.add_argument("--max-steps", type=int, default=None, help="SSL steps timed (default: one epoch)")
    p.add_argument("--max-train-seconds", type=float, default=None, help="stop timing SSL after this long")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed SSL steps first (default 5; 1 with --tiny)")
    p.add_argument("--render-workers", type=int, default=None, help="render processes (default min(16, CPUs); 1 with --tiny)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddp", action="store_true", help="under torchrun: SSL with DDP, --batch-size the global batch split "
                   "over the processes (every process renders and scores the same images; rank 0 prints)")
    args = p.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "queries": 8 if tiny else 256,
        "images_per_query": 10 if tiny else 100,
        "backbone": "test_resnet" if tiny else "resnet50",
        "image_size": 32 if tiny else 224,
        "render_size": 32 if tiny else 64,
        "batch_size": 32 if tiny else 224,
        "num_targets": 4 if tiny else 20,
        "max_steps": 2 if tiny else None,
        "warmup_steps": 1 if tiny else 5,
        "render_workers": 1 if tiny else min(16, os.cpu_count() or 1),
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for name in ("queries", "images_per_query", "batch_size", "render_workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        p.error("--max-steps must be at least 1")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _render_queries(concepts: list[int], per: int) -> np.ndarray:
    """Images of the plain queries for ``concepts`` (as ``InternetExplorerEnv._download`` renders them)."""
    assert _WORLD is not None
    out = []
    for c in concepts:
        hits, idx = _WORLD.search(int(c), 0, per)
        out.append(_WORLD.images(hits, idx, NS_WEB))
    return np.concatenate(out)


def render(world: EmbeddedWorld, concepts: np.ndarray, per: int, workers: int) -> np.ndarray:
    """``(len(concepts) * per, S, S, 3)`` uint8, query after query; ``workers`` forked processes."""
    global _WORLD
    _WORLD = world
    if workers <= 1 or len(concepts) < 2 or sys.platform != "linux":
        return _render_queries(list(concepts), per)
    import multiprocessing as mp

    parts = [list(p) for p in np.array_split(concepts, min(workers * 4, len(concepts))) if len(p)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        return np.concatenate(list(pool.map(_render_queries, parts, [per] * len(parts))))


def score(learner: SSLLearner, images: np.ndarray, target_feats: torch.Tensor, k: int, queries: int, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image rewards and query rewards (mean of the ``top`` best), computed on the learner's device."""
    feats = learner.features(images, on_device=True)
    rewards = torch.cat([image_rewards(feats[i : i + 8192], target_feats, k) for i in range(0, len(feats), 8192)])
    per_query = rewards.view(queries, -1)
    q = per_query.topk(min(top, per_query.shape[1]), dim=1).values.mean(dim=1)
    return rewards, q


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ddp:
        from ie_env.learner.distributed import init_from_env

        init_from_env("nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo")
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("paper_iteration: --device cuda but CUDA is not available")
    rng = np.random.default_rng(args.seed)
    n_new = args.queries * args.images_per_query
    n_mix = int(round(args.pcr * n_new))

    # World and targets (before any CUDA work: render workers are forked).
    t = time.perf_counter()
    vocab = load_vocabulary("embedded")
    world = EmbeddedWorld(
        WorldConfig(image_size=args.render_size, num_targets=args.num_targets, seed=args.seed), vocab, concept_embeddings(vocab)
    )
    world.neighbors  # noqa: B018 - the text-neighbour table, built once before timing the searches
    train_images, train_labels, _ = world.target_split("train")
    test_images, test_labels, _ = world.target_split("test")
    world_seconds = time.perf_counter() - t
    if args.queries > len(vocab):
        raise SystemExit(f"paper_iteration: --queries {args.queries} exceeds the vocabulary ({len(vocab)} concepts)")
    concepts = rng.choice(len(vocab), size=args.queries, replace=False)

    t = time.perf_counter()
    new_images = render(world, concepts, args.images_per_query, args.render_workers)
    render_seconds = time.perf_counter() - t

    # Learner at the paper's settings (SSLConfig.paper: LARS, lr 0.8 * 224 / 256, momentum 0.9985, ...).
    t = time.perf_counter()
    ssl_over: dict[str, Any] = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": 0.8 * args.batch_size / 256,
        "crop_min_scale": 0.2,
        "epochs_per_iteration": args.epochs,
        "device": device.type,
        "channels_last": device.type == "cuda",
        "amp": True,
        "seed": args.seed,
    }
    if args.tiny:
        ssl_over.update(hidden_dim=256, proj_dim=64)
    cfg = SSLConfig.paper(**ssl_over)
    learner = SSLLearner(cfg)
    if args.ddp:
        from ie_env.learner.distributed import DistributedSSLLearner

        learner = DistributedSSLLearner(learner)  # type: ignore[assignment]
    _sync(device)
    learner_seconds = time.perf_counter() - t

    # Target features, then one warm-up pass of the scorer (cuDNN autotune, allocator).
    target_feats = learner.features(train_images, on_device=True)
    score(learner, new_images[: args.images_per_query], target_feats, args.k, 1, args.top_images)
    _sync(device)
    t = time.perf_counter()
    rewards, q_rewards = score(learner, new_images, target_feats, args.k, args.queries, args.top_images)
    _sync(device)
    score_seconds = time.perf_counter() - t
    rewards_np = rewards.float().cpu().numpy()

    # The iteration's training set: new images + PCR x as many from target train and replay
    # (the replay buffer holding the best half of the new images), shuffled as the env does.
    replay = new_images[np.argsort(-rewards_np, kind="stable")[: math.ceil(n_new * 0.5)]]
    pool = np.concatenate([train_images, replay])
    mixed = pool[rng.integers(0, len(pool), size=n_mix)]
    train = np.concatenate([new_images, mixed])
    train = train[rng.permutation(len(train))]
    n_train = len(train)
    del mixed, pool, replay
    t = time.perf_counter()
    train_dev = torch.from_numpy(train).to(device)  # once: update() then indexes it in place
    _sync(device)
    upload_seconds = time.perf_counter() - t
    del train

    batch = min(args.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch)
    steps_per_iteration = math.ceil(args.epochs * n_train / batch)
    warm = learner.update(train_dev, steps=args.warmup_steps) if args.warmup_steps > 0 else None
    target = min(steps_per_epoch, args.max_steps) if args.max_steps else steps_per_epoch
    chunk = max(1, min(50, target))
    done, losses, t = 0, [], time.perf_counter()
    while done < target:
        out = learner.update(train_dev, steps=min(chunk, target - done))
        done += int(out["steps"])
        losses += [out["loss_first"], out["loss_last"]]
        if args.max_train_seconds and time.perf_counter() - t >= args.max_train_seconds:
            break
    _sync(device)
    train_seconds = time.perf_counter() - t
    sec_per_step = train_seconds / done
    epoch_seconds = sec_per_step * steps_per_epoch
    ssl_iteration_seconds = sec_per_step * steps_per_iteration

    # One evaluation: target features refreshed, test features, weighted k-NN (k = 20, T = 0.07).
    t = time.perf_counter()
    tr = learner.features(train_images)
    te = learner.features(test_images)
    knn = knn_accuracies(tr, train_labels, te, test_labels, ks=(20,), T=0.07)
    eval_seconds = time.perf_counter() - t

    iteration_seconds = render_seconds + 2 * score_seconds + upload_seconds + ssl_iteration_seconds + eval_seconds
    res: dict[str, Any] = {
        "benchmark": "paper_iteration",
        "tiny": bool(args.tiny),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "settings": {
            "backbone": cfg.backbone, "image_size": cfg.image_size, "render_size": args.render_size,
            "queries": args.queries, "images_per_query": args.images_per_query, "new_images": n_new,
            "mixed_images": n_mix, "train_images": n_train, "pcr": args.pcr, "batch_size": batch,
            "optimizer": cfg.optimizer, "lr": cfg.lr, "momentum_ema": cfg.momentum_ema,
            "crop_min_scale": cfg.crop_min_scale, "epochs_per_iteration": args.epochs, "k": args.k,
            "target_train_images": len(train_images), "target_test_images": len(test_images),
            "amp_bf16": bool(cfg.amp and device.type == "cuda"), "channels_last": cfg.channels_last,
            "render_workers": args.render_workers,
        },
        "world_seconds": world_seconds,
        "learner_build_seconds": learner_seconds,
        "render_seconds": render_seconds,
        "render_images_per_second": n_new / render_seconds,
        "score_seconds": score_seconds,
        "score_images_per_second": n_new / score_seconds,
        "upload_seconds": upload_seconds,
        "ssl_warmup_steps": args.warmup_steps,
        "ssl_warmup_seconds": warm["seconds"] if warm else 0.0,
        "ssl_steps_timed": done,
        "ssl_seconds_timed": train_seconds,
        "ssl_seconds_per_step": sec_per_step,
        "ssl_images_per_second": batch / sec_per_step,
        "ssl_steps_per_epoch": steps_per_epoch,
        "ssl_epoch_seconds": epoch_seconds,
        "ssl_epoch_extrapolated": done < steps_per_epoch,
        "ssl_steps_per_iteration": steps_per_iteration,
        "ssl_seconds_per_iteration": ssl_iteration_seconds,
        "ssl_loss_first": losses[0],
        "ssl_loss_last": losses[-1],
        "eval_seconds": eval_seconds,
        "knn_accuracy_k20": knn[20],
        "mean_query_reward": float(q_rewards.mean()),
        "seconds_per_iteration": iteration_seconds,
        "minutes_per_iteration": iteration_seconds / 60.0,
        "gpu_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "benchmark_wall_seconds": time.perf_counter() - t_start,
    }
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    if args.ddp:
        res["processes"] = torch.distributed.get_world_size()
        if torch.distributed.get_rank() != 0:
            return 0
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
