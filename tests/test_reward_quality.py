"""Reward-quality figures: panel, AUC, Spearman, top-20, the latent twin, and the one command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import latent_config, pixel_config
from sklearn.metrics import roc_auc_score

from ie_env.env import InternetExplorerEnv
from ie_env.evaluation.reward_quality import (
    RewardQualityProbe,
    auc,
    concept_panel,
    reward_quality,
)
from ie_experiments import reward_quality as rq_cli


def test_panel_is_every_relevant_concept_plus_a_seeded_sample():
    g = np.random.default_rng(0).random(300) ** 4
    relevant = set(np.flatnonzero(g >= 0.5))
    panel = concept_panel(g, sample=40, seed=0)
    assert relevant <= set(panel) and len(panel) == len(relevant) + 40
    assert np.array_equal(panel, np.sort(panel)) and len(set(panel)) == len(panel)
    assert np.array_equal(panel, concept_panel(g, sample=40, seed=0))
    assert not np.array_equal(panel, concept_panel(g, sample=40, seed=1))
    assert np.array_equal(concept_panel(g, sample=-1), np.arange(300))
    assert len(concept_panel(g, sample=10_000)) == 300


def test_auc_spearman_and_top20():
    rng = np.random.default_rng(1)
    g = rng.random(200)
    noisy = g + rng.normal(0, 0.3, 200)
    assert auc(noisy, g >= 0.5) == pytest.approx(roc_auc_score(g >= 0.5, noisy))
    assert auc(np.ones(5), np.array([1, 0, 1, 0, 0], bool)) == 0.5
    assert np.isnan(auc(np.arange(3), np.zeros(3, bool)))
    perfect = reward_quality(g * 2 + 1, g)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["auc"] == 1.0
    assert perfect["top20_relevant"] == min(20, int((g >= 0.5).sum()))
    worst = reward_quality(-g, g)
    assert worst["spearman"] == pytest.approx(-1.0) and worst["auc"] == 0.0 and worst["top20_relevant"] == 0
    assert perfect["reward_range"] == pytest.approx(2 * np.ptp(g))
    with pytest.raises(ValueError, match="shape"):
        reward_quality(g[:3], g)


def test_probe_on_pixels_scores_the_panel_under_both_fidelities():
    env = InternetExplorerEnv(pixel_config())
    env.reset(seed=4)
    probe = RewardQualityProbe(env, sample=15)
    probe.start(4)
    assert np.array_equal(probe.twin.world.target_ids, env.world.target_ids)
    m = probe.measure()
    assert m["iteration"] == 0 and m["panel_size"] == m["panel_relevant"] + 15
    assert -1 <= m["spearman"] <= 1 and 0 <= m["auc"] <= 1 and np.isfinite(m["latent_pearson"])
    # The twin is stepped through the env's queries and closes its iterations with it.
    for _ in range(env.config.queries_per_iteration):
        c = int(np.argmax(env.world.relevance))
        _, _, _, _, info = env.step(c)
        probe.follow(info["action"])
    assert probe.twin.iteration == env.iteration == 1
    assert probe.measure()["iteration"] == 1


def test_probe_in_latent_has_no_twin():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    probe = RewardQualityProbe(env, sample=30)
    probe.start(0)
    m = probe.measure()
    assert probe.twin is None and "latent_pearson" not in m
    assert m["auc"] > 0.5  # the latent reward ranks relevant concepts above the rest


def test_one_command_logs_every_iteration(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"agent": "random", "env": pixel_config(), "log_images": False}))
    logdir = tmp_path / "run"
    assert rq_cli.main(["--config", str(cfg), "--panel", "10", "--logdir", str(logdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "spearman" in out and "latent_pearson" in out
    summary = json.loads((logdir / "summary.json").read_text())
    rows = summary["reward_quality_per_iteration"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["auc"] <= 1 and r["panel_size"] == r["panel_relevant"] + 10 for r in rows)
    assert summary["ssl_init"] == {"init": "scratch"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("reward_quality/auc")] == [0, 1, 2]
    assert "reward_quality/latent_pearson" in acc.Tags()["scalars"]
    assert rq_cli.main(["--config", str(cfg), "--panel", "zero", "--logdir", str(tmp_path / "x")]) == 2
    assert "--panel" in capsys.readouterr().err


def test_resumed_run_continues_the_figures(tmp_path):
    """Killed while writing iteration 2's checkpoint and resumed from iteration 1: the latent twin is
    replayed through the logged queries, and the figures equal an uninterrupted run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"agent": "random", "env": pixel_config(), "log_images": False,
                                   "reward_quality": 10}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1"}
    env.pop("IE_EXPLORE_KILL_AT", None)

    def run(logdir, *extra, **more):
        cmd = [sys.executable, "-m", "ie_experiments.run", "--config", str(cfg), "--logdir", str(tmp_path / logdir),
               "--no-progress", *extra]
        return subprocess.run(cmd, cwd=root, env={**env, **more}, capture_output=True, timeout=600, check=False)

    assert run("ref").returncode == 0
    killed = run("killed", IE_EXPLORE_KILL_AT="checkpoint_write:2")
    assert killed.returncode != 0 and not (tmp_path / "killed" / "summary.json").exists()
    resumed = run("killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())["reward_quality_per_iteration"]
    got = json.loads((tmp_path / "killed" / "summary.json").read_text())["reward_quality_per_iteration"]
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for a, b in zip(ref, got, strict=False):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k
