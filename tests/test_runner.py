"""ie-explore: the run directory, bad input, and resuming after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from experiments.run import main
from tests.conftest import latent_config, pixel_config

ROOT = Path(__file__).resolve().parents[1]


def _write_cfg(tmp_path: Path, env: dict, **top) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"env": env, "threads": 1, **top}))
    return path


def test_latent_run_writes_the_run_directory(tmp_path):
    cfg = _write_cfg(tmp_path, latent_config())
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"] == "random" and summary["iterations"] == 3 and summary["queries"] == 12
    assert len(summary["knn_accuracy"]) == 4  # index 0 before exploring
    assert len(summary["mean_reward_per_iteration"]) == 3
    assert len(summary["mean_true_relevance_per_iteration"]) == 3
    for key in ("distinct_relevant_concepts", "new_relevant_images", "target_classes_hit_share", "knn_accuracy_k10"):
        assert key in summary
    lines = (out / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["step"] == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["agent"] == "random" and saved["env"]["queries_per_iteration"] == 4
    assert list((out / "tb").rglob("events.out.tfevents*"))
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["iter_0002.pt", "iter_0003.pt"]


def test_bad_input_is_refused_clearly(tmp_path, capsys):
    cfg = _write_cfg(tmp_path, latent_config())
    assert main(["--config", str(cfg), "--set", "env.bogus=1", "--logdir", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "env.bogus" in err and "queries_per_iteration" in err
    assert main(["--config", str(cfg), "--agent", "nope", "--logdir", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "random" in capsys.readouterr().err  # lists the registered agents
    run = tmp_path / "c"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 0
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err  # never overwrites a run silently
    assert main(["--config", str(cfg), "--agent", "random", "--set", "env.k=3", "--logdir", str(run), "--resume", "--no-progress"]) == 2
    assert "env.k" in capsys.readouterr().err  # resume against another config is refused


def _weights_hash(run: Path) -> str:
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    h = hashlib.sha256()
    for k, v in sorted(state["env"]["learner"]["model"].items()):
        h.update(k.encode())
        h.update(v.cpu().numpy().tobytes())
    return h.hexdigest()


def _cmd(cfg: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.run", "--config", str(cfg), "--agent", "gp", "--logdir", str(run), "--no-progress", *extra]


def test_sigkill_mid_iteration_then_resume_matches_uninterrupted(tmp_path):
    env = pixel_config(iterations=3, queries_per_iteration=4, ssl={"max_steps": 4})
    cfg = _write_cfg(tmp_path, env)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    envvars = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_cmd(cfg, ref), check=True, cwd=ROOT, env=envvars, capture_output=True)

    proc = subprocess.Popen(_cmd(cfg, killed), cwd=ROOT, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "queries.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill inside the second iteration (after its 2nd query)
        if log.exists() and len(log.read_text().splitlines()) >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().splitlines())
    assert 6 <= done_before < 12, "the kill must land mid-run"

    subprocess.run(_cmd(cfg, killed, "--resume"), check=True, cwd=ROOT, env=envvars, capture_output=True)
    assert log.read_text() == (ref / "queries.jsonl").read_text()  # no line lost, none repeated
    assert _weights_hash(killed) == _weights_hash(ref)
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((killed / "summary.json").read_text())
    assert s_res["knn_accuracy"] == s_ref["knn_accuracy"]
    # What was logged before the kill was neither downloaded nor scored again.
    n = env["images_per_query"]
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    redo = [r for r in lines[done_before:] if not r["cached"]]
    assert s_res["counters_this_process"]["materialized_images"] <= len(redo) * n
    assert s_res["counters_this_process"]["materialized_images"] < s_ref["counters_this_process"]["materialized_images"]


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    cfg = _write_cfg(tmp_path, latent_config())
    run = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 0
    ref = (run / "queries.jsonl").read_text()
    latest = sorted((run / "checkpoints").glob("*.pt"))[-1]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    (run / "summary.json").unlink()
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "queries.jsonl").read_text() == ref
    assert json.loads((run / "summary.json").read_text())["queries"] == 12
