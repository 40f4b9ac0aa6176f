"""The gain-reward task ids: the query-reward ids' world and dynamics, with the iteration's gain paid at
its close step (docs/rewards.md)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import ie_env  # noqa: F401  (registers the ids)
from ie_env import suite

PAIRS = [("IELatent-Standard-Gain-v1", "IELatent-Standard-v1"), ("IEPixels-Standard-Gain-v1", "IEPixels-Standard-v1")]


@pytest.mark.parametrize("gain_id, query_id", PAIRS)
def test_gain_ids_differ_from_their_query_twins_in_the_reward_only(gain_id, query_id):
    gain, query = suite.get_task(gain_id), suite.get_task(query_id)
    assert gain.config["reward"] == "gain" and query.config["reward"] == "query"
    assert {**gain.config, "reward": "query"} == query.config
    assert (gain.fidelity, gain.eval_seed0) == (query.fidelity, query.eval_seed0)
    assert suite.world_hash(gain_id) == suite.world_hash(query_id)
    assert gain_id in suite.suite_tasks("gain") and gain_id in suite.suite_tasks("all")
    assert suite.task_spaces(gain_id) == suite.task_spaces(query_id)


def test_gain_is_each_querys_reward_change_summed_and_paid_at_the_close_step():
    env = gym.make("IELatent-Standard-Gain-v1", config={"action_mode": "vocab"}).unwrapped
    twin = gym.make("IELatent-Standard-v1", config={"action_mode": "vocab"}).unwrapped
    env.reset(seed=3)
    twin.reset(seed=3)
    rng = np.random.default_rng(0)
    Q = env.config.queries_per_iteration
    actions = rng.integers(len(env.vocabulary), size=env.config.query_budget)
    actions[5] = actions[2]  # a repeat inside an iteration
    closes, iteration = 0, []
    for a in actions:
        _, r, _, trunc, info = env.step(int(a))
        _, r_query, _, _, info_q = twin.step(int(a))
        assert info["query_reward"] == r_query == info_q["query_reward"]  # same dynamics and query rewards
        iteration.append((int(a), info["query_reward"]))
        if not info["iteration_closed"]:
            assert r == 0.0
            continue
        closes += 1
        gains = info["gain"]
        assert len(gains) == Q and r == pytest.approx(float(np.sum(gains)), abs=1e-9)
        after = env.peek_query_rewards([c for c, _ in iteration])  # each query scored again by the updated encoder
        assert gains == pytest.approx([a_ - b_ for a_, (_, b_) in zip(after, iteration, strict=False)], abs=1e-5)
        assert any(abs(g) > 1e-6 for g in gains)
        iteration = []
    assert trunc and closes == env.config.iterations
