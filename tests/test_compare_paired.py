"""ie-compare end to end with paired differences: the embedded world (latent, tiny) and a real-photo
``local_corpus`` built by scripts/make_photo_corpus.py (pixels, tiny), target-only included."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from threadpoolctl import threadpool_limits

from ie_experiments.compare import main
from tests.conftest import latent_config, pixel_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_photo_corpus import make_corpus  # noqa: E402 - after the sys.path entry


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_paired(res: dict, pairs: list[tuple[str, str]], seeds: int) -> None:
    rows = {(r["agent"], r["baseline"]): r for r in res["paired"]["comparisons"]}
    assert list(rows) == pairs
    for (a, b), row in rows.items():
        for metric in ("final_knn_accuracy", "linear_probe_accuracy"):
            d = row[metric]
            assert d["n"] == seeds and d["seeds"] == list(range(seeds))
            want = [res["results"][a]["per_seed"][str(s)][metric] - res["results"][b]["per_seed"][str(s)][metric]
                    for s in range(seeds)]
            assert d["differences"] == pytest.approx(want)
            assert d["low"] <= d["mean"] <= d["high"]


def test_compare_reports_paired_differences_on_the_embedded_world(tmp_path):
    env = latent_config(queries_per_iteration=3, iterations=2, images_per_query=12)
    cfg = _write(tmp_path / "cmp.yaml", {"threads": 1, "env": env, "compare": {"agents": ["gp", "random"], "seeds": 3}})
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet", "--bootstrap-reps", "2000"]) == 0
    res = json.loads((out / "results.json").read_text())
    _check_paired(res, [("gp", "random"), ("gp", "target_only"), ("random", "target_only")], 3)
    for s in range(3):  # same seed, same start: the target and the initial weights, so the same k-NN at reset
        starts = {lab: res["results"][lab]["per_seed"][str(s)]["initial_knn_accuracy"] for lab in res["results"]}
        assert len(set(starts.values())) == 1, starts
        targets = {json.dumps(json.loads((out / f"runs/{lab}/seed{s}/summary.json").read_text()).get("target_concepts"))
                   for lab in ("gp", "random")}
        assert len(targets) == 1
    table = (out / "results.md").read_text()
    assert "| gp − target_only |" in table and "linear probe" in table


def test_fewer_than_three_seeds_leave_the_interval_out_with_the_reason(tmp_path):
    env = latent_config(queries_per_iteration=3, iterations=2, images_per_query=12)
    cfg = _write(tmp_path / "cmp.yaml", {"threads": 1, "env": env,
                                         "compare": {"agents": ["gp", "random"], "seeds": 2, "target_only": False}})
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["paired"]["comparisons"]
    assert row["final_knn_accuracy"]["low"] is None and row["final_knn_accuracy"]["n"] == 2
    assert row["final_knn_accuracy"]["interval_omitted"] == "2 paired seeds; a bootstrap interval needs at least 3"
    assert "Intervals omitted: 2 paired seeds" in (out / "results.md").read_text()


def test_compare_on_a_local_photo_corpus_completes_with_paired_knn_and_probe(tmp_path, monkeypatch):
    data = make_corpus(tmp_path / "photos", per_concept=3, target_per_class=8, size=48, seed=0)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # any temp folder a run leaves shows up here
    env = pixel_config(
        engine={"name": "local_corpus", "options": {"source": str(data["corpus"]), "index_type": "flat"}},
        target={"kind": "imagefolder", "root": str(data["target"]), "test_fraction": 0.5},
        min_images=4, images_per_query=8, queries_per_iteration=2, iterations=2,
    )
    cfg = _write(tmp_path / "cmp.yaml", {"threads": 1, "env": env, "agent_defaults": {"gp": {"tier_sizes": [50, 150]}},
                                         "compare": {"agents": ["gp", "random"], "seeds": 3}})
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet", "--bootstrap-reps", "2000"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["reference"]["ground_truth"] is False and res["reference"]["engine"] == "local_corpus"
    _check_paired(res, [("gp", "random"), ("gp", "target_only"), ("random", "target_only")], 3)
    gp = res["results"]["gp"]
    assert gp["gap_closed"] is None and gp["total_relevance"] is None and gp["regret"] is None  # unknown, not 0
    assert gp["mean_reward_per_iteration"]["n"] == 3 and gp["final_knn_accuracy"]["n"] == 3
    assert res["results"]["target_only"]["linear_probe_accuracy"]["n"] == 3
    assert (out / "results.md").is_file() and (out / "reward.png").is_file() and (out / "knn.png").is_file()
    assert "g is unknown (a search engine" in (out / "results.md").read_text()
    summary = json.loads((out / "runs/gp/seed0/summary.json").read_text())
    for key in ("random_policy_expected_relevance", "distinct_relevant_concepts", "new_relevant_images",
                "target_classes_hit_share", "world_hash"):
        assert summary[key] is None, key
    assert all(v is None for v in summary["mean_true_relevance_per_iteration"])
    assert summary["ground_truth"] is False and summary["target_concepts"] == ["flower", "temple"]
    assert "bird" not in json.dumps(summary)  # nothing of the embedded world's default target
    assert not math.isnan(summary["linear_probe_accuracy"])
    assert not list(scratch.glob("ie-env-web-*"))
    assert (data["corpus"].parent / "corpus.ie-index" / "meta.json").is_file()  # built once, beside the source


def test_a_missing_corpus_fails_before_any_run(tmp_path, capsys):
    env = pixel_config(engine={"name": "local_corpus", "options": {"source": str(tmp_path / "nowhere")}},
                       target={"kind": "imagefolder", "root": str(tmp_path), "test_fraction": 0.5})
    cfg = _write(tmp_path / "cmp.yaml", {"env": env, "compare": {"agents": ["random"], "seeds": 1}})
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "local_corpus: source" in err and "does not exist" in err
    assert not (out / "runs").exists()


def test_cpu_configs_size_the_gp_tiers_to_the_embedded_vocabulary():
    from ie_env.config import resolve
    from ie_experiments.run import RunConfig, agent_kwargs

    paths = sorted((ROOT / "experiments" / "configs").glob("cpu_*.yaml"))
    assert any(p.name == "cpu_imagefolder.yaml" for p in paths)
    for path in paths:
        cfg = resolve(RunConfig, path, [])
        assert cfg.env.world.vocabulary == "embedded", path.name  # 2,518 concepts, not WordNet's ~146k
        assert list(agent_kwargs(cfg, "gp")["tier_sizes"]) == [50, 150], path.name


def test_ground_truth_is_known_only_in_the_embedded_world_searched_for_its_own_targets():
    from ie_env.env import make_config
    from ie_experiments.run import has_ground_truth

    folder = {"kind": "imagefolder", "root": "photos", "test_fraction": 0.5}
    corpus = {"name": "local_corpus", "options": {"source": "corpus"}}
    assert has_ground_truth(make_config(latent_config())) and has_ground_truth(make_config(pixel_config()))
    assert not has_ground_truth(make_config(pixel_config(target=folder)))  # g would measure the world's own targets
    assert not has_ground_truth(make_config(pixel_config(target=folder, engine=corpus)))
