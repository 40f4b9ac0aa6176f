"""Nearest-neighbour search on L2-normalised float32 rows: exact (faiss flat or NumPy) or faiss IVF/PQ.

Small sets are searched exactly; large ones with an inverted file (``IVF``, optionally product-quantised
``IVFPQ``) so memory and time stay bounded. faiss is optional for the exact path (NumPy fallback) and
required for IVF/PQ, with a clear error naming the extra to install.
"""

from __future__ import annotations

import numpy as np


def faiss_or_none():
    try:
        import faiss

        return faiss
    except ImportError:
        return None


def require_faiss():
    faiss = faiss_or_none()
    if faiss is None:
        raise RuntimeError("this index needs faiss: pip install 'ie-env[corpus]' (faiss-cpu)")
    return faiss


def knn_search(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries`` over ``base``: ``(sims, idx)``, each ``(Q, k)``."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(base))
    if k == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    faiss = faiss_or_none()
    if faiss is not None:
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        return index.search(queries, k)
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), chunk):
        d = queries[s : s + chunk] @ base.T
        part = np.argpartition(-d, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(d, part, 1), axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(part, order, 1)
        sims[s : s + chunk] = np.take_along_axis(d, idx[s : s + chunk], 1)
    return sims, idx


class VectorIndex:
    """An inner-product index over ``base``: ``flat`` (exact), ``ivf`` or ``ivfpq`` (approximate).

    :param base: ``(N, d)`` L2-normalised float32 rows (a memory map is fine: IVF trains on a sample
        and adds in chunks).
    :param kind: ``auto`` picks ``flat`` below ``ivf_threshold`` rows, ``ivf`` above.
    :param nlist: inverted lists (default ``4 * sqrt(N)``); ``nprobe`` lists are visited per query.
    :param pq_bytes: bytes per vector for ``ivfpq`` (must divide ``d``).
    """

    def __init__(
        self,
        base: np.ndarray,
        kind: str = "auto",
        ivf_threshold: int = 200_000,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_bytes: int = 16,
        seed: int = 0,
        chunk: int = 65_536,
    ) -> None:
        if kind not in ("auto", "flat", "ivf", "ivfpq"):
            raise ValueError(f"index kind must be auto, flat, ivf or ivfpq, got {kind!r}")
        n, d = base.shape
        self.kind = ("ivf" if n >= ivf_threshold else "flat") if kind == "auto" else kind
        self.base = base
        self.index = None
        if self.kind == "flat":
            return
        faiss = require_faiss()
        nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        if self.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % pq_bytes:
                raise ValueError(f"pq_bytes={pq_bytes} must divide the dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, max(nlist * 39, 10_000)), replace=False))
        index.train(np.ascontiguousarray(base[sample], dtype=np.float32))
        for s in range(0, n, chunk):
            index.add(np.ascontiguousarray(base[s : s + chunk], dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return knn_search(self.base, queries, k)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.base)))
