"""``ie-curate``: a curated WebDataset from an uncurated image pool, targeted or balanced.

Examples::

    ie-curate --pool crawl/ --target my_target/train --target-test my_target/test --out curated/
    ie-curate --pool shards/ --mode balanced --set budget=100000 --out pretrain_set/
    ie-curate --embeddings pool.npy --target-embeddings seeds.npy --mode cluster --out sel/

A rerun with the same pool and settings reuses the embedded chunks in ``<out>/.work`` (resumable);
the output shards and ``report.json`` appear only once complete.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ie_env.config import ConfigError, apply_overrides, from_dict, load_yaml
from ie_env.curation.pipeline import CurateConfig, curate, curate_embeddings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-curate", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file of CurateConfig fields")
    p.add_argument("--pool", help="folder, WebDataset tar(s) or parquet of images")
    p.add_argument("--target", help="folder of target (seed) images")
    p.add_argument("--target-test", help="held-out target images (pool images near them are removed)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--mode", choices=["sample", "cluster", "balanced"])
    p.add_argument("--embeddings", help="a .npy of L2-normalised pool embeddings instead of --pool")
    p.add_argument("--target-embeddings", help="a .npy of target embeddings (with --embeddings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> CurateConfig:
    data = load_yaml(a.config) if a.config else {}
    for key, val in (("pool", a.pool), ("target", a.target), ("target_test", a.target_test), ("out", a.out),
                     ("mode", a.mode), ("embeddings", a.embeddings), ("target_embeddings", a.target_embeddings)):
        if val:
            data[key] = val
    if a.no_progress:
        data["progress"] = False
    return apply_overrides(from_dict(CurateConfig, data), a.set)


def _load_npy(path: str, what: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ConfigError(f"ie-curate: {what} {path!r} does not exist")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ConfigError(f"ie-curate: {what} {path!r} is not a plain .npy array: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        cfg = build_config(a)
        if cfg.embeddings:
            emb = _load_npy(cfg.embeddings, "--embeddings")
            targets = _load_npy(cfg.target_embeddings, "--target-embeddings") if cfg.target_embeddings else None
            _, report = curate_embeddings(emb, cfg, None if targets is None else np.asarray(targets, np.float32))
        else:
            report = curate(cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. faiss missing for an IVF index
        print(f"ie-curate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("pool", "copies", "selection", "seconds", "peak_rss_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
