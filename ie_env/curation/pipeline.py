"""``curate(cfg)``: pool -> embeddings and copy descriptors (resumable chunks) -> dedup -> leakage guard
-> selection -> WebDataset + report. See :mod:`ie_env.curation` for the method."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ie_env.config import ConfigError, to_dict
from ie_env.curation import copies as cp
from ie_env.curation.encoder import ImageEncoder
from ie_env.curation.index import VectorIndex, faiss_or_none
from ie_env.curation.output import publish, write_webdataset
from ie_env.curation.pool import PoolError, decode_pool_image, iter_pool
from ie_env.curation.retrieval import balanced_hierarchical, cluster_based, sample_based
from ie_env.fetcher.decode import dhash

WORK_FORMAT = "ie-curate-work/1"
WINDOW_LIMIT = 200_000  # copy_windows 'auto': window descriptors for pools up to this size


@dataclass
class EncoderConfig:
    """The embedding model (see :class:`ie_env.curation.encoder.ImageEncoder`)."""

    backbone: str = "resnet18"
    image_size: int = 32
    checkpoint: str | None = None
    pretrained: bool = False
    device: str = "cpu"
    batch_size: int = 256


@dataclass
class CurateConfig:
    """Everything ``ie-curate`` does; a YAML file and ``--set key=value`` override the defaults."""

    pool: str = ""  # folder / WebDataset tars / parquet of images
    embeddings: str = ""  # instead of a pool: a .npy of L2-normalised embeddings (no images, no copy windows)
    target_embeddings: str = ""  # with embeddings: a .npy of target embeddings
    out: str = ""  # output folder: curated-*.tar, report.json, removed.jsonl
    target: str = ""  # folder of target (seed) images; empty with mode 'balanced'
    target_test: str = ""  # held-out target images: pool images near them are removed (leakage guard)
    mode: Literal["sample", "cluster", "balanced"] = "sample"
    k: int = 16  # sample: pool images per target image
    budget: int = 1000  # cluster / balanced: images to select
    n_clusters: int = 100  # cluster: k-means clusters over the pool
    levels: tuple[int, int] = (100, 10)  # balanced: clusters, then groups of clusters
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    copies: cp.CopyConfig = field(default_factory=cp.CopyConfig)
    copy_windows: Literal["auto", "on", "off"] = "auto"  # auto: on up to 200,000 images
    embedding_dedup: float | None = None  # also call images copies at this encoder cosine (None: off)
    leakage_threshold: float = 0.95  # encoder cosine to a target test image that removes a pool image
    index: Literal["auto", "flat", "ivf", "ivfpq"] = "auto"
    work_size: int = 64  # images are decoded with the shorter side at most this
    chunk_size: int = 2048
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 64_000_000
    shard_size: int = 1000
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"ie-curate: {msg}")

        images = not self.embeddings
        need(bool(self.pool) or not images, "--pool is required (a folder, WebDataset tars or parquet of images)")
        need(
            images or self.mode == "balanced" or bool(self.target_embeddings),
            f"mode {self.mode!r} needs --target-embeddings with --embeddings",
        )
        need(bool(self.out), "--out is required (the output folder)")
        need(
            self.mode in ("sample", "cluster", "balanced"),
            f"mode must be sample, cluster or balanced, not {self.mode!r}",
        )
        need(
            not images or self.mode == "balanced" or bool(self.target),
            f"mode {self.mode!r} needs --target (seed images)",
        )
        need(1 <= self.k <= 10_000 and 1 <= self.budget <= 100_000_000, "need 1 <= k <= 10000, 1 <= budget <= 1e8")
        need(1 <= self.n_clusters <= 1_000_000 and all(1 <= v <= 1_000_000 for v in self.levels), "bad cluster counts")
        need(8 <= self.work_size <= 1024 and 1 <= self.chunk_size <= 1_000_000, "need 8 <= work_size <= 1024")
        need(self.copy_windows in ("auto", "on", "off"), "copy_windows must be auto, on or off")
        need(-1.0 <= self.leakage_threshold <= 1.0, "leakage_threshold must be a cosine in [-1, 1]")
        try:
            self.copies.validate()
        except ValueError as exc:
            raise ConfigError(f"ie-curate: {exc}") from None


def _progress(it: Iterator, enabled: bool, desc: str, total: int | None = None) -> Iterator:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="img", mininterval=1.0)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Workspace:
    """``<out>/.work``: per-chunk arrays, reused by a rerun with the same pool and settings."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.dir = Path(cfg.out) / ".work"
        settings = {
            "format": WORK_FORMAT,
            "pool": str(Path(cfg.pool).resolve()),
            "encoder": to_dict(cfg.encoder),
            "copies": [cfg.copies.size, list(cfg.copies.scales), cfg.copies.grid],
            "work_size": cfg.work_size,
            "chunk_size": cfg.chunk_size,
            "max_bytes": cfg.max_bytes,
            "copy_windows": cfg.copy_windows,
        }
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        marker = self.dir / "fingerprint"
        if self.dir.exists() and (not marker.exists() or marker.read_text() != self.fingerprint):
            for f in self.dir.glob("chunk_*.npz"):
                f.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.fingerprint)

    def chunk(self, i: int) -> Path:
        return self.dir / f"chunk_{i:06d}.npz"


def _embed_chunk(items: list, cfg: CurateConfig, encoder: ImageEncoder, windows: bool) -> dict[str, np.ndarray]:
    images = [decode_pool_image(it.data, cfg.work_size, cfg.max_pixels) for it in items]
    ok = np.array([im is not None for im in images], bool)
    good = [im for im in images if im is not None]
    emb = np.zeros((len(items), encoder.dim), np.float16)
    full = np.zeros((len(items), 3 * cfg.copies.size**2), np.float16)
    wins = np.zeros((len(items), cfg.copies.windows_per_image if windows else 1, full.shape[1]), np.float16)
    hashes = np.zeros(len(items), np.uint64)
    if good:
        emb[ok] = encoder.encode(good)
        desc = [cp.copy_descriptors(im, cfg.copies) for im in good]
        full[ok] = np.stack([d[0] for d in desc])
        wins[ok] = np.stack([d if windows else d[:1] for d in desc])
        hashes[ok] = [dhash(Image.fromarray(im)) for im in good]
    return {
        "ok": ok,
        "emb": emb,
        "full": full,
        "windows": wins,
        "dhash": hashes,
        "keys": np.array([it.key for it in items], dtype=object).astype(str),
    }


def _chunks(source: str, size: int, max_bytes: int) -> Iterator[list]:
    batch: list = []
    for item in iter_pool(source, max_bytes):
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_images(folder: str, cfg: CurateConfig, what: str) -> list[np.ndarray]:
    try:
        items = list(iter_pool(folder, cfg.max_bytes))
    except PoolError as exc:
        raise ConfigError(f"ie-curate: {what}: {exc}") from None
    images = [decode_pool_image(it.data, cfg.work_size, cfg.max_pixels) for it in items]
    good = [im for im in images if im is not None]
    if not good:
        raise ConfigError(f"ie-curate: {what} {folder!r} holds no readable image")
    return good


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def curate(cfg: CurateConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to ``<out>/report.json``)."""
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.mode != "sample" and faiss_or_none() is None:
        raise ConfigError("ie-curate: cluster and balanced modes need faiss: pip install 'ie-env[corpus]'")
    try:
        first = next(iter_pool(cfg.pool, cfg.max_bytes), None)
    except PoolError as exc:
        raise ConfigError(f"ie-curate: {exc}") from None
    if first is None:
        raise ConfigError(f"ie-curate: the pool {cfg.pool!r} holds no image (looked for jpg, png, webp, bmp, gif)")
    encoder = ImageEncoder(**to_dict(cfg.encoder))
    targets = _load_images(cfg.target, cfg, "target") if cfg.target else []
    tests = _load_images(cfg.target_test, cfg, "target_test") if cfg.target_test else []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(cfg)

    # 1. Embeddings, copy descriptors and dHashes per chunk (resumable).
    def windows_for(i: int) -> bool:
        return cfg.copy_windows == "on" or (cfg.copy_windows == "auto" and i * cfg.chunk_size < WINDOW_LIMIT)

    n_chunks = 0
    for i, items in enumerate(_progress(_chunks(cfg.pool, cfg.chunk_size, cfg.max_bytes), cfg.progress, "embed")):
        n_chunks = i + 1
        if not ws.chunk(i).exists():
            _atomic_savez(ws.chunk(i), **_embed_chunk(items, cfg, encoder, windows_for(i)))
    parts = [np.load(ws.chunk(i), allow_pickle=False) for i in range(n_chunks)]
    ok = np.concatenate([p["ok"] for p in parts])
    keys = np.concatenate([p["keys"] for p in parts])
    n = len(keys)
    emb = np.concatenate([p["emb"] for p in parts]).astype(np.float32)
    full = np.concatenate([p["full"] for p in parts]).astype(np.float32)
    hashes = np.concatenate([p["dhash"] for p in parts])
    windows_on = cfg.copy_windows == "on" or (cfg.copy_windows == "auto" and n <= WINDOW_LIMIT)
    if not ok.any():
        shutil.rmtree(ws.dir, ignore_errors=True)
        if not any(out.iterdir()):
            out.rmdir()
        raise ConfigError(
            f"ie-curate: none of the pool's {n} files could be read as an image (allowed: JPEG, PNG, WEBP, GIF, BMP "
            f"up to {cfg.max_bytes} bytes and {cfg.max_pixels} pixels): check --pool"
        )

    # 2. Near-copies inside the pool.
    readable = np.flatnonzero(ok)

    def window_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        base = 0
        for p in parts:
            w = p["windows"].astype(np.float32)
            m = len(w)
            w = w if windows_on else w[:, :1]
            owner = np.repeat(np.arange(base, base + m), w.shape[1])
            rows = ok[owner]
            yield np.searchsorted(readable, owner[rows]), w.reshape(-1, w.shape[-1])[rows]
            base += m

    cpairs = cp.window_pairs(full[readable], window_chunks(), cfg.copies.threshold, cfg.copies.neighbours, cfg.index)
    cpairs = [(int(readable[i]), int(readable[j]), s) for i, j, s in cpairs]
    dpairs = cp.dhash_pairs(hashes[readable], cfg.copies.dhash_distance) if len(readable) <= 300_000 else []
    dpairs = [(int(readable[i]), int(readable[j]), d) for i, j, d in dpairs]
    dpairs = cp.confirmed(dpairs, full, cfg.copies.dhash_confirm)
    epairs: list = []
    if cfg.embedding_dedup is not None:
        epairs = cp.embedding_pairs(emb[readable], cfg.embedding_dedup, cfg.copies.neighbours, cfg.index)
        epairs = [(int(readable[i]), int(readable[j]), s) for i, j, s in epairs]
    roots = cp.copy_groups(n, cpairs + dpairs + epairs)
    duplicate = (roots != np.arange(n)) & ok

    # 3. Leakage guard against the target test split.
    leak = np.zeros(n, bool)
    if tests:
        t_emb = encoder.encode(tests)
        t_desc = [cp.copy_descriptors(im, cfg.copies) for im in tests]
        sims, idx = VectorIndex(emb, kind=cfg.index).search(t_emb, min(n, 64))
        leak[idx[sims >= cfg.leakage_threshold]] = True
        win = np.concatenate(t_desc)
        ws_sims, ws_idx = VectorIndex(full, kind=cfg.index).search(win, min(n, cfg.copies.neighbours))
        leak[ws_idx[ws_sims >= cfg.copies.threshold]] = True
        if cfg.copies.dhash_distance >= 0:  # dHash matches confirmed by the whole-image descriptors
            t_hash = np.array([dhash(Image.fromarray(im)) for im in tests], np.uint64)
            t_full = np.stack([d[0] for d in t_desc])
            close = np.bitwise_count(hashes[:, None] ^ t_hash[None, :]) <= cfg.copies.dhash_distance
            rows, cols = np.nonzero(close)
            agree = np.einsum("ij,ij->i", full[rows], t_full[cols]) >= cfg.copies.dhash_confirm
            leak[rows[agree]] = True
        leak &= ok

    # 4. Selection among what is left.
    allowed = ok & ~duplicate & ~leak
    scores: dict[int, float] = {}
    extra: dict[str, Any] = {}
    if cfg.mode == "sample":
        rows, best = sample_based(VectorIndex(emb, kind=cfg.index), encoder.encode(targets), cfg.k, allowed)
        scores = dict(zip(rows.tolist(), best.tolist(), strict=False))
    elif cfg.mode == "cluster":
        rows, votes = cluster_based(emb, encoder.encode(targets), cfg.budget, cfg.n_clusters, cfg.seed, allowed)
        extra["cluster_votes"] = votes
    else:
        rows = balanced_hierarchical(emb, cfg.budget, tuple(cfg.levels), cfg.seed, allowed)
    selected = set(rows.tolist())

    # 5. Output: the selected images' original bytes, and why each removed image went.
    def samples() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
        for i, item in enumerate(iter_pool(cfg.pool, cfg.max_bytes)):
            if i in selected:
                meta: dict[str, Any] = {"origin": item.origin, "mode": cfg.mode}
                if i in scores:
                    meta["target_similarity"] = round(float(scores[i]), 6)
                yield item.key, item.data, meta

    names = write_webdataset(out, samples(), cfg.shard_size)
    removed_lines = []
    for i in np.flatnonzero(~allowed):
        reason = "unreadable" if not ok[i] else ("near_copy" if duplicate[i] else "near_target_test")
        rec: dict[str, Any] = {"key": str(keys[i]), "reason": reason}
        if reason == "near_copy":
            rec["copy_of"] = str(keys[roots[i]])
        removed_lines.append(json.dumps(rec))
    tmp = out / "removed.jsonl.tmp"
    tmp.write_text("\n".join(removed_lines) + ("\n" if removed_lines else ""))
    os.replace(tmp, out / "removed.jsonl")
    report = {
        "pool": {"source": cfg.pool, "images": n, "unreadable": int((~ok).sum())},
        "copies": {
            "removed": int(duplicate.sum()),
            "groups": len(np.unique(roots[duplicate])),
            "pairs": {"window": len(cpairs), "dhash": len(dpairs), "embedding": len(epairs)},
            "windows": bool(windows_on),
        },
        "leakage": {"removed": int(leak.sum()), "target_test_images": len(tests)},
        "selection": {"mode": cfg.mode, "selected": len(selected), "target_images": len(targets), **extra},
        "output": {"shards": names},
        "settings": to_dict(cfg),
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    publish(out, names, report)
    return report


def curate_embeddings(
    emb: np.ndarray, cfg: CurateConfig, targets: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dedup and selection over stored embeddings (no images): the path for pools embedded elsewhere.

    :param emb: ``(N, d)`` L2-normalised rows, typically a read-only memory map.
    :param targets: ``(T, d)`` target embeddings (modes ``sample`` and ``cluster``).
    :return: selected row indices and the report (``<out>/report.json``, ``<out>/selected.npy``).
    """
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.mode != "balanced" and (targets is None or len(targets) == 0):
        raise ConfigError(f"ie-curate: mode {cfg.mode!r} needs target embeddings (--target-embeddings)")
    if emb.ndim != 2 or len(emb) == 0:
        raise ConfigError(f"ie-curate: embeddings must be a non-empty (N, d) array, got shape {emb.shape}")
    sample = np.asarray(emb[: min(len(emb), 1000)], dtype=np.float32)
    norms = np.linalg.norm(sample, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-2):
        raise ConfigError("ie-curate: embeddings must be L2-normalised rows (norms of the first rows are not 1)")
    if targets is not None and targets.shape[1] != emb.shape[1]:
        raise ConfigError(f"ie-curate: target embeddings have {targets.shape[1]} dims, the pool {emb.shape[1]}")
    n = len(emb)
    pairs = (
        cp.embedding_pairs(emb, cfg.embedding_dedup, cfg.copies.neighbours, cfg.index) if cfg.embedding_dedup else []
    )
    roots = cp.copy_groups(n, pairs)
    allowed = roots == np.arange(n)
    index = VectorIndex(emb, kind=cfg.index)
    if cfg.mode == "sample":
        rows, _ = sample_based(index, np.asarray(targets, np.float32), cfg.k, allowed)
    elif cfg.mode == "cluster":
        rows, _ = cluster_based(emb, np.asarray(targets, np.float32), cfg.budget, cfg.n_clusters, cfg.seed, allowed)
    else:
        rows = balanced_hierarchical(emb, cfg.budget, tuple(cfg.levels), cfg.seed, allowed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "selected.tmp.npy"
    np.save(tmp, rows)
    os.replace(tmp, out / "selected.npy")
    report = {
        "pool": {"embeddings": n, "dim": int(emb.shape[1])},
        "copies": {"removed": int((~allowed).sum()), "pairs": {"embedding": len(pairs)}},
        "selection": {"mode": cfg.mode, "selected": len(rows), "index": index.kind},
        "settings": to_dict(cfg),
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    publish(out, [], report)
    return rows, report
