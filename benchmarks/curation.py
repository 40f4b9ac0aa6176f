"""ie-curate on planted copies, on 1M stored embeddings, and as retrieval in the embedded world's pool.

    python benchmarks/curation.py --part dedup      [--images 20000 --originals 200]
    python benchmarks/curation.py --part scale      [--embeddings 1000000 --dim 64]
    python benchmarks/curation.py --part retrieval  [--per-concept 8]

Prints one JSON object.

* ``dedup``: a pool of ``--images`` 64-px renders of the embedded world in which ``--originals``
  images each have four near-copies (a 70-90% area crop resized back, a 40-70% rescale, a JPEG
  re-encode at quality 20-60, brightness/contrast/saturation jitter of +-30%). ``ie-curate`` runs with
  its default copy settings; an image removed as a copy is correct when it and the image it was
  matched to belong to the same planted group. Precision = correct / removed, recall = correct /
  planted copies. Also reported with dHash pairs added (Hamming distance <= 4, confirmed by the
  descriptors), to show what that test adds.
* ``scale``: ``--embeddings`` L2-normalised synthetic rows (a mixture of 1,000 clusters, 1% exact
  copies) stored as a memory-mapped ``.npy``; ``ie-curate --embeddings`` dedups them and selects by
  cluster-based retrieval over a faiss IVF index. Peak resident memory and rows/s are printed beside
  an exact (flat) run on a 100k-row sample (the peer), with the IVF path's recall of the flat path's
  copy pairs on that sample.
* ``retrieval``: the world's uncaptioned pool view (``--per-concept`` images of every concept),
  sample-based retrieval for the bird target with the given encoder, against a uniform random
  selection of the same size: share of selected images with ground-truth relevance g >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def part_dedup(images: int, originals: int, seed: int) -> dict:
    from PIL import Image, ImageEnhance

    from ie_env.curation.pipeline import CurateConfig, EncoderConfig, curate
    from ie_env.curation.world_pool import make_world
    from ie_env.worlds.embedded import WorldConfig

    rng = np.random.default_rng(seed)
    world = make_world(WorldConfig(image_size=64))
    n_plain = images - 4 * originals
    idx = np.arange(n_plain)
    renders = world.images(idx % len(world.vocabulary), idx, 5)
    chosen = rng.choice(n_plain, originals, replace=False)

    def crop(im):
        s = rng.uniform(0.7, 0.9)
        w, h = im.size
        cw, ch = int(w * np.sqrt(s)), int(h * np.sqrt(s))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        return im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC), "png"

    def rescale(im):
        f = rng.uniform(0.4, 0.7)
        return im.resize((int(im.size[0] * f), int(im.size[1] * f)), Image.BILINEAR), "png"

    def jpeg(im):
        return im, f"jpg:{int(rng.integers(20, 61))}"

    def jitter(im):
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
        im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(im).enhance(rng.uniform(0.7, 1.3)), "png"

    group: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        pool.mkdir()
        names = rng.permutation(images)  # file names in random order: originals are not always first
        k = 0
        for i, arr in enumerate(renders):
            name = f"{names[k]:06d}.png"
            Image.fromarray(arr).save(pool / name)
            group[name] = i
            k += 1
        for o in chosen:
            for f in (crop, rescale, jpeg, jitter):
                im, fmt = f(Image.fromarray(renders[o]))
                if fmt.startswith("jpg"):
                    name = f"{names[k]:06d}.jpg"
                    im.save(pool / name, "JPEG", quality=int(fmt.split(":")[1]))
                else:
                    name = f"{names[k]:06d}.png"
                    im.save(pool / name)
                group[name] = int(o)
                k += 1
        target = Path(tmp) / "target"
        target.mkdir()
        Image.fromarray(renders[0]).save(target / "t.png")
        results = {}
        for label, dh in (("default", None), ("dhash_4", 4)):
            cfg = CurateConfig(pool=str(pool), out=str(Path(tmp) / f"out_{label}"), target=str(target), k=1,
                               encoder=EncoderConfig(backbone="test_resnet", image_size=32), progress=False)
            if dh is not None:
                cfg.copies = type(cfg.copies)(**{**vars(cfg.copies), "dhash_distance": dh})
            t0 = time.perf_counter()
            report = curate(cfg)
            dt = time.perf_counter() - t0
            removed = [json.loads(x) for x in (Path(cfg.out) / "removed.jsonl").read_text().splitlines()]
            copies = [r for r in removed if r["reason"] == "near_copy"]
            correct = sum(group[r["key"]] == group[r["copy_of"]] for r in copies)
            planted = 4 * originals
            results[label] = {
                "removed": len(copies), "correct": correct, "planted": planted,
                "precision": round(correct / max(len(copies), 1), 4), "recall": round(correct / planted, 4),
                "pairs": report["copies"]["pairs"], "seconds": round(dt, 1),
                "threshold": cfg.copies.threshold, "dhash_distance": cfg.copies.dhash_distance,
            }
    return {"images": images, "originals": originals, **results, "peak_rss_mb": round(_peak_mb(), 1)}


def _synthetic(path: Path, n: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centres[rng.integers(0, 1000, m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    copies = rng.choice(n, n // 100, replace=False)
    out[np.sort(rng.choice(n, n // 100, replace=False))] = out[np.sort(copies)]
    out.flush()
    del out


def _run_scale_child(args: list[str]) -> dict:
    """Run ``ie-curate`` in a fresh process so that its peak RSS is its own."""
    code = (
        "import json, resource, sys; from ie_env.curation.cli import main; rc = main(sys.argv[1:]);"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"ie-curate failed: {r.stderr[-2000:]}")
    peak = float(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("PEAK")))
    return {"seconds": round(dt, 1), "peak_rss_mb": round(peak, 1)}


def part_scale(n: int, dim: int, seed: int) -> dict:
    from ie_env.curation.copies import embedding_pairs

    with tempfile.TemporaryDirectory() as tmp:
        emb_path, t_path = Path(tmp) / "pool.npy", Path(tmp) / "targets.npy"
        _synthetic(emb_path, n, dim, seed)
        emb = np.load(emb_path, mmap_mode="r")
        np.save(t_path, np.ascontiguousarray(emb[:50]))
        common = ["--embeddings", str(emb_path), "--target-embeddings", str(t_path), "--mode", "cluster",
                  "--no-progress", "--set", "budget=10000", "--set", "n_clusters=1000",
                  "--set", "embedding_dedup=0.999"]
        ivf = _run_scale_child([*common, "--out", str(Path(tmp) / "ivf"), "--set", "index=ivf"])
        report = json.loads((Path(tmp) / "ivf" / "report.json").read_text())
        sample = np.ascontiguousarray(emb[:100_000])
        t0 = time.perf_counter()
        flat_pairs = {(i, j) for i, j, _ in embedding_pairs(sample, 0.999, 8, "flat")}
        flat_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ivf_pairs = {(i, j) for i, j, _ in embedding_pairs(sample, 0.999, 8, "ivf")}
        ivf_s = time.perf_counter() - t0
    return {
        "embeddings": n, "dim": dim, "ivf_run": ivf, "rows_per_second": round(n / ivf["seconds"]),
        "copies_removed": report["copies"]["removed"], "selected": report["selection"]["selected"],
        "sample_100k": {"flat_seconds": round(flat_s, 2), "ivf_seconds": round(ivf_s, 2),
                        "ivf_speedup_vs_flat": round(flat_s / max(ivf_s, 1e-9), 2),
                        "ivf_recall_of_flat_pairs": round(len(flat_pairs & ivf_pairs) / max(len(flat_pairs), 1), 4)},
    }


def part_retrieval(per_concept: int, backbone: str, checkpoint: str | None, seed: int) -> dict:
    from ie_env.curation.pipeline import CurateConfig, EncoderConfig, curate
    from ie_env.curation.world_pool import make_world, relevant_share, selected_keys, write_world_pool
    from ie_env.worlds.embedded import WorldConfig

    world = make_world(WorldConfig(image_size=32, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        truth = write_world_pool(world, Path(tmp) / "wp", per_concept)
        cfg = CurateConfig(pool=str(Path(tmp) / "wp" / "pool"), out=str(Path(tmp) / "out"),
                           target=str(Path(tmp) / "wp" / "target_train"),
                           target_test=str(Path(tmp) / "wp" / "target_test"), k=8, progress=False,
                           encoder=EncoderConfig(backbone=backbone, image_size=32, checkpoint=checkpoint))
        t0 = time.perf_counter()
        report = curate(cfg)
        dt = time.perf_counter() - t0
        keys = selected_keys(Path(cfg.out))
        rng = np.random.default_rng(seed)
        everything = sorted(truth["concept_of"])
        random_keys = [everything[i] for i in rng.choice(len(everything), len(keys), replace=False)]
        return {
            "pool_images": len(everything), "encoder": backbone, "checkpoint": checkpoint,
            "retrieval": relevant_share(keys, truth), "random": relevant_share(random_keys, truth),
            "removed": {"copies": report["copies"]["removed"], "leakage": report["leakage"]["removed"]},
            "seconds": round(dt, 1),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["dedup", "scale", "retrieval"], required=True)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--originals", type=int, default=200)
    ap.add_argument("--embeddings", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--per-concept", type=int, default=8)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.part == "dedup":
        out = part_dedup(a.images, a.originals, a.seed)
    elif a.part == "scale":
        out = part_scale(a.embeddings, a.dim, a.seed)
    else:
        out = part_retrieval(a.per_concept, a.backbone, a.checkpoint, a.seed)
    out = {"benchmark": f"curation.{a.part}", **out, "total_seconds": round(time.perf_counter() - t0, 1),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
