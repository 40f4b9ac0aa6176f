"""Selecting pool images: DINOv2's two targeted retrievals and a balanced untargeted sample.

* :func:`sample_based` - the ``k`` nearest pool images of each target image (DINOv2 for small seed sets).
* :func:`cluster_based` - k-means over the pool; each target image votes for its nearest cluster and the
  budget is drawn from the clusters in proportion to their votes (DINOv2 for large seed sets).
* :func:`balanced_hierarchical` - untargeted: a two-level k-means and a sample that gives every top-level
  cluster, then every sub-cluster inside it, an equal share (capped by size, the rest passed on), so
  rare modes are not drowned by frequent ones (Vo et al. 2024, "Automatic data curation").

All draws are seeded; every function returns pool row indices in ascending order.
"""

from __future__ import annotations

import numpy as np

from ie_env.curation.index import VectorIndex, require_faiss


def sample_based(
    index: VectorIndex, targets: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Union of the ``k`` nearest allowed pool rows of every target row.

    :param index: the pool's embeddings.
    :param targets: ``(T, d)`` L2-normalised target embeddings.
    :param allowed: bool mask over the pool (False rows are never returned); None allows all.
    :return: ``(rows, score)``: selected rows and each one's best cosine to any target.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(index.base)
    extra = 0 if allowed is None else int((~allowed).sum())
    sims, idx = index.search(targets, min(n, k + extra))
    best = np.full(n, -np.inf, dtype=np.float32)
    for t in range(len(targets)):
        row, sim = idx[t], sims[t]
        ok = row >= 0
        if allowed is not None:
            ok &= allowed[np.clip(row, 0, n - 1)]
        row, sim = row[ok][:k], sim[ok][:k]
        np.maximum.at(best, row, sim)
    rows = np.flatnonzero(np.isfinite(best))
    return rows, best[rows]


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss): ``(centroids (k, d), assignment (N,))``."""
    faiss = require_faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, (len(x) + k - 1) // k))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def water_fill(capacity: np.ndarray, budget: int) -> np.ndarray:
    """Equal shares of ``budget`` over bins, each capped by its ``capacity``; what a full bin cannot
    take goes to the others (ties broken by bin order)."""
    cap = np.asarray(capacity, dtype=np.int64)
    take = np.zeros_like(cap)
    budget = int(min(budget, cap.sum()))
    while budget > 0:
        open_bins = np.flatnonzero(take < cap)
        share = max(1, budget // len(open_bins))
        for b in open_bins:
            add = min(share, cap[b] - take[b], budget)
            take[b] += add
            budget -= add
            if budget == 0:
                break
    return take


def _draw(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return rows if count >= len(rows) else rng.choice(rows, size=count, replace=False)


def cluster_based(
    pool: np.ndarray,
    targets: np.ndarray,
    budget: int,
    n_clusters: int,
    seed: int = 0,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
    """``budget`` rows from the pool clusters that hold the targets' nearest centroids, in proportion
    to how many target rows chose each cluster (largest remainder; a short cluster passes its rest on).

    :return: ``(rows, votes)``: selected rows and the target votes per cluster.
    """
    ok = np.ones(len(pool), bool) if allowed is None else allowed
    cand = np.flatnonzero(ok)
    cents, assign = kmeans(pool[cand], n_clusters, seed)
    votes_idx = np.argmax(targets @ cents.T, axis=1)
    votes = np.bincount(votes_idx, minlength=len(cents))
    members = [cand[assign == c] for c in range(len(cents))]
    want = votes / max(votes.sum(), 1) * budget
    alloc = np.floor(want).astype(np.int64)
    for c in np.argsort(-(want - alloc), kind="stable")[: budget - int(alloc.sum())]:
        alloc[c] += 1
    cap = np.array([len(m) for m in members])
    over = np.maximum(alloc - cap, 0).sum()
    alloc = np.minimum(alloc, cap)
    voted = votes > 0
    if over:  # pass the rest to the other voted clusters, then to any cluster
        for mask in (voted, np.ones_like(voted)):
            spare = np.where(mask, cap - alloc, 0)
            extra = water_fill(spare, int(over))
            alloc += extra
            over -= int(extra.sum())
            if not over:
                break
    rng = np.random.default_rng(seed)
    rows = [_draw(members[c], int(alloc[c]), rng) for c in range(len(cents)) if alloc[c]]
    chosen = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    return chosen, {int(c): int(v) for c, v in enumerate(votes) if v}


def balanced_hierarchical(
    pool: np.ndarray, budget: int, levels: tuple[int, int] = (100, 10), seed: int = 0,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Untargeted balanced sample: k-means into ``levels[0]`` clusters, their centroids into
    ``levels[1]`` groups; equal shares per group, then per cluster in a group, then uniform rows."""
    ok = np.ones(len(pool), bool) if allowed is None else allowed
    cand = np.flatnonzero(ok)
    cents, assign = kmeans(pool[cand], levels[0], seed)
    _, top = kmeans(cents, levels[1], seed + 1)
    members = [cand[assign == c] for c in range(len(cents))]
    groups = [np.flatnonzero(top == g) for g in range(int(top.max()) + 1)]
    group_cap = np.array([sum(len(members[c]) for c in g) for g in groups])
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for g, take in zip(groups, water_fill(group_cap, budget), strict=False):
        per_cluster = water_fill(np.array([len(members[c]) for c in g]), int(take))
        rows += [_draw(members[c], int(t), rng) for c, t in zip(g, per_cluster, strict=False) if t]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
