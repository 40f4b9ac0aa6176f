"""Check that the procedural renderer makes a world where SSL has something to learn.

Builds ``--classes`` target concepts whose latents sit close together (a shared theme centre plus
``--spread`` x N(0, 1) offsets), renders train/test images (image latent = concept latent +
``--image-noise`` x N(0, 1), one nuisance seed per image) and reports weighted k-NN accuracy
(cosine, k=20, T=0.07) on the test split for (a) raw pixels, (b) a randomly initialised timm
resnet18 and, unless ``--ssl-steps 0``, (c) the same network after a short SimCLR run on images of
``--ssl-concepts`` concepts (the targets' train images plus other concepts, some from the same
theme). Saves a PNG grid (rows = concepts, columns = images) and prints one JSON object.

    python scripts/render_check.py --grid /tmp/render_grid.png --ssl-steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ie_env.config import atomic_write_bytes  # noqa: E402
from ie_env.worlds.render import RenderConfig, Renderer  # noqa: E402


def make_images(
    renderer: Renderer, concept_latents: np.ndarray, per_class: int, image_noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each concept: returns uint8 images and integer labels."""
    rng = np.random.default_rng(seed)
    c, d = concept_latents.shape
    lat = concept_latents[:, None, :] + image_noise * rng.standard_normal((c, per_class, d))
    seeds = rng.integers(0, 2**62, size=c * per_class, dtype=np.int64)
    images = renderer.render(lat.reshape(-1, d).astype(np.float32), seeds)
    return images, np.repeat(np.arange(c), per_class)


def knn_accuracy(
    train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
    k: int = 20, t: float = 0.07,
) -> float:
    """Weighted k-NN (cosine similarity, weights exp(sim / t)) as in DESIGN §3a."""
    a = train_f / (np.linalg.norm(train_f, axis=1, keepdims=True) + 1e-12)
    b = test_f / (np.linalg.norm(test_f, axis=1, keepdims=True) + 1e-12)
    sim = b @ a.T
    k = min(k, a.shape[0])
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    w = np.exp(np.take_along_axis(sim, nn, axis=1) / t)
    votes = np.zeros((b.shape[0], int(train_y.max()) + 1))
    np.add.at(votes, (np.arange(b.shape[0])[:, None], train_y[nn]), w)
    return float((votes.argmax(1) == test_y).mean())


def to_tensor(images: np.ndarray):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    return (x - mean) / 0.25


def features(model, images: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model(to_tensor(images[i : i + batch])).float().numpy())
    return np.concatenate(out)


def augment(x, gen):
    """Per-image RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3) + h-flip + mild brightness/contrast."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def u(lo: float, hi: float):
        return torch.empty(n).uniform_(lo, hi, generator=gen)

    area = u(0.2, 1.0)
    ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * u(-1.0, 1.0)
    cy = (1 - h) * u(-1.0, 1.0)
    flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = u(-0.3, 0.3).view(n, 1, 1, 1)  # in normalised units (~0.075 of the intensity range)
    contrast = u(0.8, 1.2).view(n, 1, 1, 1)
    m = y.mean(dim=(1, 2, 3), keepdim=True)
    return (y - m) * contrast + m + bright


def simclr(
    model, images: np.ndarray, steps: int, batch: int, seed: int, max_seconds: float = float("inf"),
    log_every: int = 25,
) -> tuple[list[float], int]:
    """A short SimCLR (InfoNCE, T=0.2) run; returns the loss curve (every ``log_every`` steps) and
    the number of steps done (fewer than ``steps`` if ``max_seconds`` ran out)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dim = model.num_features
    head = torch.nn.Sequential(
        torch.nn.Linear(dim, 512), torch.nn.BatchNorm1d(512), torch.nn.ReLU(), torch.nn.Linear(512, 128)
    )
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    data = to_tensor(images)
    model.train()
    head.train()
    losses, running, done, t0 = [], 0.0, 0, time.perf_counter()
    for step in range(1, steps + 1):
        if time.perf_counter() - t0 > max_seconds:
            break
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x = data[idx]
        z = F.normalize(head(model(torch.cat([augment(x, gen), augment(x, gen)]))), dim=1)
        sim = z @ z.T / 0.2
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)])
        loss = F.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        done = step
        if step % log_every == 0:
            losses.append(round(running / log_every, 4))
            print(f"ssl step {step}/{steps} loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
            running = 0.0
    return losses, done


def save_grid(path: str, images: np.ndarray, rows: int, cols: int, zoom: int = 3) -> None:
    from io import BytesIO

    from PIL import Image

    s = images.shape[1]
    grid = images[: rows * cols].reshape(rows, cols, s, s, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * s, cols * s, 3)
    buf = BytesIO()
    Image.fromarray(grid).resize((cols * s * zoom, rows * s * zoom), Image.NEAREST).save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--spread", type=float, default=0.7, help="target offsets around the theme centre")
    ap.add_argument("--image-noise", type=float, default=0.5, help="per-image latent noise std")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default="/tmp/render_grid.png")
    ap.add_argument("--ssl-steps", type=int, default=300, help="0 skips the SimCLR check")
    ap.add_argument("--ssl-batch", type=int, default=128)
    ap.add_argument("--ssl-max-seconds", type=float, default=600.0, help="stop SSL early after this long")
    ap.add_argument("--ssl-concepts", type=int, default=100)
    ap.add_argument("--ssl-per-concept", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args(argv)

    import timm
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    d = 16
    renderer = Renderer(RenderConfig(image_size=args.image_size, latent_dim=d, seed=args.seed))
    centre = rng.standard_normal(d)
    targets = centre + args.spread * rng.standard_normal((args.classes, d))
    tr_x, tr_y = make_images(renderer, targets, args.train_per_class, args.image_noise, args.seed + 1)
    te_x, te_y = make_images(renderer, targets, args.test_per_class, args.image_noise, args.seed + 2)
    report: dict = {"classes": args.classes, "train_per_class": args.train_per_class,
                    "test_per_class": args.test_per_class, "image_size": args.image_size,
                    "spread": args.spread, "image_noise": args.image_noise, "chance": 1 / args.classes}

    # Pixel distances: same concept vs different concepts (test images).
    flat = te_x.reshape(len(te_x), -1).astype(np.float32) / 255.0
    same, diff = [], []
    for i in range(0, len(flat), 7):
        dist = np.abs(flat - flat[i]).mean(1)
        mask = te_y == te_y[i]
        mask[i] = False
        same.append(dist[mask].mean())
        diff.append(dist[te_y != te_y[i]].mean())
    report["mean_abs_pixel_dist_same_concept"] = round(float(np.mean(same)), 4)
    report["mean_abs_pixel_dist_other_target"] = round(float(np.mean(diff)), 4)
    far = rng.standard_normal((args.classes, d))
    far_x, _ = make_images(renderer, far, 5, args.image_noise, args.seed + 3)
    ff = far_x.reshape(len(far_x), -1).astype(np.float32) / 255.0
    report["mean_abs_pixel_dist_random_concepts"] = round(
        float(np.abs(ff[:, None] - ff[None]).mean(-1)[np.repeat(np.arange(args.classes), 5)[:, None]
              != np.repeat(np.arange(args.classes), 5)[None]].mean()), 4)

    # (a) raw pixels, per-channel standardised with train statistics.
    tr_f = tr_x.reshape(len(tr_x), -1).astype(np.float32)
    te_f = te_x.reshape(len(te_x), -1).astype(np.float32)
    mu, sd = tr_f.mean(0), tr_f.std(0) + 1e-6
    report["knn_raw_pixels"] = knn_accuracy((tr_f - mu) / sd, tr_y, (te_f - mu) / sd, te_y)
    report["knn_raw_pixels_unnormalised"] = knn_accuracy(tr_f, tr_y, te_f, te_y)

    # (b) randomly initialised resnet18.
    torch.manual_seed(args.seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    report["knn_random_resnet18"] = knn_accuracy(features(model, tr_x), tr_y, features(model, te_x), te_y)

    # (c) short SimCLR on the targets' train images plus other concepts.
    if args.ssl_steps > 0:
        n_other = max(0, args.ssl_concepts - args.classes)
        n_theme = n_other // 3
        others = np.concatenate([
            centre + args.spread * rng.standard_normal((n_theme, d)),  # same theme
            rng.standard_normal((n_other - n_theme, d)),  # anywhere
        ])
        web_x, _ = make_images(renderer, others, args.ssl_per_concept, args.image_noise, args.seed + 4)
        pool = np.concatenate([tr_x, web_x])
        t0 = time.perf_counter()
        losses, done = simclr(model, pool, args.ssl_steps, args.ssl_batch, args.seed, args.ssl_max_seconds)
        report["ssl"] = {"steps": done, "batch": args.ssl_batch, "pool_images": len(pool),
                         "concepts": args.classes + n_other, "seconds": round(time.perf_counter() - t0, 1),
                         "loss_curve": losses}
        report["knn_after_ssl"] = knn_accuracy(features(model, tr_x), tr_y, features(model, te_x), te_y)

    if args.grid:
        g = 12
        grid_lat = np.concatenate([targets[: min(6, args.classes)], rng.standard_normal((6, d))])
        imgs, _ = make_images(renderer, grid_lat, g, args.image_noise, args.seed + 5)
        save_grid(args.grid, imgs, len(grid_lat), g)
        report["grid"] = args.grid
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
