"""experiments/ppo_batched.py and its saved policies (agents/torch_policy.py): training runs, saves a
policy that the runner's agent interface and ie-benchmark's checks load, and bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ie_agents.registry import make_agent
from ie_agents.torch_policy import SlateActorCritic, load_policy, policy_space_problem, save_policy
from ie_experiments import ppo_batched
from ie_experiments.train import main as train_main


def _train(tmp_path, *extra: str) -> dict:
    args = ppo_batched.parse_args(["--task", "IELatent-Hard-v1", "--num-envs", "32", "--num-steps", "16",
                                   "--total-timesteps", "4096", "--logdir", str(tmp_path), "--seed", "1",
                                   "--learning-rate", "3e-3", "--ent-coef", "0.0", "--anneal-lr", "false",
                                   "--gamma", "0.99", "--num-minibatches", "4", "--update-epochs", "4", *extra])
    return ppo_batched.train(args)


def test_training_learns_and_saves_a_loadable_policy(tmp_path):
    summary = _train(tmp_path)
    assert summary["global_step"] == 4096 and summary["episodes"] == 32
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())  # TensorBoard events
    net, meta = load_policy(summary["policy"])
    assert meta["task_id"] == "IELatent-Hard-v1" and meta["K"] == 16
    # It learnt something measurable in 4k steps: the critic's loss fell (7.2 -> 5.1 here). (A policy that
    # beats a random slot's g takes far more steps than a unit test affords: see docs/batched.md.)
    assert summary["value_loss_last"] < 0.8 * summary["value_loss_first"], summary
    # The greedy policy plays whole seeded episodes of the batched env.
    ev = ppo_batched.evaluate(net, "IELatent-Hard-v1", 4, seed=100)
    assert 0.0 <= ev["g"] <= 1.0 and np.isfinite(ev["return"])
    # The runner's agent plays it on the scalar env: a concept index per step.
    from ie_agents.base import AgentContext
    from ie_env.env import InternetExplorerEnv
    from ie_env.suite import eval_config

    agent = make_agent(f"torch:{summary['policy']}")
    env = InternetExplorerEnv(eval_config("IELatent-Hard-v1"))
    env.reset(seed=10_000)
    agent.setup(AgentContext.from_env(env, seed=10_000))
    for _ in range(20):
        c = agent.act(None, {})
        assert 0 <= c < len(env.vocabulary)
        _, r, _, _, info = env.step(c)
        agent.observe(c, r, None, info)
    assert policy_space_problem(summary["policy"], "IELatent-Standard-v1") is None


def test_policy_for_other_spaces_is_refused_naming_both(tmp_path):
    path = save_policy(tmp_path / "p.pt", SlateActorCritic(201, 40, 8),
                       {"task_id": "Custom-K8", "K": 8, "env": {}, "action_mode": "slate"})
    problem = policy_space_problem(str(path), "IELatent-Hard-v1")
    assert problem and "Custom-K8" in problem and "IELatent-Hard-v1" in problem
    from ie_env.config import ConfigError
    from ie_experiments.benchmark import check_agents
    from ie_experiments.compare import AgentSpec

    with pytest.raises(ConfigError, match="Custom-K8"):
        check_agents([AgentSpec("ppo", f"torch:{path}")], ["IELatent-Hard-v1"], {})


def test_policy_files_are_tensors_and_json_only(tmp_path):
    net = SlateActorCritic(201, 40, 8)
    path = save_policy(tmp_path / "p.pt", net, {"task_id": "IELatent-Hard-v1", "K": 16, "env": {}})
    state = torch.load(path, weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    assert json.loads((tmp_path / "p.pt.json").read_text())["hidden"] == 8
    (tmp_path / "p.pt.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        load_policy(path)
    with pytest.raises(ValueError, match="not found"):
        load_policy(tmp_path / "missing.pt")


def test_bad_input_exits_2(tmp_path, capsys):
    assert ppo_batched.main(["--num-envs", "0", "--logdir", str(tmp_path)]) == 2
    assert "positive" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(["--algo", "ppo-batched", "--device", "cuda", "--logdir", str(tmp_path)]) == 2
        assert "'cuda'" in capsys.readouterr().err
    assert ppo_batched.main(["--task", "IELatent-Hard-v1", "--logdir", str(tmp_path), "--num-envs", "-3"]) == 2
    np.testing.assert_equal(list(tmp_path.iterdir()), [])  # nothing written
