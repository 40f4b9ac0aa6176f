"""SB3 model zips load without unpickling anything in them: a planted pickle never runs, entries
that cannot be rebuilt from plain text are refused by name unless the user trusts the file, and
real models (plain SB3, sb3-contrib, ie-train) act exactly as SB3's own ``load`` makes them act."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import ie_env  # noqa: F401 - registers the ids
from ie_agents.sb3_agent import SB3Agent, load_model
from ie_env.plain_state import UnsafeFileError
from ie_experiments import benchmark

TASK = "IELatent-Standard-v1"


class _Touch:
    """Unpickles into ``open(path, "w")``: creates the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _planted(src: Path, dst: Path, marker: Path, key: str, text: dict | None = None) -> Path:
    """``src`` with ``data[key]``'s pickle replaced by one that creates ``marker`` (its plain text
    kept, or updated with ``text``)."""
    with zipfile.ZipFile(src) as zin:
        entries = {n: zin.read(n) for n in zin.namelist()}
    data = json.loads(entries["data"])
    entry = dict(data.get(key) or {":type:": "<class 'object'>"})
    entry[":serialized:"] = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    entry.update(text or {})
    data[key] = entry
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for n, b in entries.items():
            zout.writestr(n, b)
    return dst


def _observations(n: int = 4) -> list:
    env = gym.make(TASK)
    obs, _ = env.reset(seed=10_000)
    out = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(int(rng.integers(env.action_space.n)))
    return out, env


def _same_actions(path: str, masked: bool = False) -> None:
    """Our load and SB3's own load give the same spaces and the same deterministic actions."""
    ours, _ = load_model(path)
    theirs = type(ours).load(path, device="cpu")
    assert ours.observation_space == theirs.observation_space and ours.action_space == theirs.action_space
    assert type(ours.policy) is type(theirs.policy)
    obs_list, env = _observations()
    for obs in obs_list:
        kw = {"action_masks": env.unwrapped.action_masks()} if masked else {}
        a, _ = ours.predict(obs, deterministic=True, **kw)
        b, _ = theirs.predict(obs, deterministic=True, **kw)
        assert np.array_equal(a, b)
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())


@pytest.fixture(scope="module")
def plain_ppo(tmp_path_factory) -> Path:
    from stable_baselines3 import PPO

    root = tmp_path_factory.mktemp("sb3safe")
    model = PPO("MultiInputPolicy", gym.make(TASK), n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(32)
    model.save(root / "plain")
    return root / "plain.zip"


@pytest.mark.parametrize("key", ["observation_space", "policy_class"])
def test_a_planted_pickle_never_runs(plain_ppo, tmp_path, key):
    marker = tmp_path / "pwned"
    bad = _planted(plain_ppo, tmp_path / "bad.zip", marker, key)
    agent = SB3Agent(str(bad))  # the entry is rebuilt from its text: loads, acts, runs nothing
    assert not marker.exists()
    ref, _ = load_model(plain_ppo)
    assert agent.spaces() == (ref.observation_space, ref.action_space)
    obs = _observations(1)[0][0]
    assert np.array_equal(agent.model.predict(obs, deterministic=True)[0], ref.predict(obs, deterministic=True)[0])
    # SB3's own loader (what --trust-pickle allows) does run the planted pickle: the plant is real.
    with pytest.raises(ValueError):
        load_model(bad, trust_pickle=True)
    assert marker.exists()


def test_a_planted_pickle_whose_text_names_no_known_class_is_refused_by_name(plain_ppo, tmp_path):
    marker = tmp_path / "pwned"
    bad = _planted(plain_ppo, tmp_path / "bad.zip", marker, "policy_class",
                   {"__module__": "builtins", "__init__": "<function Evil.__init__ at 0x7f00>"})
    with pytest.raises(UnsafeFileError, match="'policy_class'.*--trust-pickle"):
        SB3Agent(str(bad))
    assert not marker.exists()
    code = benchmark.main(["--suite", TASK, "--agents", f"m=sb3:{bad}", "--out", str(tmp_path / "b")])
    assert code == 2 and not marker.exists()
    assert not (tmp_path / "b" / "runs").exists()


def test_an_unknown_serialized_entry_is_refused_unless_trusted(plain_ppo, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = _planted(plain_ppo, tmp_path / "bad.zip", marker, "my_extra")
    with pytest.raises(UnsafeFileError, match="'my_extra'"):
        load_model(bad)
    code = benchmark.main(["--suite", TASK, "--agents", f"m=sb3:{bad}", "--seeds", "1", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "'my_extra'" in err and "--trust-pickle" in err
    assert not marker.exists()
    model, _ = load_model(bad, trust_pickle=True)  # the user vouches for the file: SB3 unpickles it
    assert marker.exists() and model.observation_space["context"].shape == (201,)


def test_ie_explore_refuses_an_untrusted_model_and_loads_it_with_trust_pickle(plain_ppo, tmp_path, capsys):
    from ie_experiments import run

    marker = tmp_path / "pwned"
    bad = _planted(plain_ppo, tmp_path / "bad.zip", marker, "my_extra")
    logdir = tmp_path / "run"
    args = ["--task", TASK, "--agent", f"sb3:{bad}", "--seed", "0", "--logdir", str(logdir), "--no-progress",
            "--set", "env.iterations=1", "--set", "env.action_mode=slate"]
    assert run.main(args) == 2
    assert "'my_extra'" in capsys.readouterr().err and not marker.exists() and not logdir.exists()
    assert run.main([*args, "--trust-pickle"]) == 0
    assert marker.exists() and (logdir / "summary.json").exists()


def test_ie_compare_refuses_an_untrusted_model_and_builds_it_with_trust_pickle(plain_ppo, tmp_path, capsys,
                                                                               monkeypatch):
    from ie_experiments import compare

    marker = tmp_path / "pwned"
    bad = _planted(plain_ppo, tmp_path / "bad.zip", marker, "my_extra")
    args = ["--agents", f"m=sb3:{bad}", "--out", str(tmp_path / "c"), "--quiet"]
    assert compare.main(args) == 2
    assert "'my_extra'" in capsys.readouterr().err and not marker.exists()

    def stop(*_a, **_k):  # the agents were built and checked: stop before any run
        raise compare.ConfigError("stopped after the agent check")

    monkeypatch.setattr(compare, "plan_runs", stop)
    assert compare.main([*args, "--trust-pickle"]) == 2
    assert "stopped after the agent check" in capsys.readouterr().err and marker.exists()


def test_a_pickled_weights_entry_is_refused(plain_ppo, tmp_path):
    import io

    import torch

    marker = tmp_path / "pwned"
    with zipfile.ZipFile(plain_ppo) as zin:
        entries = {n: zin.read(n) for n in zin.namelist()}
    buf = io.BytesIO()
    torch.save({"x": _Touch(marker)}, buf)
    entries["pytorch_variables.pth"] = buf.getvalue()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zout:
        for n, b in entries.items():
            zout.writestr(n, b)
    with pytest.raises(UnsafeFileError, match="pytorch_variables.pth"):
        load_model(bad)
    assert not marker.exists()


def test_plain_sb3_models_act_as_sb3s_own_load(plain_ppo, tmp_path):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN

    _same_actions(str(plain_ppo))
    env = gym.make(TASK)
    a2c = A2C("MultiInputPolicy", env, n_steps=8, seed=0, device="cpu", policy_kwargs={"net_arch": [32]})
    a2c.save(tmp_path / "a2c")
    _same_actions(str(tmp_path / "a2c.zip"))
    DQN("MultiInputPolicy", env, buffer_size=64, learning_starts=0, seed=0, device="cpu").save(tmp_path / "dqn")
    _same_actions(str(tmp_path / "dqn.zip"))
    MaskablePPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu").save(tmp_path / "mppo")
    _same_actions(str(tmp_path / "mppo.zip"), masked=True)


def test_policy_kwargs_with_classes_are_rebuilt_by_name(tmp_path):
    import torch
    from stable_baselines3 import PPO

    PPO("MultiInputPolicy", gym.make(TASK), n_steps=8, seed=0, device="cpu",
        policy_kwargs={"activation_fn": torch.nn.ReLU, "net_arch": [16]}).save(tmp_path / "relu")
    _same_actions(str(tmp_path / "relu.zip"))
    ours, _ = load_model(tmp_path / "relu.zip")
    assert ours.policy_kwargs["activation_fn"] is torch.nn.ReLU


def test_an_ie_train_slate_model_acts_as_sb3s_own_load(tmp_path):
    from ie_agents.sb3_agent import __getattr__ as policy_class
    from ie_env.suite import task_config
    from ie_experiments.train import TrainConfig, train

    cfg = TrainConfig(env=task_config(TASK), algo="ppo", total_timesteps=64, n_envs=1, seed=0, eval_freq=0,
                      checkpoint_freq=0, heldout_episodes=0,
                      algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1})
    path = train(cfg, tmp_path / "run", progress=False)["model"]
    ours, meta = load_model(path)
    theirs = type(ours).load(path, device="cpu", custom_objects={"policy_class": policy_class(meta["policy"])})
    assert type(ours.policy) is type(theirs.policy) and meta["action_mode"] == "slate"
    obs_list, _ = _observations()
    for obs in obs_list:
        assert np.array_equal(ours.predict(obs, deterministic=True)[0], theirs.predict(obs, deterministic=True)[0])
