"""An image-folder target end to end: ie-explore writes k-NN + linear probe, ie-eval re-measures them;
every shipped config resolves."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

from ie_experiments.compare import load_compare_config
from ie_env.config import resolve
from ie_experiments.eval import main as eval_main
from ie_experiments.run import build_config, read_checkpoint
from ie_experiments.run import main as run_main
from tests.conftest import pixel_config
from tests.test_targets import make_folder

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml"))
KEYS = ("knn_accuracy", "knn_accuracy_k10", "knn_accuracy_k200", "linear_probe_accuracy")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder_run")
    root = make_folder(tmp / "imgs", per_class=8)
    env = pixel_config(target={"kind": "imagefolder", "root": str(root), "test_fraction": 0.5})
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": env, "threads": 1, "log_images": False}))
    out = tmp / "run"
    rc = run_main(["--config", str(cfg), "--agent", "random", "--logdir", str(out), "--no-progress"])
    return rc, out, root


def test_imagefolder_run_summary_has_knn_and_linear_probe(folder_run):
    rc, out, _ = folder_run
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["knn_accuracy"]) == 3  # before exploring + 2 iterations
    assert all(0.0 <= a <= 1.0 for a in summary["knn_accuracy"])
    assert 0.0 <= summary["linear_probe_accuracy"] <= 1.0
    assert summary["linear_probe_best_C"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["env"]["target"]["kind"] == "imagefolder"


def test_ie_eval_on_run_checkpoint_and_bare_state(folder_run, tmp_path, capsys):
    rc, out, root = folder_run
    assert rc == 0
    ckpt = sorted((out / "checkpoints").glob("iter_*.pt"))[-1]
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(ckpt), "--target-kind", "imagefolder", "--root", str(root),
                      "--test-fraction", "0.5", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    for k in KEYS:
        assert 0.0 <= res[k] <= 1.0
    assert res["skipped_files"] == 2 and res["classes"] == 3
    # k-NN at k=20 matches the run's last evaluation: same encoder, same target split
    summary = json.loads((out / "summary.json").read_text())
    assert res["knn_accuracy"] == pytest.approx(summary["knn_accuracy"][-1])
    assert res["linear_probe_accuracy"] == pytest.approx(summary["linear_probe_accuracy"])
    bare = tmp_path / "learner.pt"
    torch.save(read_checkpoint(ckpt)["env"]["learner"], bare)
    assert eval_main(["--checkpoint", str(bare), "--target-kind", "imagefolder", "--root", str(root),
                      "--test-fraction", "0.5", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["knn_accuracy"] == res["knn_accuracy"]


def test_ie_eval_refuses_bad_input(tmp_path, capsys):
    assert eval_main(["--checkpoint", str(tmp_path / "nope.pt"), "--target-kind", "imagefolder", "--root", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    assert eval_main(["--checkpoint", str(junk), "--target-kind", "imagefolder", "--root", str(tmp_path)]) == 2
    assert "SSLLearner" in capsys.readouterr().err


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_resolves(path):
    data = yaml.safe_load(path.read_text())
    if "algo" in data:  # ie-train
        from ie_experiments.train import TrainConfig

        cfg = resolve(TrainConfig, path)
    elif isinstance(data.get("compare"), dict):  # ie-compare
        cfg, _ = load_compare_config(path)
    else:
        cfg = build_config(Namespace(config=str(path), overrides=[], agent=None, seed=None))
    assert cfg.env.queries_per_iteration >= 1


def test_paper_configs_hold_the_paper_settings():
    for path in (p for p in CONFIGS if p.name.startswith("paper_")):
        cfg = build_config(Namespace(config=str(path), overrides=[], agent=None, seed=None))
        s, e = cfg.env.ssl, cfg.env
        assert (s.backbone, s.image_size, s.optimizer, s.batch_size) == ("resnet50", 224, "lars", 224)
        assert s.lr == pytest.approx(0.8 * 224 / 256) and s.momentum_ema == 0.9985 and s.crop_min_scale == 0.2
        assert s.epochs_per_iteration == 10 and e.pcr == 2 and e.queries_per_iteration == 256
        assert e.images_per_query == 100 and e.world.image_size == 224 and e.target.kind == "torchvision"
