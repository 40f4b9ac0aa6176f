"""Near-copy detection for pool deduplication.

DINOv2 removes near-duplicates with a copy-detection embedding (SSCD) and a cosine threshold. SSCD's
weights cannot be fetched offline, so the default descriptor here is built for copies directly: a
``size x size`` colour thumbnail, standardised per image (robust to re-encoding, rescaling and
brightness/contrast/saturation jitter), computed for the whole image and for sub-windows at a few
scales on a grid. A crop of an image matches one of the original's windows, so crops are found
without a learned model. Two images are copies when the best window-to-image cosine reaches
``threshold``. dHash (Hamming distance) catches exact re-encodes as a second, independent test, and
any encoder embedding can be used instead via :func:`embedding_pairs`.
dHash alone is not enough on smooth images (backgrounds dominated by a gradient share most bits): a
dHash pair is kept only when the whole-image descriptors also agree (``dhash_confirm``). It is off by
default: on the embedded world's planted set it added no recall and cost precision (0.97 -> 0.86);
set ``dhash_distance`` (e.g. 4) for pools of photographs, where gradients are rarer.

Pairs become groups by union-find; each group keeps one image (the first in pool order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ie_env.curation.index import VectorIndex


@dataclass(frozen=True)
class CopyConfig:
    """Settings of the copy descriptor and its threshold (defaults measured on a planted set:
    ``benchmarks/curation.py``)."""

    size: int = 12  # thumbnail side
    scales: tuple[float, ...] = (0.9, 0.8)  # window sides as a share of the image side
    grid: int = 4  # window positions per axis at each scale
    threshold: float = 0.95  # cosine of two copies
    dhash_distance: int = -1  # Hamming distance of two copies' dHashes (<= this); -1: dHash off (see below)
    dhash_confirm: float = 0.9  # a dHash pair counts only if the whole-image descriptors' cosine reaches this
    neighbours: int = 8  # candidates per window searched

    def validate(self) -> None:
        if not 4 <= self.size <= 64:
            raise ValueError(f"copy descriptor size must be in [4, 64], got {self.size}")
        if any(not 0.3 <= s < 1.0 for s in self.scales) or self.grid < 1:
            raise ValueError(f"window scales must lie in [0.3, 1) and grid >= 1, got {self.scales}, {self.grid}")
        if not 0.0 < self.threshold <= 1.0 or not -1 <= self.dhash_distance <= 64 or self.neighbours < 2:
            raise ValueError("need 0 < threshold <= 1, -1 <= dhash_distance <= 64 and neighbours >= 2")

    @property
    def windows_per_image(self) -> int:
        return 1 + len(self.scales) * self.grid * self.grid


def _standardise(x: np.ndarray) -> np.ndarray:
    """Rows of ``(M, S, S, 3)``: subtract each channel's mean, divide by the row's std, L2-normalise."""
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x = x.reshape(len(x), -1)
    x = x / (x.std(axis=1, keepdims=True) + 1e-6)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def copy_descriptors(image: np.ndarray, cfg: CopyConfig) -> np.ndarray:
    """``(windows_per_image, 3 * size**2)`` float32: the whole image first, then every window.

    Thumbnails are area averages (Pillow's box filter over each window, single-threaded C).
    """
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    w, h = img.size
    boxes = [(0.0, 0.0, float(w), float(h))]
    for s in cfg.scales:
        cw, ch = w * s, h * s
        for y in np.linspace(0.0, h - ch, cfg.grid):
            for x in np.linspace(0.0, w - cw, cfg.grid):
                boxes.append((float(x), float(y), float(x + cw), float(y + ch)))
    size = (cfg.size, cfg.size)
    thumbs = np.stack([np.asarray(img.resize(size, Image.BOX, box=b), np.float32) for b in boxes])
    return _standardise(thumbs)


class UnionFind:
    """Disjoint sets over ``0..n-1``; :meth:`groups` lists the sets of more than one element."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest image is the root

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def window_pairs(
    full: np.ndarray,
    windows: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    neighbours: int = 8,
    index_kind: str = "auto",
) -> list[tuple[int, int, float]]:
    """Copy pairs ``(i, j, cosine)``, ``i != j``: a window of image ``i`` against whole image ``j``.

    :param full: ``(N, d)`` whole-image descriptors (the index).
    :param windows: chunks of ``(owner, descriptors)``: ``(M,)`` image index and ``(M, d)`` rows.
    :param index_kind: the :class:`VectorIndex` kind over ``full``.
    """
    pairs: list[tuple[int, int, float]] = []
    k = min(neighbours, len(full))
    index = VectorIndex(full, kind=index_kind)
    for owner, desc in windows:
        sims, idx = index.search(desc, k)
        hit = (sims >= threshold) & (idx != owner[:, None]) & (idx >= 0)
        rows, cols = np.nonzero(hit)
        pairs.extend(zip(owner[rows].tolist(), idx[rows, cols].tolist(), sims[rows, cols].tolist(), strict=False))
    return pairs


def embedding_pairs(
    emb: np.ndarray, threshold: float, neighbours: int = 8, index_kind: str = "auto"
) -> list[tuple[int, int, float]]:
    """Copy pairs by cosine of (L2-normalised) embeddings, each image against all others (queried in
    chunks, so a memory-mapped ``emb`` is never copied whole)."""
    chunk = 65_536
    chunks = ((np.arange(s, min(s + chunk, len(emb))), emb[s : s + chunk]) for s in range(0, len(emb), chunk))
    return window_pairs(emb, chunks, threshold, neighbours, index_kind)


def dhash_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)``, ``i < j``, of 64-bit dHashes within ``max_distance`` bits (chunked
    all-pairs popcount: fine to a few hundred thousand images)."""
    h = np.asarray(hashes, dtype=np.uint64)
    out: list[tuple[int, int, int]] = []
    if max_distance < 0:
        return out
    for s in range(0, len(h), chunk):
        block = h[s : s + chunk]
        d = (
            np.bitwise_count(block[:, None] ^ h[None, :])
            if hasattr(np, "bitwise_count")
            else _popcount(block[:, None] ^ h[None, :])
        )
        rows, cols = np.nonzero(d <= max_distance)
        keep = cols > rows + s
        out.extend(
            zip((rows[keep] + s).tolist(), cols[keep].tolist(), d[rows[keep], cols[keep]].tolist(), strict=False)
        )
    return out


def confirmed(pairs: Sequence[tuple[int, int, int]], full: np.ndarray, min_cosine: float) -> list[tuple[int, int, int]]:
    """The pairs whose whole-image descriptors (rows of ``full``) reach ``min_cosine``."""
    if not pairs:
        return []
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    cos = np.einsum("ij,ij->i", full[i], full[j])
    return [p for p, c in zip(pairs, cos, strict=False) if c >= min_cosine]


def _popcount(x: np.ndarray) -> np.ndarray:
    table = np.array([(i).bit_count() for i in range(256)], np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1)


def copy_groups(n: int, pairs: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Root (first image in pool order) of each image's copy group, ``(n,)``."""
    uf = UnionFind(n)
    for i, j, _ in pairs:
        uf.union(int(i), int(j))
    return uf.roots()
