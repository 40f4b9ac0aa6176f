"""Content-addressed store of each query's downloaded images, written atomically.

A run keeps what it downloaded here so that a resumed run never fetches (or, in the embedded world,
renders) the same query twice. Keys are hex digests (``query_key``); any other key (one read from a
damaged or planted checkpoint, say ``../../x``) names no entry, so nothing is read or written outside
``root``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np

from ie_env.config import atomic_write_bytes

_HEX_KEY = re.compile(r"[0-9a-f]{8,128}")


def query_key(concept: str, descriptor: str, n: int) -> str:
    return hashlib.sha1(f"{concept}\x1f{descriptor}\x1f{n}".encode()).hexdigest()


class QueryStore:
    """``put(key, **arrays)`` / ``get(key) -> dict | None``; a corrupt entry reads as missing."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path | None:
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
            return None
        return self.root / key[:2] / f"{key}.npz"

    def put(self, key: str, **arrays: np.ndarray) -> None:
        if self._path(key) is None:
            raise ValueError(f"query store key must be a hex digest, got {key!r}")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self._path(key), buf.getvalue())

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        p = self._path(key)
        if p is None or not p.exists():
            return None
        try:
            with np.load(p) as data:
                return {k: data[k] for k in data.files}
        except Exception:  # truncated or corrupt file: treat as not downloaded
            return None

    def __contains__(self, key: str) -> bool:
        p = self._path(key)
        return p is not None and p.exists()
