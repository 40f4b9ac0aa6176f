"""Content-addressed store of each query's downloaded images, written atomically.

A run keeps what it downloaded here so that a resumed run never fetches (or, in the embedded world,
renders) the same query twice.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ie_env.config import atomic_write_bytes


def query_key(concept: str, descriptor: str, n: int) -> str:
    return hashlib.sha1(f"{concept}\x1f{descriptor}\x1f{n}".encode()).hexdigest()


class QueryStore:
    """``put(key, **arrays)`` / ``get(key) -> dict | None``; a corrupt entry reads as missing."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def put(self, key: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self._path(key), buf.getvalue())

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        p = self._path(key)
        if not p.exists():
            return None
        try:
            with np.load(p) as data:
                return {k: data[k] for k in data.files}
        except Exception:  # truncated or corrupt file: treat as not downloaded
            return None

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()
