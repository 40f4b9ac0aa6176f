"""One evaluation truth (DESIGN §8): ``ie-benchmark``'s per-episode gap closed is, to the last bit, what
the documented plain loop reads from ``info["ie_episode"]`` (docs/evaluation.md), for an ``ie-train``
model, a model saved by plain SB3 and an agent that picks concepts; and any policy gets a row: a
plain SB3 zip, ``module.path:Class`` and an ``ie_env.agents`` entry point from a package outside the
repository. Bad input is refused before any episode, naming what is wrong."""

from __future__ import annotations

import json
import textwrap

import gymnasium as gym
import pytest

import ie_env  # noqa: F401  (registers the ids)
from ie_agents.base import AgentContext
from ie_agents.registry import make_agent
from ie_experiments import benchmark

TASK = "IELatent-Standard-v1"
SEEDS = 2


def plain_policy_loop(model, s: int) -> float:
    """The documented loop for an SB3 model: the task's env with held-out targets, stepped to the end."""
    env = gym.make(TASK, config={"targets": {"mode": "heldout"}})
    obs, info = env.reset(seed=10_000 + s)
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return info["ie_episode"]["gap_closed"]


def plain_agent_loop(name: str, s: int) -> float:
    """The documented loop for an agent that picks concepts: the same env in ``vocab`` mode."""
    env = gym.make(TASK, config={"targets": {"mode": "heldout"}, "action_mode": "vocab"})
    agent = make_agent(name)
    agent.setup(AgentContext.from_env(env, seed=10_000 + s))
    obs, info = env.reset(seed=10_000 + s)
    done = False
    while not done:
        action = agent.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(action, reward, obs, info)
        done = terminated or truncated
    return info["ie_episode"]["gap_closed"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An ``ie-train`` PPO model (slate policy, a few hundred steps) and a plain ``PPO("MultiInputPolicy")``
    saved with ``model.save`` (no ie-train settings inside)."""
    from stable_baselines3 import PPO

    from ie_env.suite import task_config
    from ie_experiments.train import TrainConfig, train

    root = tmp_path_factory.mktemp("models")
    cfg = TrainConfig(
        env=task_config(TASK),
        algo="ppo",
        total_timesteps=256,
        n_envs=2,
        seed=0,
        eval_freq=0,
        checkpoint_freq=0,
        heldout_episodes=0,
        algo_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 2},
    )
    trained = train(cfg, root / "ie_train", progress=False)["model"]
    plain = PPO("MultiInputPolicy", gym.make(TASK), n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    plain.learn(128)
    plain.save(root / "plain")
    return {"itrain": trained, "plain": str(root / "plain.zip")}


def test_benchmark_equals_the_plain_loop_bit_for_bit(models, tmp_path):
    from ie_agents.sb3_agent import load_model

    out = tmp_path / "bench"
    agents = f"itrain=sb3:{models['itrain']},plain=sb3:{models['plain']},random"
    code = benchmark.main(
        [
            "--suite",
            TASK,
            "--agents",
            agents,
            "--seeds",
            str(SEEDS),
            "--out",
            str(out),
            "--workers",
            "0",
            "--bootstrap-reps",
            "50",
            "--quiet",
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())["per_task"][TASK]
    for label in ("itrain", "plain"):
        model, _ = load_model(models[label])
        loop = [plain_policy_loop(model, s) for s in range(SEEDS)]
        bench = [res[label]["episodes"][str(s)]["gap_closed"] for s in range(SEEDS)]
        assert bench == loop, label  # exactly: the same env, slates and random streams
    loop = [plain_agent_loop("random", s) for s in range(SEEDS)]
    assert [res["random"]["episodes"][str(s)]["gap_closed"] for s in range(SEEDS)] == loop
    # the policies' figures differ from the random agent's: the check above compares real episodes
    assert res["itrain"]["episodes"]["0"]["gap_closed"] != res["random"]["episodes"]["0"]["gap_closed"]


def test_a_plain_sb3_model_whose_spaces_differ_is_refused_naming_both(tmp_path, capsys):
    from stable_baselines3 import PPO

    other = PPO(
        "MultiInputPolicy",
        gym.make(TASK, config={"actions": {"slate_size": 6}}),
        n_steps=16,
        batch_size=16,
        device="cpu",
    )
    other.save(tmp_path / "other")
    code = benchmark.main(
        ["--suite", TASK, "--agents", f"other=sb3:{tmp_path / 'other.zip'}", "--out", str(tmp_path / "b")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Discrete(6)" in err and "Discrete(16)" in err and f"task {TASK}" in err
    assert not (tmp_path / "b" / "runs").exists()


PLUGIN = '''
import numpy as np
from ie_agents.base import Agent


class FirstUnqueried(Agent):
    """Queries concepts in index order, skipping none: deterministic and easy to check."""

    name = "first_unqueried"

    def __init__(self, start: int = 0):
        self.start = int(start)

    def setup(self, ctx):
        self.t = self.start

    def act(self, obs, info):
        self.t += 1
        return self.t - 1


def make(start: int = 5):
    return FirstUnqueried(start=start)
'''


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package outside the repository, importable and declaring two entry points (one broken)."""
    site = tmp_path / "site"
    pkg = site / "my_ie_agents"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "broken.py").write_text("import no_such_module_for_ie_env_tests\n")
    dist = site / "my_ie_agents-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ie-agents\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[ie_env.agents]\nfirst = my_ie_agents:FirstUnqueried\nbroken = my_ie_agents.broken:Thing\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_an_agent_from_the_users_own_package_gets_a_row(plugin_package, tmp_path):
    out = tmp_path / "bench"
    code = benchmark.main(
        [
            "--suite",
            TASK,
            "--agents",
            "first,factory=my_ie_agents:make",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--workers",
            "0",
            "--bootstrap-reps",
            "20",
            "--quiet",
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    board = (out / "leaderboard.md").read_text()
    assert "| first |" in board and "| factory |" in board
    for label, start in (("first", 0), ("factory", 5)):
        ep = res["per_task"][TASK][label]["episodes"]["0"]
        records = [
            json.loads(x) for x in (out / "runs" / TASK / label / "seed0" / "queries.jsonl").read_text().splitlines()
        ]
        assert [r["action"] for r in records] == list(range(start, start + 128))
        assert ep["gap_closed"] == plain_agent_loop(f"my_ie_agents:{'FirstUnqueried' if start == 0 else 'make'}", 0)
        events = b"".join(p.read_bytes() for p in (out / "runs" / TASK / label / "seed0" / "tb").rglob("events.*"))
        assert b"episode/gap_closed" in events  # the same score in the run's TensorBoard


def test_a_plugin_that_fails_to_import_is_named_with_its_error(plugin_package, tmp_path, capsys):
    code = benchmark.main(["--suite", TASK, "--agents", "random,broken", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken" in err and "my_ie_agents.broken:Thing" in err and "no_such_module_for_ie_env_tests" in err
    with pytest.raises(ValueError, match="importing module 'my_ie_agents.nope' failed: ModuleNotFoundError"):
        make_agent("my_ie_agents.nope:Agent")
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        make_agent("my_ie_agents:Missing")
    assert not (tmp_path / "b" / "runs").exists()
