"""Weighted k-NN and linear probe on frozen features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ie_env.evaluation.knn import knn_accuracies, knn_accuracy, knn_predict
from ie_env.evaluation.linear_probe import linear_probe_accuracy


def brute_force_knn(train, ytr, test, k, T):
    """Reference: loop over test points, sort all similarities, weighted vote."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    classes = np.unique(ytr)
    preds = []
    for x in test:
        s = train @ x
        order = np.argsort(-s, kind="stable")[: min(k, len(train))]
        votes = {c: 0.0 for c in classes}
        for j in order:
            votes[ytr[j]] += np.exp(s[j] / T)
        preds.append(max(classes, key=lambda c: votes[c]))
    return np.array(preds)


def clusters(n_per: int, n_cls: int, dim: int, spread: float, seed: int):
    r = np.random.default_rng(seed)
    centres = r.normal(size=(n_cls, dim))
    x = np.concatenate([c + spread * r.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(n_cls), n_per)
    return x, y


def test_knn_matches_brute_force():
    r = np.random.default_rng(0)
    xtr, ytr = r.normal(size=(300, 8)).astype(np.float32), r.integers(0, 5, 300)
    xte, yte = r.normal(size=(80, 8)).astype(np.float32), r.integers(0, 5, 80)
    preds = knn_predict(xtr, ytr, xte, ks=(1, 10, 20, 200), T=0.07)
    for k in (1, 10, 20, 200):
        ref = brute_force_knn(xtr.astype(np.float64), ytr, xte.astype(np.float64), k, 0.07)
        assert np.array_equal(preds[k], ref), k
    accs = knn_accuracies(xtr, ytr, xte, yte, ks=(10, 20, 200))
    assert set(accs) == {10, 20, 200}
    for k, acc in accs.items():
        assert acc == pytest.approx(np.mean(preds[k] == yte))
        assert knn_accuracy(xtr, ytr, xte, yte, k=k) == acc
    # Temperature matters: a large T approaches a plain majority vote.
    hot = brute_force_knn(xtr.astype(np.float64), ytr, xte.astype(np.float64), 20, 100.0)
    assert np.array_equal(knn_predict(xtr, ytr, xte, ks=(20,), T=100.0)[20], hot)


def test_knn_on_separated_clusters_and_label_types():
    xtr, ytr = clusters(30, 4, 16, 0.05, seed=1)
    xte, yte = clusters(10, 4, 16, 0.05, seed=1)
    names = np.array(["cat", "dog", "owl", "yak"])
    assert (
        knn_accuracy(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)) == 1.0
    )
    assert knn_accuracy(xtr, names[ytr], xte, names[yte], k=5) == 1.0
    # Shuffled labels: no better than chance-ish.
    r = np.random.default_rng(2)
    assert knn_accuracy(xtr, r.permutation(ytr), xte, yte) < 0.6


def test_knn_k_larger_than_train_and_errors():
    xtr, ytr = clusters(3, 2, 4, 0.01, seed=3)
    xte, yte = clusters(2, 2, 4, 0.01, seed=3)
    accs = knn_accuracies(xtr, ytr, xte, yte, ks=(200,))
    assert accs[200] == pytest.approx(knn_accuracies(xtr, ytr, xte, yte, ks=(6,))[6])
    with pytest.raises(ValueError):
        knn_accuracy(xtr, ytr[:-1], xte, yte)
    with pytest.raises(ValueError):
        knn_accuracy(xtr, ytr, xte[:, :3], yte)
    with pytest.raises(ValueError):
        knn_accuracies(xtr, ytr, xte, yte, ks=(0,))
    with pytest.raises(ValueError):
        knn_accuracy(xtr, ytr, xte, yte, T=0.0)
    bad = xte.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_accuracy(xtr, ytr, bad, yte)


def test_linear_probe_separates_separable_data():
    xtr, ytr = clusters(40, 5, 32, 0.3, seed=4)
    xte, yte = clusters(20, 5, 32, 0.3, seed=4)
    grid = (1e-3, 1e-1, 10.0)
    res = linear_probe_accuracy(xtr, ytr, xte, yte, seed=0, grid=grid)
    assert res["accuracy"] == 1.0
    assert res["best_C"] in grid and set(res["val_accuracy_by_C"]) == set(grid)
    assert res == linear_probe_accuracy(xtr, ytr, xte, yte, seed=0, grid=grid)  # seeded


def test_linear_probe_picks_regularisation_and_fails_on_noise():
    r = np.random.default_rng(5)
    n = 120
    y = r.integers(0, 3, n + 300)
    x = r.normal(size=(n + 300, 50))
    x[np.arange(len(y)), y] += 3.0  # class c raises feature c
    # C = 1e-8 shrinks every weight to ~0 (chance); the search must reject it for C = 1.
    res = linear_probe_accuracy(x[:n], y[:n], x[n:], y[n:], seed=1, grid=(1e-8, 1.0))
    assert res["best_C"] == 1.0
    assert res["val_accuracy_by_C"][1e-8] < res["val_accuracy_by_C"][1.0]
    assert res["accuracy"] > 0.8
    forced = linear_probe_accuracy(x[:n], y[:n], x[n:], y[n:], grid=(1e-8,))
    assert forced["accuracy"] < 0.5
    noise = linear_probe_accuracy(x[:n], r.permutation(y[:n]), x[n:], y[n:], seed=1, grid=(1.0,))
    assert noise["accuracy"] < 0.5
    with pytest.raises(ValueError, match="two classes"):
        linear_probe_accuracy(x[:n], np.zeros(n), x[n:], y[n:])
    with pytest.raises(ValueError):
        linear_probe_accuracy(x[:n], y[:n], x[n:, :5], y[n:])
    with pytest.raises(ValueError):
        linear_probe_accuracy(x[:n], y[:n], x[n:], y[n:], grid=(0.0,))
