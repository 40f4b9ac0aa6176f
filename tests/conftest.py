"""Shared fixtures: small, fast configs of the embedded world."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def latent_config(**over):
    """A latent-fidelity env config small enough for unit tests."""
    cfg = {
        "world": {"fidelity": "latent"},
        "images_per_query": 20,
        "queries_per_iteration": 4,
        "iterations": 3,
        "warmup_images": 100,
    }
    cfg.update(over)
    return cfg


def pixel_config(**over):
    """A pixels + SSL config with a tiny timm model: seconds, not minutes."""
    cfg = {
        "world": {"fidelity": "pixels", "image_size": 32, "num_targets": 4, "target_train_per_class": 5, "target_test_per_class": 5},
        "ssl": {"backbone": "test_resnet", "batch_size": 32, "hidden_dim": 64, "proj_dim": 32, "max_steps": 2, "min_steps": 1, "deterministic": True, "device": "cpu"},
        "images_per_query": 12,
        "queries_per_iteration": 3,
        "iterations": 2,
        "warmup_images": 32,
        "knn_k": [20, 10],
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture
def small_latent():
    return latent_config()


@pytest.fixture
def small_pixels():
    return pixel_config()


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_the_test_tmpdir(tmp_path_factory):
    """SB3 writes a log folder for every model trained without a log dir (``$SB3_LOGDIR``, else a new
    ``SB3-<time>`` folder in the system temp dir): keep them in pytest's temp folder."""
    old = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    if old is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = old
