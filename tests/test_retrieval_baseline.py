"""The retrieval baseline: the exploring run's image budget, retrieved from the world's pool view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ie_env.config import ConfigError, from_dict
from ie_experiments.retrieval_baseline import _retrieve, new_images_per_iteration, retrieval_from_run, run_retrieval
from ie_experiments.run import RunConfig, Runner
from ie_experiments.target_only import target_only_from_run, trained_images_per_iteration
from tests.conftest import latent_config, pixel_config


def _explore(run_dir: Path, env: dict, agent: str = "random") -> Path:
    cfg = from_dict(RunConfig, {"env": env, "agent": agent, "seed": 3})
    Runner(cfg, run_dir, progress=False).run()
    return run_dir


def test_retrieve_takes_the_nearest_rows_and_never_twice():
    feats = np.eye(6, dtype=np.float32)[[0, 0, 1, 1, 2, 3]] + 0.01
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    targets = np.eye(6, dtype=np.float32)[[0, 1]]
    taken = np.zeros(6, bool)
    first = _retrieve(feats, targets, 4, taken)
    assert first.tolist() == [0, 1, 2, 3]
    taken[first] = True
    assert _retrieve(feats, targets, 4, taken).tolist() == [4, 5]  # only what is left


def test_retrieval_baseline_matches_the_runs_image_budget_and_compute(tmp_path):
    env = pixel_config()
    run = _explore(tmp_path / "explore", env)
    new = new_images_per_iteration(run)
    pcr = 2.0
    assert [n + round(pcr * n) for n in new] == trained_images_per_iteration(run)
    summary = retrieval_from_run(run, tmp_path / "ret", per_concept=1)
    assert summary["agent"] == "retrieval" and summary["new_images_per_iteration"] == new
    assert summary["pool_images"] == 2518 and len(summary["knn_accuracy"]) == len(new) + 1
    # Equal images, equal SSL steps: the same compute as the target-only baseline of that run.
    target_only = target_only_from_run(run, tmp_path / "to")
    assert summary["ssl_steps_per_iteration"] == target_only["ssl_steps_per_iteration"]
    assert summary["knn_accuracy"][0] == target_only["knn_accuracy"][0]  # same warm-up and weights
    shares = summary["retrieved_relevant_share_per_iteration"]
    assert all(0.0 <= s <= 1.0 for s in shares)
    assert summary["new_relevant_images"] == sum(summary["new_relevant_images_per_iteration"])
    on_disk = json.loads((tmp_path / "ret" / "summary.json").read_text())
    assert on_disk["knn_accuracy"] == summary["knn_accuracy"]


def test_retrieval_baseline_needs_pixels():
    cfg = from_dict(RunConfig, {"env": latent_config(iterations=2), "agent": "random", "seed": 0})
    with pytest.raises(ConfigError, match="pixels"):
        run_retrieval(cfg, [10, 10], per_concept=1)
