"""An uncurated image pool: a folder of images, WebDataset tar shards, or parquet files of image bytes.

Captions are not needed (curation retrieves by image). Every image is read with a byte cap and decoded
with the fetcher's guards (allow-listed formats, pixel cap before decoding), so a hostile file costs
at most ``max_bytes`` and is reported as unreadable instead of stopping the run.
"""

from __future__ import annotations

import glob as _glob
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ie_env.fetcher.config import FetchConfig, FetchError
from ie_env.fetcher.decode import decode_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class PoolError(ValueError):
    """The pool cannot be read at all (missing, empty, unknown format)."""


@dataclass(frozen=True)
class PoolItem:
    """One pool image: a stable key, its raw bytes, and where it came from."""

    key: str
    data: bytes
    origin: str


def pool_kind(source: str) -> str:
    """``folder``, ``webdataset`` or ``parquet`` for a path, a glob, or a folder of shards."""
    p = Path(source)
    if p.is_dir():
        if any(p.glob("*.tar")):
            return "webdataset"
        if any(p.glob("*.parquet")):
            return "parquet"
        return "folder"
    if source.endswith(".tar") or (any(c in source for c in "*?[") and ".tar" in source):
        return "webdataset"
    if source.endswith(".parquet") or (any(c in source for c in "*?[") and ".parquet" in source):
        return "parquet"
    raise PoolError(f"pool {source!r}: not a folder, a .tar shard (or glob), or a .parquet file (or glob)")


def _files(source: str, ext: str) -> list[Path]:
    p = Path(source)
    if p.is_dir():
        return sorted(p.glob(f"*{ext}"))
    return sorted(Path(f) for f in _glob.glob(source)) if any(c in source for c in "*?[") else [p]


def iter_pool(source: str, max_bytes: int = 20 * 1024 * 1024) -> Iterator[PoolItem]:
    """Every image of the pool in a fixed order (sorted files, tar member order, parquet row order).

    :param source: a folder, a ``.tar`` (or a glob / folder of them), or a ``.parquet`` (or glob).
    :param max_bytes: images larger than this are yielded with empty ``data`` (counted as unreadable).
    """
    if not Path(source).exists() and not any(c in source for c in "*?["):
        raise PoolError(f"pool {source!r} does not exist")
    kind = pool_kind(source)
    if kind == "folder":
        root = Path(source)
        for f in sorted(q for q in root.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file()):
            size = f.stat().st_size
            data = f.read_bytes() if size <= max_bytes else b""
            yield PoolItem(str(f.relative_to(root)), data, str(f))
    elif kind == "webdataset":
        for shard in _files(source, ".tar"):
            with tarfile.open(shard) as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    stem, _, ext = m.name.rpartition(".")
                    if ext.lower() not in TAR_IMAGE_EXTS:
                        continue
                    fh = tf.extractfile(m) if m.size <= max_bytes else None
                    data = fh.read() if fh is not None else b""
                    yield PoolItem(f"{shard.name}/{stem}", data, f"{shard}:{m.name}")
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise PoolError("parquet pools need pyarrow: pip install 'ie-env[corpus]'") from exc
        for f in _files(source, ".parquet"):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            col = next((c for c in ("image", "jpg", "png", "img", "image_bytes") if c in names), None)
            if col is None:
                raise PoolError(f"{f}: no image column (image, jpg, png, img, image_bytes); columns are {names}")
            for rg in range(pf.num_row_groups):
                values = pf.read_row_group(rg, columns=[col]).column(col).to_pylist()
                for i, v in enumerate(values):
                    raw = v.get("bytes") if isinstance(v, dict) else v
                    data = raw if isinstance(raw, bytes) and len(raw) <= max_bytes else b""
                    yield PoolItem(f"{f.name}/{rg}/{i}", data, f"{f}#{rg}/{i}")


def decode_pool_image(data: bytes, size: int, max_pixels: int = 64_000_000) -> np.ndarray | None:
    """``uint8 (H, W, 3)`` with the shorter side at most ``size``, or None when unreadable."""
    if not data:
        return None
    cfg = FetchConfig(image_size=size, resize="shorter", max_pixels=max_pixels, min_side=1)
    try:
        return np.asarray(decode_image(data, cfg).image, dtype=np.uint8)
    except FetchError:
        return None
