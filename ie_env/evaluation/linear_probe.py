"""Linear probe: L2-regularised logistic regression on frozen features.

The inverse regularisation strength C is chosen on a seeded, stratified validation split carved from
the training set (ties broken by validation log-loss), the model is refit on the whole training set
with that C, and test accuracy is reported. Features are standardised with training statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))


def _to_numpy(x: Any, name: str, ndim: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> Any:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def linear_probe_accuracy(
    train_feats: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor | Sequence,
    test_feats: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor | Sequence,
    seed: int = 0,
    grid: Sequence[float] = DEFAULT_GRID,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Returns ``{"accuracy", "best_C", "val_accuracy", "val_accuracy_by_C"}``."""
    xtr = _to_numpy(train_feats, "train_feats", 2).astype(np.float64)
    xte = _to_numpy(test_feats, "test_feats", 2).astype(np.float64)
    ytr = _to_numpy(train_labels, "train_labels", 1)
    yte = _to_numpy(test_labels, "test_labels", 1)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError("features and labels must have the same number of rows")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train and test features differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    if len(xte) == 0:
        raise ValueError("linear probe needs at least one test example")
    if not (np.isfinite(xtr).all() and np.isfinite(xte).all()):
        raise ValueError("features contain NaN or inf")
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear probe needs at least two classes in the training labels")
    if not grid or any(c <= 0 for c in grid):
        raise ValueError(f"grid must hold positive C values, got {list(grid)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    scores: dict[float, float] = {}
    best: tuple[float, float, float] | None = None  # (val acc, -val log-loss, C)
    if len(grid) == 1:
        best_c = float(grid[0])
    else:
        try:
            i_fit, i_val = train_test_split(
                np.arange(len(ytr)), test_size=val_fraction, random_state=seed, stratify=ytr
            )
        except ValueError:  # a class too small to stratify: plain seeded split
            i_fit, i_val = train_test_split(np.arange(len(ytr)), test_size=val_fraction, random_state=seed)
        if len(np.unique(ytr[i_fit])) < 2:
            raise ValueError("the validation split left fewer than two classes to fit; give more training data")
        for c in grid:
            clf = _fit(xtr[i_fit], ytr[i_fit], float(c), max_iter)
            acc = float(np.mean(clf.predict(xtr[i_val]) == ytr[i_val]))
            proba = clf.predict_proba(xtr[i_val])
            ll = (
                float(log_loss(ytr[i_val], proba, labels=clf.classes_))
                if set(ytr[i_val]) <= set(clf.classes_)
                else np.inf
            )
            scores[float(c)] = acc
            key = (acc, -ll, -float(c))
            if best is None or key > best:
                best = key
        assert best is not None
        best_c = -best[2]
    clf = _fit(xtr, ytr, best_c, max_iter)
    return {
        "accuracy": float(np.mean(clf.predict(xte) == yte)),
        "best_C": best_c,
        "val_accuracy": scores.get(best_c, float("nan")),
        "val_accuracy_by_C": scores,
    }
