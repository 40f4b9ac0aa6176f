"""ie-compare: the metrics' math, bad input, crashing seeds, resume/overwrite, and the compute-matched
target-only baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

from ie_agents.baselines import RandomAgent
from ie_agents.registry import AGENTS
from ie_env.config import from_dict
from ie_experiments.compare import aggregate, gap_closed, main, mean_std, results_table, run_metrics
from ie_experiments.run import RunConfig, Runner, read_checkpoint
from ie_experiments.target_only import _tiled_indices, target_only_from_run, trained_images_per_iteration
from tests.conftest import latent_config, pixel_config

TINY = latent_config(queries_per_iteration=3, iterations=2, images_per_query=12)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):  # world building's SVD: extra BLAS threads only add contention
        yield


def _cfg_file(tmp_path: Path, env: dict = TINY, **compare_section) -> Path:
    path = tmp_path / "cmp.yaml"
    section = {"agent_configs": {"oracle": {"top_k": 10}}, **compare_section}
    path.write_text(yaml.safe_dump({"compare": section, "threads": 1, "env": env}))
    return path


# --------------------------------------------------------------------------------------------
# The metrics, on synthetic inputs
# --------------------------------------------------------------------------------------------
def test_gap_closed_is_zero_for_the_random_expectation_and_one_for_the_best():
    g_vocab = np.array([0.0, 0.1, 0.2, 0.05, 1.0, 0.4, 0.0, 0.25])
    r, o = g_vocab.mean(), g_vocab.max()
    # Every concept once, in any order: the mean of g is exactly the random policy's expectation.
    every_once = np.random.default_rng(0).permutation(g_vocab)
    m = run_metrics({"knn_accuracy": [0.5, 0.6]}, every_once, np.zeros(8), 4, r, o)
    assert m["gap_closed"] == pytest.approx(0.0, abs=1e-12)
    assert m["gap_closed_cumulative"][-1] == pytest.approx(0.0, abs=1e-12)
    best = run_metrics({}, np.full(8, o), np.ones(8), 4, r, o)
    assert best["gap_closed"] == 1.0 and best["gap_closed_per_iteration"] == [1.0, 1.0]
    assert best["regret"] == [0.0] * 8 and best["final_regret"] == 0.0
    # Uniform draws with replacement: gap closed averages to 0 over many seeds.
    draws = [run_metrics({}, np.random.default_rng(s).choice(g_vocab, 64), np.zeros(64), 4, r, o)["gap_closed"] for s in range(400)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))
    with pytest.raises(ValueError, match="oracle value"):
        gap_closed(0.5, 0.3, 0.3)


def test_run_metrics_curves_by_hand():
    g = [0.1, 0.3, 0.5, 0.7, 1.0, 1.0]
    rewards = [0.2, 0.4, 0.0, 0.6, 0.1, 0.1]
    m = run_metrics({"knn_accuracy": [0.40, 0.45, 0.50], "distinct_relevant_concepts": 2}, g, rewards, 2, 0.1, 1.0)
    gc = lambda x: (x - 0.1) / 0.9  # noqa: E731
    assert m["mean_relevance_per_iteration"] == pytest.approx([0.2, 0.6, 1.0])
    assert m["gap_closed_per_iteration"] == pytest.approx([gc(0.2), gc(0.6), gc(1.0)])
    assert m["gap_closed_cumulative"] == pytest.approx([gc(0.2), gc(0.4), gc(3.6 / 6)])
    assert m["gap_closed_second_half"] == pytest.approx(gc((0.7 + 1.0 + 1.0) / 3))
    assert m["cumulative_relevance"] == pytest.approx([0.1, 0.4, 0.9, 1.6, 2.6, 3.6])
    assert m["cumulative_reward"] == pytest.approx([0.2, 0.6, 0.6, 1.2, 1.3, 1.4])
    assert m["mean_reward_per_iteration"] == pytest.approx([0.3, 0.3, 0.1])
    assert m["regret"] == pytest.approx([0.9, 1.6, 2.1, 2.4, 2.4, 2.4])
    assert m["final_knn_accuracy"] == 0.50 and m["delta_knn_accuracy"] == pytest.approx(0.10)
    assert m["distinct_relevant_concepts"] == 2


def test_mean_std_over_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}  # sample std
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    assert mean_std([None, None]) is None
    curve = mean_std([[1.0, 2.0, 9.0], [3.0, 4.0]])  # cut to the shortest
    assert curve["mean"] == [2.0, 3.0] and curve["std"] == pytest.approx([np.sqrt(2), np.sqrt(2)])
    agg = aggregate({0: {"a": 1.0, "b": [0.0, 1.0]}, 1: {"a": 3.0, "b": [2.0, 3.0]}})
    assert agg["a"]["mean"] == 2.0 and agg["b"]["mean"] == [1.0, 2.0]


def test_results_table_has_one_row_per_agent():
    stat = {"mean": 0.5, "std": 0.1, "n": 2}
    res = {
        "reference": {"random_expected_relevance": 0.05, "oracle_value": 1.0, "world_hash": "abc"},
        "query_budget": 8, "iterations": 2, "queries_per_iteration": 4, "seeds": [0, 1],
        "target_only_matched_to": "gp", "failed_runs": ["gp/seed1"], "runs": {"gp/seed1": {"error": "RuntimeError: boom"}},
        "results": {
            "gp": {"seeds_ok": [0], "seeds_failed": [1], "gap_closed_second_half": stat, "final_knn_accuracy": stat},
            "target_only": {"seeds_ok": [0, 1], "seeds_failed": [], "final_knn_accuracy": stat, "delta_knn_accuracy": stat},
        },
    }
    md = results_table(res)
    rows = [l for l in md.splitlines() if l.startswith("| gp") or l.startswith("| target_only")]
    assert rows[0].startswith("| gp | 1/2 | 0.500 ± 0.100 |")
    assert rows[1].startswith("| target_only | 2/2 | — |") and "+0.500 ± 0.100" in rows[1]
    assert "gp/seed1: RuntimeError: boom" in md


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_unknown_agent_lists_the_registered_ones(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(_cfg_file(tmp_path)), "--agents", "random,nope", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and all(n in err for n in ("gp", "random", "uniform", "oracle"))
    assert not out.exists()  # nothing ran, nothing written
    assert main(["--config", str(_cfg_file(tmp_path)), "--agents", "random,random", "--out", str(out), "--quiet"]) == 2
    assert "twice" in capsys.readouterr().err
    assert main(["--config", str(_cfg_file(tmp_path)), "--agents", "target_only=random", "--out", str(out), "--quiet"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert main(["--config", str(_cfg_file(tmp_path)), "--agents", "random", "--match", "gp", "--out", str(out), "--quiet"]) == 2
    assert "--match" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A crashing seed, then refuse / resume / overwrite (in-process workers, so the test can register
# an agent that crashes on demand)
# --------------------------------------------------------------------------------------------
CRASH_SEEDS: set[int] = set()


class CrashyAgent(RandomAgent):
    name = "crashy"

    def setup(self, ctx):
        if ctx.seed in CRASH_SEEDS:
            raise RuntimeError(f"boom on seed {ctx.seed}")
        super().setup(ctx)


def test_crashing_seed_is_reported_then_resume_and_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(AGENTS, "crashy", CrashyAgent)
    CRASH_SEEDS.clear()
    CRASH_SEEDS.add(1)
    cfg, out = _cfg_file(tmp_path), tmp_path / "out"
    args = ["--config", str(cfg), "--agents", "crashy,random", "--seeds", "2", "--match", "crashy", "--out", str(out), "--workers", "0", "--quiet"]
    assert main(args) == 1  # some runs failed; the others are all there
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == ["crashy/seed1", "target_only/seed1"]
    assert "boom on seed 1" in res["runs"]["crashy/seed1"]["error"]
    assert "crashy/seed1 failed" in res["runs"]["target_only/seed1"]["error"]
    assert "boom on seed 1" in (out / "runs/crashy/seed1/error.txt").read_text()
    assert res["results"]["crashy"]["seeds_ok"] == [0] and res["results"]["crashy"]["seeds_failed"] == [1]
    assert res["results"]["random"]["seeds_ok"] == [0, 1]
    assert res["results"]["target_only"]["seeds_ok"] == [0]
    assert "crashy/seed1" in (out / "results.md").read_text()
    for name in ("reward.png", "knn.png", "regret.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # results.json's figures are those of the run folders.
    q = [json.loads(l) for l in (out / "runs/random/seed0/queries.jsonl").read_text().splitlines()]
    ref = res["reference"]
    g = np.array([r["true_relevance"] for r in q])
    assert ref["oracle_value"] == 1.0 and 0 < ref["random_expected_relevance"] < 0.2
    expect = (g.mean() - ref["random_expected_relevance"]) / (ref["oracle_value"] - ref["random_expected_relevance"])
    assert res["results"]["random"]["per_seed"]["0"]["gap_closed"] == pytest.approx(expect)
    # The random policy's expected gap (from the distribution it drew from) is 0 on every seed.
    assert res["results"]["random"]["expected_gap_closed_second_half"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert "| random | 2/2 | " in (out / "results.md").read_text() and "0.000 ± 0.000" in (out / "results.md").read_text()
    summ = json.loads((out / "runs/random/seed1/summary.json").read_text())
    assert res["results"]["random"]["per_seed"]["1"]["final_knn_accuracy"] == summ["knn_accuracy"][-1]
    assert len(res["results"]["random"]["regret"]["mean"]) == 6
    assert list((out / "runs/random/seed0/tb").rglob("events.out.tfevents*"))
    assert list((out / "runs/target_only/seed0/tb").rglob("events.out.tfevents*"))

    # An output folder with earlier results is refused...
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # ... a resume against another config too ...
    assert main(args + ["--resume", "--set", "env.k=3"]) == 2
    assert "env.k" in capsys.readouterr().err
    # ... and --resume runs only the missing runs.
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/summary.json")}
    assert len(finished) == 4
    CRASH_SEEDS.clear()
    assert main(args + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # untouched
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == [] and res["results"]["crashy"]["seeds_ok"] == [0, 1]
    assert res["results"]["target_only"]["seeds_ok"] == [0, 1]
    assert not (out / "runs/crashy/seed1/error.txt").exists()

    # --overwrite deletes the earlier comparison first.
    (out / "runs/stale").mkdir()
    assert main(["--config", str(cfg), "--agents", "random", "--seeds", "1", "--no-target-only", "--out", str(out),
                 "--workers", "0", "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["random"]
    assert list(json.loads((out / "results.json").read_text())["results"]) == ["random"]


def test_worker_processes_run_the_comparison(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(_cfg_file(tmp_path)), "--agents", "oracle,random", "--seeds", "1",
                 "--out", str(out), "--workers", "2", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == [] and list(res["results"]) == ["oracle", "random", "target_only"]
    assert res["results"]["oracle"]["gap_closed"]["mean"] == 1.0  # top_k = the 10 targets, g = 1 each
    assert res["results"]["oracle"]["regret"]["mean"][-1] == 0.0
    assert res["target_only_matched_to"] == "oracle"
    saved = yaml.safe_load((out / "runs/random/seed0/config.yaml").read_text())
    assert saved["agent"] == "random" and saved["env"]["queries_per_iteration"] == 3


# --------------------------------------------------------------------------------------------
# Target-only: compute-matched to the exploring run
# --------------------------------------------------------------------------------------------
def _explore(run_dir: Path, env: dict, agent: str, agent_config: dict | None = None) -> Path:
    cfg = from_dict(RunConfig, {"env": env, "agent": agent, "agent_config": agent_config or {}, "seed": 3})
    Runner(cfg, run_dir, progress=False).run()
    return run_dir


def _history(run_dir: Path) -> tuple[list[dict], dict]:
    state = read_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[-1])
    return state["history"]["iteration_stats"], state["env"]["learner"]


def test_target_only_trains_on_as_many_target_images_as_the_exploring_run(tmp_path, monkeypatch):
    env = latent_config(queries_per_iteration=4, iterations=3, images_per_query=20)
    # One concept again and again: its repeats are cached and bring no new image after the first.
    run = _explore(tmp_path / "explore", env, "oracle", {"top_k": 1})
    stats, learner = _history(run)
    assert [s["new_images"] for s in stats] == [20, 0, 0]
    images = trained_images_per_iteration(run)
    assert images == [60, 0, 0]  # new + pcr x new
    assert learner["count"] == 64 + 100 + sum(images)  # prior + warm-up + what it trained on

    from ie_env.learner.surrogate import WhiteningSurrogate

    seen: list[np.ndarray] = []
    orig = WhiteningSurrogate.update
    monkeypatch.setattr(WhiteningSurrogate, "update", lambda self, x: (seen.append(np.array(x)), orig(self, x))[1])
    summary = target_only_from_run(run, tmp_path / "to")
    assert [len(x) for x in seen] == [100, 60]  # the same warm-up, then the exploring run's images
    from ie_env.env import InternetExplorerEnv

    ref_env = InternetExplorerEnv(env)
    ref_env.reset(seed=3)
    train = {row.tobytes() for row in ref_env.train_images}
    assert all(row.tobytes() in train for row in seen[1])  # target train images only
    assert summary["ssl_images_per_iteration"] == [60, 0, 0] and summary["queries"] == 0
    assert len(summary["knn_accuracy"]) == 4 and summary["matched_to"].endswith("explore")
    assert json.loads((tmp_path / "to/summary.json").read_text())["knn_accuracy"] == summary["knn_accuracy"]


def test_target_only_matches_the_ssl_steps_of_a_pixel_run(tmp_path):
    env = pixel_config(ssl={"max_steps": None, "min_steps": 1}, iterations=2, queries_per_iteration=2)
    run = _explore(tmp_path / "explore", env, "random")
    stats, _ = _history(run)
    summary = target_only_from_run(run, None)
    assert summary["ssl_steps_per_iteration"] == [s["ssl_steps"] for s in stats]
    assert summary["ssl_steps_per_iteration"][0] > 2  # more than one batch: the count is really matched


def test_tiled_indices_cover_the_target_set_evenly():
    idx = _tiled_indices(25, 10, np.random.default_rng(0))
    counts = np.bincount(idx, minlength=10)
    assert len(idx) == 25 and counts.min() == 2 and counts.max() == 3 and sorted(idx[:10]) == list(range(10))


def test_shipped_compare_configs_extend_the_demo_config():
    from ie_experiments.compare import load_compare_config
    from ie_experiments.run import DEFAULT_CONFIG

    root = DEFAULT_CONFIG.parent
    demo, _ = load_compare_config(DEFAULT_CONFIG)
    latent, s = load_compare_config(root / "compare_latent.yaml", ["env.iterations=2"])
    assert latent.env.world.fidelity == "latent" and latent.env.iterations == 2
    assert latent.env.world == from_dict(type(demo.env.world), {**vars(demo.env.world), "fidelity": "latent"})
    assert s.agents == ["gp", "random", "uniform", "oracle"]
    assert s.agent_configs["oracle"] == {"top_k": latent.env.world.num_targets}  # the oracle queries the targets
    knn, s = load_compare_config(root / "knn_ordering.yaml")
    assert knn.env.world == demo.env.world and knn.env.query_budget == demo.env.query_budget
    per_iteration = knn.env.images_per_query * knn.env.queries_per_iteration * (1 + knn.env.pcr)
    steps = knn.env.iterations * knn.env.ssl.planned_steps(int(per_iteration)) + knn.env.ssl.planned_steps(knn.env.warmup_images)
    assert knn.env.ssl.batch_size == 256 and 900 <= steps <= 1100  # DESIGN §3a's ~1000 steps x 256
    assert s.match == "gp" and s.seeds >= 3


def test_agent_defaults_reach_their_agent_only():
    """``agent_defaults`` (the embedded world's GP tiers) go to that agent in ie-explore and
    ie-compare; ``agent_config`` and ``compare.agent_configs`` refine them; other agents get none."""
    from ie_agents.registry import make_agent
    from ie_env.config import ConfigError, resolve
    from ie_experiments.compare import AgentSpec, CompareSettings, agent_config_for
    from ie_experiments.run import DEFAULT_CONFIG, agent_kwargs

    cfg = resolve(RunConfig, DEFAULT_CONFIG, [])
    assert agent_kwargs(cfg, "gp") == {"tier_sizes": [50, 150]}
    assert make_agent("gp", **agent_kwargs(cfg, "gp")).config.tier_sizes == (50, 150)
    assert make_agent("gp").config.tier_sizes == (250, 750)  # the paper's, without a config
    assert agent_kwargs(cfg, "random") == {}
    as_random = resolve(RunConfig, DEFAULT_CONFIG, ["agent=random"])
    assert agent_kwargs(as_random, "random") == {} and agent_kwargs(as_random, "gp") == {"tier_sizes": [50, 150]}
    tuned = resolve(RunConfig, DEFAULT_CONFIG, ["agent_config.smr=2.0"])
    assert agent_kwargs(tuned, "gp") == {"tier_sizes": [50, 150], "smr": 2.0}
    settings = CompareSettings(agent_configs={"gp": {"tier_sizes": [25, 75]}})
    assert agent_config_for(AgentSpec("gp", "gp"), cfg, settings) == {"tier_sizes": [25, 75]}
    assert agent_config_for(AgentSpec("rnd", "random"), cfg, settings) == {}
    bad = resolve(RunConfig, DEFAULT_CONFIG, [])
    bad.agent_defaults = {"gp": 3}
    with pytest.raises(ConfigError, match="agent_defaults.gp"):
        agent_kwargs(bad, "gp")
