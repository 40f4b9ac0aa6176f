"""Weighted k-NN classification on frozen features (Wu et al. 2018 / DINO protocol).

Cosine similarity between L2-normalised features; each of the k nearest training points votes for
its label with weight ``exp(s / T)``; the class with the largest total wins. All k values of one call
share a single similarity / top-k pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_KS = (10, 20, 200)


def _as_features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach().cpu())
    if t.ndim != 2 or not torch.is_floating_point(t):
        raise ValueError(f"{name} must be a float (N, D) array, got {t.dtype} {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return F.normalize(t.float(), dim=1)


def _as_labels(y: np.ndarray | torch.Tensor | Sequence, n: int, name: str) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {a.shape}")
    return a


def knn_predict(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor | Sequence,
    test_feats: np.ndarray | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = 0.07,
) -> dict[int, np.ndarray]:
    """Predicted labels of ``test_feats`` for every k in ``ks`` (k above the train size uses all)."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    tr = _as_features(train_feats, "train_feats")
    te = _as_features(test_feats, "test_feats")
    if tr.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train and test features differ in width: {tr.shape[1]} vs {te.shape[1]}")
    ytr = _as_labels(train_labels, tr.shape[0], "train_labels")
    classes, y_idx = np.unique(ytr, return_inverse=True)
    y_idx_t = torch.from_numpy(y_idx.astype(np.int64))
    n_cls = len(classes)
    kmax = min(max(int(k) for k in ks), tr.shape[0])
    chunk = max(1, min(4096, (1 << 25) // max(tr.shape[0], 1)))
    preds: dict[int, list[np.ndarray]] = {int(k): [] for k in ks}
    for i in range(0, te.shape[0], chunk):
        sims = te[i : i + chunk] @ tr.t()
        top_s, top_i = sims.topk(kmax, dim=1, largest=True, sorted=True)
        w = (top_s / T).exp()
        lab = y_idx_t[top_i]
        for k, out in preds.items():
            kk = min(k, kmax)
            votes = torch.zeros(top_s.shape[0], n_cls, dtype=w.dtype)
            votes.scatter_add_(1, lab[:, :kk], w[:, :kk])
            out.append(classes[votes.argmax(dim=1).numpy()])
    empty = np.empty(0, dtype=classes.dtype)
    return {k: (np.concatenate(v) if v else empty) for k, v in preds.items()}


def knn_accuracies(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor | Sequence,
    test_feats: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor | Sequence,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = 0.07,
) -> dict[int, float]:
    """``{k: accuracy}`` for every k in ``ks``, computed in one pass."""
    n_test = len(test_feats)
    yte = _as_labels(test_labels, n_test, "test_labels")
    if n_test == 0:
        raise ValueError("k-NN accuracy needs at least one test feature")
    preds = knn_predict(train_feats, train_labels, test_feats, ks, T)
    return {k: float(np.mean(p == yte)) for k, p in preds.items()}


def knn_accuracy(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor | Sequence,
    test_feats: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor | Sequence,
    k: int = 20,
    T: float = 0.07,
) -> float:
    """Weighted k-NN accuracy (the project's ``knn_accuracy``: k = 20, T = 0.07)."""
    return knn_accuracies(train_feats, train_labels, test_feats, test_labels, ks=(k,), T=T)[int(k)]
