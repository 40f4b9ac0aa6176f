"""``ie-pretrain``: build the pretrained start of ``ssl.init: pretrained`` (or of a real-image run).

Trains the run's own SSL learner (``env.ssl``: objective, backbone, augmentations, optimiser) from
scratch for ``env.ssl.pretrain.steps`` steps on a general distribution of images:

* the embedded world (default): fresh renders of the concepts of the training themes only (never a
  held-out theme, nor the fixed target's theme), ``images_per_concept`` distinct images each, in a
  namespace of their own (they are never the images a query returns);
* ``--source PATH``: any local image folder or corpus in the formats ``local_corpus`` reads (a folder
  of images, WebDataset tar shards, parquet with image bytes), each image resized and centre-cropped
  to ``world.image_size``: the start of a real-image run when no pretrained weights can be downloaded.

The artifact (``ie_env.learner.pretrained``) goes to ``<cache>/pretrained/<hash>.safetensors`` with a
JSON sidecar, where ``hash`` covers source, backbone, image size and recipe; an existing one is kept
unless ``--force``. Options are those of ``ie-explore`` (``--task``, ``--config``, ``--set``), so the
command that built a start is the run's own command line with another program name.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ie_env.config import ConfigError, to_dict
from ie_env.learner.pretrained import (
    NS_PRETRAIN,
    artifact_hash,
    default_cache_dir,
    save_artifact,
    world_concepts,
    world_source,
)

ImageDraw = Callable[[np.random.Generator, int], np.ndarray]
CHUNK_STEPS = 8  # SSL steps per rendered chunk (one progress-bar update)


def world_pool(env_cfg: Any) -> tuple[ImageDraw, dict[str, Any], dict[str, Any]]:
    """``(draw, source, info)``: ``draw(rng, n)`` renders ``n`` images of uniformly drawn training-theme
    concepts, each one of its first ``images_per_concept`` pretraining renders."""
    from ie_env.worlds.embedded import EmbeddedWorld, load_vocabulary
    from ie_env.worlds.shared import shared_concept_embeddings

    concepts, themes = world_concepts(env_cfg)
    vocab = load_vocabulary(env_cfg.world.vocabulary)
    world = EmbeddedWorld(replace(env_cfg.world, fidelity="pixels"), vocab, shared_concept_embeddings(vocab))
    per = env_cfg.ssl.pretrain.images_per_concept

    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        c = concepts[rng.integers(len(concepts), size=n)]
        return world.images(c, rng.integers(per, size=n), NS_PRETRAIN)

    return draw, world_source(env_cfg, concepts), {"themes": themes, "num_concepts": len(concepts)}


def _source_files(source: str) -> tuple[str, list[Path]]:
    from ie_env.engines.base import EngineError
    from ie_env.engines.local_corpus import _files_for, detect_kind

    try:
        kind = detect_kind(source)
    except EngineError as exc:
        raise ConfigError(f"--source: {exc}") from exc
    files = _files_for(kind, source)
    if not files:
        raise ConfigError(f"--source {source!r} holds no images (a folder of images, .tar shards or .parquet)")
    return kind, files


def _corpus_bytes(kind: str, source: str, files: list[Path], limit: int) -> list[bytes]:
    """Image bytes of a local corpus, in its own order (at most ``limit``)."""
    from ie_env.engines.local_corpus import (
        LocalCorpusConfig,
        iter_parquet,
        iter_webdataset,
    )

    if kind == "folder":
        return [f.read_bytes() for f in files[:limit]]
    out: list[bytes] = []
    if kind == "webdataset":
        for _, ref in iter_webdataset(files):
            with open(ref["shard"], "rb") as fh:
                fh.seek(ref["offset"])
                out.append(fh.read(ref["size"]))
            if len(out) >= limit:
                break
        return out
    import pyarrow.parquet as pq

    cache: dict[tuple, Any] = {}
    for _, ref in iter_parquet(files, LocalCorpusConfig(source=source)):
        if "file" not in ref:
            continue  # a URL row: not a local image
        key = (ref["file"], ref["row_group"], ref["column"])
        if key not in cache:
            cache.clear()
            cache[key] = pq.ParquetFile(ref["file"]).read_row_group(key[1], columns=[key[2]]).column(0)
        v = cache[key][int(ref["index"])].as_py()
        v = v.get("bytes") if isinstance(v, dict) else v
        if isinstance(v, (bytes, bytearray)):
            out.append(bytes(v))
        if len(out) >= limit:
            break
    return out


def corpus_pool(source: str, image_size: int, limit: int = 200_000,
                progress: bool = True) -> tuple[ImageDraw, dict[str, Any], dict[str, Any]]:
    """``(draw, source, info)`` over a local image folder or corpus: every readable image (up to
    ``limit``) decoded once at ``image_size``; ``draw(rng, n)`` picks ``n`` of them uniformly."""
    from PIL import Image

    from ie_env.engines.local_corpus import LocalCorpusConfig, _fingerprint
    from ie_env.targets import resize_center_crop

    kind, files = _source_files(source)
    images, bad = [], 0
    raw = _corpus_bytes(kind, source, files, limit)
    it = raw
    if progress:
        from tqdm import tqdm

        it = tqdm(raw, desc="ie-pretrain: decoding", unit="img", file=sys.stderr)
    for data in it:
        try:
            with Image.open(io.BytesIO(data)) as img:
                images.append(resize_center_crop(img, image_size))
        except (OSError, ValueError, Image.DecompressionBombError):  # unreadable: skipped and counted
            bad += 1
    if len(images) < 2:
        raise ConfigError(f"--source {source!r}: fewer than 2 readable images ({bad} unreadable)")
    pool = np.stack(images)

    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        return pool[rng.integers(len(pool), size=n)]

    fp = _fingerprint(kind, files, LocalCorpusConfig(source=source))
    src = {"kind": kind, "fingerprint": fp[:16], "images": len(pool), "limit": int(limit)}
    return draw, src, {"path": str(Path(source).resolve()), "unreadable": bad}


def pretrain(env_cfg: Any, source: str | None = None, out: str | Path | None = None, force: bool = False,
             progress: bool = True, limit: int = 200_000, command: str = "") -> tuple[Path, dict[str, Any]]:
    """Build (or find) the start of ``env_cfg`` from the world or ``source``; ``(path, metadata)``."""
    from ie_env.learner.ssl import SSLLearner

    size = env_cfg.world.image_size
    if source:
        draw, src, info = corpus_pool(source, size, limit, progress)
    else:
        draw, src, info = world_pool(env_cfg)
    ssl = env_cfg.ssl
    h = artifact_hash(src, to_dict(ssl), size)
    path = Path(out) if out else default_cache_dir() / f"{h}.safetensors"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file() and not force:
        return path, json.loads(sidecar.read_text())
    recipe = ssl.pretrain
    cfg = replace(ssl, init="scratch", image_size=size, seed=recipe.seed, min_steps=1, max_steps=None)
    learner = SSLLearner(cfg)
    rng = np.random.default_rng([recipe.seed, 0x9E7])
    batch = cfg.batch_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=recipe.steps, desc=f"ie-pretrain {cfg.backbone} {size}px", unit="step", file=sys.stderr)
    losses: list[float] = []
    t0 = time.perf_counter()
    done = 0
    while done < recipe.steps:
        k = min(CHUNK_STEPS, recipe.steps - done)
        stats = learner.update(draw(rng, k * batch), steps=k)
        losses.append(stats["loss"])
        done += k
        if bar is not None:
            bar.update(k)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
    if bar is not None:
        bar.close()
    meta = {
        "hash": h, "backbone": cfg.backbone, "image_size": size, "objective": cfg.objective,
        "steps": recipe.steps, "batch_size": batch, "images_per_concept": recipe.images_per_concept,
        "seed": recipe.seed, "source": src, "source_info": info, "recipe": {k: v for k, v in to_dict(ssl).items()
                                                                          if k not in ("init",)},
        "loss_first": losses[0], "loss_last": losses[-1], "loss_per_chunk": losses,
        "seconds": time.perf_counter() - t0, "device": str(learner.device), "torch": torch.__version__,
        "machine": platform.machine(), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": command,
    }
    learner.model.to("cpu")
    save_artifact(path, learner.model, meta)
    return path, meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="run YAML as for ie-explore (default: its shipped default)")
    p.add_argument("--task", default=None, help="a suite task id: pretrain for its world and SSL settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set env.ssl.pretrain.steps=200")
    p.add_argument("--source", default=None,
                   help="a local image folder or corpus (folder, WebDataset .tar, parquet) instead of the world")
    p.add_argument("--limit", type=int, default=200_000, help="at most this many images of --source")
    p.add_argument("--out", default=None, help="write the artifact here instead of the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if the artifact exists")
    p.add_argument("--print-path", action="store_true", help="print the artifact's path (world) and exit")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ie_env.learner.pretrained import world_artifact_path
    from ie_experiments.run import build_config

    args = parse_args(argv)
    try:
        ns = argparse.Namespace(config=args.config, overrides=args.overrides, task=args.task, agent=None, seed=None)
        env_cfg = build_config(ns).env
        if args.print_path and not args.source:
            path, _ = world_artifact_path(env_cfg)
            print(f"{path}  ({'present' if path.is_file() else 'missing'})")
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.limit < 2:
            raise ConfigError("--limit must be >= 2")
        command = " ".join(["ie-pretrain", *(argv if argv is not None else sys.argv[1:])])
        path, meta = pretrain(env_cfg, args.source, args.out, args.force, not args.no_progress, args.limit, command)
    except (ConfigError, ValueError) as exc:
        print(f"ie-pretrain: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta.get(k) for k in ("hash", "backbone", "image_size", "steps", "loss_first", "loss_last",
                                               "seconds")}))
    use = "--set env.ssl.init=pretrained" if not args.source and not args.out else f"--set env.ssl.init={path}"
    print(f"pretrained start: {path}  (use it with {use})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
