"""Near-copy detection on 64-bit dHashes: a growable index and the target-test leakage guard."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ie_env.fetcher.decode import dhash

log = logging.getLogger(__name__)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    # Portable fallback: byte-wise table.
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8).reshape(-1, 8)].sum(axis=1)


class DHashIndex:
    """dHashes with their keys; ``nearest(h)`` is a vectorised Hamming scan."""

    def __init__(self) -> None:
        self._hashes = np.zeros(1024, np.uint64)
        self._keys: list[str] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, value: int, key: str) -> None:
        with self._lock:
            n = len(self._keys)
            if n == len(self._hashes):
                self._hashes = np.concatenate([self._hashes, np.zeros(n, np.uint64)])
            self._hashes[n] = np.uint64(value)
            self._keys.append(key)

    def nearest(self, value: int) -> tuple[int, str | None]:
        """(distance, key) of the closest stored hash; (65, None) when empty."""
        with self._lock:
            n = len(self._keys)
            if n == 0:
                return 65, None
            d = _popcount(self._hashes[:n] ^ np.uint64(value))
            i = int(np.argmin(d))
            return int(d[i]), self._keys[i]


class LeakageGuard:
    """Drops downloads that are near-copies (dHash Hamming <= ``max_distance``) of target test images."""

    def __init__(self, hashes: Iterable[int], max_distance: int = 4, names: Iterable[str] | None = None) -> None:
        self.index = DHashIndex()
        hashes = list(hashes)
        names = list(names) if names is not None else [str(i) for i in range(len(hashes))]
        for h, name in zip(hashes, names):
            self.index.add(int(h), name)
        self.max_distance = max_distance
        self.dropped = 0
        self._lock = threading.Lock()

    @classmethod
    def from_images(cls, images: Iterable[Image.Image | str | os.PathLike], max_distance: int = 4) -> "LeakageGuard":
        hashes, names = [], []
        for i, im in enumerate(images):
            if isinstance(im, Image.Image):
                hashes.append(dhash(im))
                names.append(str(i))
            else:
                with Image.open(im) as opened:
                    hashes.append(dhash(opened))
                names.append(str(Path(im)))
        return cls(hashes, max_distance, names)

    def check(self, value: int) -> tuple[bool, int, str | None]:
        """(is a leak, distance, matching target) — counts the drop when it is one."""
        dist, key = self.index.nearest(value)
        leak = self.max_distance >= 0 and dist <= self.max_distance
        if leak:
            with self._lock:
                self.dropped += 1
            log.info("leakage guard: dropped a near-copy (distance %d) of target test image %s", dist, key)
        return leak, dist, key
