"""ie-compare's retrieval row: matched per seed to an exploring agent's image budget, collected with its
coverage figures, a baseline of the paired differences; refused before anything runs on a latent world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from threadpoolctl import threadpool_limits

from ie_experiments.compare import main
from ie_experiments.run import read_checkpoint
from tests.conftest import latent_config, pixel_config


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _cfg_file(tmp_path: Path, env: dict) -> Path:
    path = tmp_path / "cmp.yaml"
    section = {
        "agents": ["oracle"],
        "seeds": 1,
        "target_only": False,
        "retrieval": True,
        "retrieval_per_concept": 1,
        "agent_configs": {"oracle": {"top_k": 4}},
    }
    path.write_text(yaml.safe_dump({"compare": section, "threads": 1, "env": env}))
    return path


def test_retrieval_row_matches_the_agents_new_images_and_is_paired(tmp_path):
    out = tmp_path / "out"
    args = ["--config", str(_cfg_file(tmp_path, pixel_config())), "--out", str(out), "--workers", "0", "--quiet"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == [] and list(res["results"]) == ["oracle", "retrieval"]
    assert res["retrieval_matched_to"] == "oracle" and res["retrieval_per_concept"] == 1
    row = res["results"]["retrieval"]
    assert row["seeds_ok"] == [0]
    seed0 = row["per_seed"]["0"]
    # The image budget is the matched run's new images, as its own iteration records count them.
    state = read_checkpoint(sorted((out / "runs/oracle/seed0/checkpoints").glob("*.pt"))[-1])
    new = [s["new_images"] for s in state["history"]["iteration_stats"]]
    assert sum(new) > 0 and seed0["new_images_total"] == sum(new)
    summary = json.loads((out / "runs/retrieval/seed0/summary.json").read_text())
    assert summary["new_images_per_iteration"] == new and summary["matched_to"].endswith("oracle/seed0")
    assert summary["pool_images"] == 2518  # one image per vocabulary concept
    # k-NN, probe and coverage figures are those of the run folder.
    assert seed0["final_knn_accuracy"] == summary["knn_accuracy"][-1]
    assert seed0["linear_probe_accuracy"] == summary["linear_probe_accuracy"] is not None
    for key in ("new_relevant_images", "distinct_relevant_concepts", "target_classes_hit_share"):
        assert seed0[key] == summary[key] and row[key]["n"] == 1
    assert 0 <= seed0["new_relevant_images"] <= sum(new)
    assert seed0["relevant_share"] == pytest.approx(seed0["new_relevant_images"] / sum(new))
    assert len(row["retrieved_relevant_share_per_iteration"]["mean"]) == len(new)
    # Same seed, same start: the retrieval run begins from the agent's initial k-NN.
    assert summary["knn_accuracy"][0] == res["results"]["oracle"]["initial_knn_accuracy"]["mean"]
    # A baseline of the paired differences: agent minus retrieval, per seed.
    (pair,) = res["paired"]["comparisons"]
    assert (pair["agent"], pair["baseline"]) == ("oracle", "retrieval")
    diff = pair["final_knn_accuracy"]
    assert diff["n"] == 1
    assert diff["mean"] == pytest.approx(
        res["results"]["oracle"]["per_seed"]["0"]["final_knn_accuracy"] - seed0["final_knn_accuracy"]
    )
    table = (out / "results.md").read_text()
    assert "| retrieval | 1/1 |" in table and "| oracle − retrieval |" in table
    # --resume keeps the finished retrieval run and collects it again.
    before = (out / "runs/retrieval/seed0/summary.json").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert (out / "runs/retrieval/seed0/summary.json").stat().st_mtime_ns == before
    assert json.loads((out / "results.json").read_text())["results"]["retrieval"]["seeds_ok"] == [0]


def test_retrieval_row_refuses_a_latent_world_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _cfg_file(tmp_path, latent_config(iterations=2))
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert "pixels" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--set",
                "env.world.fidelity=pixels",
                "--retrieval-per-concept",
                "0",
            ]
        )
        == 2
    )
    assert "retrieval_per_concept" in capsys.readouterr().err and not out.exists()
