"""``ie-benchmark``: bad input refused before anything runs, crashes reported, scores and records right."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ie_env  # noqa: F401
from ie_agents.base import Agent
from ie_agents.registry import AGENTS
from ie_env import suite
from ie_experiments import benchmark

TASK = "IELatent-Hard-v1"


def test_unknown_suite_and_agent_are_refused_with_the_registered_ones(tmp_path, capsys):
    assert benchmark.main(["--suite", "nope", "--agents", "random", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'nope'" in err and "latent (3 tasks)" in err and "IEPixels-Standard-v1" in err
    assert benchmark.main(["--suite", "latent", "--agents", "random,nosuch", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'nosuch'" in err and "gp" in err and "oracle" in err and "sb3:..." in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _saved_policy(tmp_path, slate_size: int, embed_dim: int):
    from stable_baselines3 import PPO

    from ie_agents.sb3_agent import policy_for, save_model
    from ie_env.config import to_dict
    from ie_env.env import InternetExplorerEnv

    cfg = suite.task_config(TASK, {"actions": {"slate_size": slate_size, "embed_dim": embed_dim}})
    env = InternetExplorerEnv(cfg)
    model = PPO(policy_for("ppo", "slate"), env, n_steps=16, batch_size=16, device="cpu")
    meta = {"algo": "ppo", "action_mode": "slate", "policy": "SlatePolicy", "env": json.loads(json.dumps(to_dict(cfg)))}
    return save_model(model, tmp_path / f"k{slate_size}.zip", meta)


def test_policy_with_other_spaces_is_refused_naming_both(tmp_path, capsys):
    path = _saved_policy(tmp_path, slate_size=6, embed_dim=16)
    out = tmp_path / "bench"
    code = benchmark.main(["--suite", TASK, "--agents", f"random,small=sb3:{path}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "observation space" in err and "action space Discrete(6)" in err and "action space Discrete(16)" in err
    assert f"task {TASK}" in err
    assert not (out / "runs").exists()  # refused before any episode ran
    same = _saved_policy(tmp_path, slate_size=16, embed_dim=32)
    assert benchmark.policy_space_problem(str(same), TASK) is None


class CrashAgent(Agent):
    name = "crash"

    def setup(self, ctx):
        pass

    def act(self, obs, info):
        raise RuntimeError("planted crash")


def test_benchmark_scores_records_and_reports_a_crashing_agent(tmp_path, monkeypatch):
    monkeypatch.setitem(AGENTS, "crash", CrashAgent)
    out = tmp_path / "bench"
    code = benchmark.main(["--suite", TASK, "--agents", "random,oracle,crash", "--seeds", "2", "--out", str(out),
                           "--workers", "0", "--bootstrap-reps", "200", "--quiet"])
    assert code == 1  # a failed agent makes the command fail, after writing everything
    res = json.loads((out / "results.json").read_text())
    board = (out / "leaderboard.md").read_text()
    assert (out / "benchmark.png").stat().st_size > 1000
    crash = res["per_task"][TASK]["crash"]
    assert crash["seeds_failed"] == [0, 1] and "planted crash" in crash["errors"][0]
    assert sorted(res["failed_runs"]) == [f"{TASK}/crash/seed0", f"{TASK}/crash/seed1"]
    assert "crash" in board and "FAILED" in board and "planted crash" in board
    oracle = res["suite"]["oracle"]["gap_closed"]["iqm"]
    assert oracle["point"] == pytest.approx(1.0)  # the target concepts
    # two episodes: no interval, and the table and a warning say why and how many a stable one needs
    assert oracle["low"] is None and oracle["high"] is None and "no interval" in oracle["omitted"]
    assert "1.000 [no CI]" in board and "at least 10 episodes per task" in board
    rnd = res["per_task"][TASK]["random"]
    assert abs(rnd["gap_closed"]["mean"]["point"]) < 0.05
    # The expected gap (p . g of what each query was drawn from): exactly 0 for random on every
    # held-out target (up to the float32 mean the summary holds), exactly 1 for the oracle.
    for s in ("0", "1"):
        assert rnd["episodes"][s]["expected_gap_closed"] == pytest.approx(0.0, abs=1e-6)
        assert res["per_task"][TASK]["oracle"]["episodes"][s]["expected_gap_closed_second_half"] == pytest.approx(1.0)
    # the same held-out targets for every agent, fixed by the seed
    targets = {a: [res["per_task"][TASK][a]["episodes"][s]["target"] for s in ("0", "1")] for a in ("random", "oracle")}
    assert targets["random"] == targets["oracle"] and targets["random"][0] != targets["random"][1]
    assert set(targets["random"][0]) <= {c.lemma for c in _heldout_concepts()}
    pairs = [(r["agent"], r["baseline"]) for r in res["paired"][TASK]["comparisons"]]
    assert pairs == [("oracle", "random"), ("crash", "random")]  # every agent minus the baseline
    summary = json.loads((out / "runs" / TASK / "random" / "seed1" / "summary.json").read_text())
    assert summary["task"] == TASK and summary["task_version"] == 1
    assert summary["task_world_hash"] == suite.world_hash(TASK) == res["task_info"][TASK]["world_hash"]
    assert summary["seed"] == suite.get_task(TASK).eval_seed0 + 1
    events = b"".join(p.read_bytes() for p in (out / "runs" / TASK / "random" / "seed1" / "tb").rglob("events.*"))
    assert TASK.encode() in events and suite.world_hash(TASK).encode() in events  # TensorBoard hparams

    # Transfer wiring: with the task's own runs standing in as the "twin", replaying every run's
    # queries through the latent fidelity reproduces its rewards (correlation 1) and ranking (tau 1).
    from ie_experiments.transfer import transfer_report

    res["per_task"][TASK + benchmark.TWIN] = res["per_task"][TASK]
    tr = transfer_report(out, res)[TASK]
    assert tr["agents"] == ["random", "oracle"] and tr["kendall_tau"] == 1.0
    assert tr["queries"] == 4 * 128 and tr["reward_pearson"] == pytest.approx(1.0) and tr["ground_truth_identical"]


def _heldout_concepts():
    from ie_env.target_sampling import TargetSampler
    from ie_env.worlds.embedded import load_vocabulary

    cfg = suite.task_config(TASK)
    vocab = load_vocabulary("embedded")
    ids = TargetSampler(vocab, cfg.world.num_targets, cfg.targets).split_concepts("heldout")
    return [vocab[int(i)] for i in ids]


def test_replay_through_the_same_fidelity_reproduces_the_rewards():
    from ie_env.env import InternetExplorerEnv
    from ie_experiments.transfer import replay_rewards

    seed = suite.get_task(TASK).eval_seed0
    env = InternetExplorerEnv(suite.eval_config(TASK))
    env.reset(seed=seed)
    actions = np.random.default_rng(0).integers(len(env.vocabulary), size=40)
    direct = [env.step(int(a))[4] for a in actions]
    rewards, g = replay_rewards(TASK, seed, list(actions), fidelity="latent")
    assert rewards == [d["query_reward"] for d in direct] and g == [d["true_relevance"] for d in direct]


def test_train_and_explore_take_a_task_id():
    from ie_experiments import run, train

    cfg = train.build_config(train.parse_args(["--task", TASK, "--logdir", "unused", "--algo", "ppo"]))
    assert cfg.env == suite.task_config(TASK) and cfg.env.targets.mode == "train"
    assert cfg.algo == "ppo" and cfg.algo_kwargs["n_steps"] == 256  # the rest from rl_slate.yaml
    rcfg = run.build_config(run.parse_args(["--task", TASK, "--agent", "gp", "--set", "env.iterations=2"]))
    assert rcfg.task == TASK and rcfg.seed == suite.get_task(TASK).eval_seed0  # benchmark seed 0
    assert rcfg.env.targets.mode == "heldout" and rcfg.env.iterations == 2 and rcfg.agent == "gp"
