"""The environment: registry-wide checks (MiniGrid style) and the semantics of a step."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ie_env
from ie_env.env import InternetExplorerEnv
from ie_env.reward import query_reward
from tests.conftest import latent_config, pixel_config

SMALL = {
    "InternetExplorer-v0": pixel_config(),
    "InternetExplorerLatent-v0": latent_config(),
    "InternetExplorerLatentRL-v0": latent_config(actions={"embed_dim": 16, "slate_size": 6}),
    "InternetExplorerLatentRLHeldout-v0": latent_config(actions={"embed_dim": 16, "slate_size": 6}),
}


@pytest.mark.parametrize("env_id", sorted(ie_env.ENV_IDS))
def test_check_env_every_registered_id(env_id):
    env = gym.make(env_id, config=SMALL.get(env_id, latent_config()))
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    env.close()


@pytest.mark.parametrize("env_id", sorted(ie_env.ENV_IDS))
def test_registered_env_pickles(env_id):
    env = gym.make(env_id, config=SMALL.get(env_id, latent_config()))
    clone = pickle.loads(pickle.dumps(env.unwrapped.config))
    assert clone == env.unwrapped.config


def _rollout(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        rewards.append(r)
    return np.stack(out), np.array(rewards)


def test_latent_steps_are_deterministic_for_a_seed():
    actions = [5, 17, 5, 300, 42, 42, 7, 9, 11, 1000, 3, 2]
    o1, r1 = _rollout(InternetExplorerEnv(latent_config()), actions, seed=3)
    o2, r2 = _rollout(InternetExplorerEnv(latent_config()), actions, seed=3)
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2)


def test_step_info_iteration_cycle_and_truncation():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    closed, truncated = [], False
    for t in range(env.config.query_budget):
        obs, r, term, truncated, info = env.step(t * 7)
        assert not term
        assert r == pytest.approx(query_reward(np.array(info["image_rewards"]), 10))
        assert info["hits"] == 20 and len(info["image_rewards"]) == 20
        assert 0.0 <= info["true_relevance"] <= 1.0
        closed.append(info["iteration_closed"])
        if info["iteration_closed"]:
            assert len(info["gain"]) == 4
            assert "knn_accuracy" in info["iteration_stats"]
    assert closed == [False, False, False, True] * 3
    assert truncated
    assert len(env.knn_history) == 4  # index 0 before exploring
    with pytest.raises(RuntimeError, match="budget"):
        env.step(0)


def test_repeated_query_is_served_from_cache_and_adds_no_images():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    _, _, _, _, first = env.step(10)
    made = env.counters["materialized_images"]
    _, _, _, _, again = env.step(10)
    assert again["cached"] and not first["cached"]
    assert again["new_images"] == 0 and first["new_images"] == 20
    assert env.counters["materialized_images"] == made
    assert again["image_rewards"] == first["image_rewards"]  # same encoder within the iteration


def test_gain_reward_mode_pays_at_iteration_close():
    env = InternetExplorerEnv(latent_config(reward="gain"))
    env.reset(seed=0)
    rewards, infos = [], []
    for a in range(4):
        _, r, _, _, info = env.step(a)
        rewards.append(r)
        infos.append(info)
    assert rewards[:3] == [0.0, 0.0, 0.0]
    assert rewards[3] == pytest.approx(sum(infos[3]["gain"]))
    assert infos[0]["query_reward"] > 0  # the paper's reward is still reported


def test_invalid_action_and_config_errors():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step(env.action_space.n)
    with pytest.raises(Exception, match="unknown config key"):
        InternetExplorerEnv({"not_a_key": 1})
    with pytest.raises(Exception, match="fidelity"):
        InternetExplorerEnv({"world": {"fidelity": "voxels"}})


def test_action_mask_can_forbid_repeats():
    env = InternetExplorerEnv(latent_config(mask_queried=True))
    env.reset(seed=0)
    assert env.action_masks().all()
    env.step(3)
    mask = env.action_masks()
    assert not mask[3] and mask.sum() == env.action_space.n - 1


def test_targets_relevance_and_ground_truth_never_in_observation():
    env = InternetExplorerEnv(latent_config())
    obs, _ = env.reset(seed=0)
    g = env.ground_truth_relevance()
    assert np.all(g[env.world.target_ids] == 1.0)
    assert g.mean() < 0.1  # most concepts are unlike every target
    assert obs.shape == env.observation_space.shape
    # The observation before any query is all zeros but the budget left.
    assert np.count_nonzero(obs[:-1]) == 0 and obs[-1] == 1.0


def test_query_of_target_concept_scores_above_unrelated():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    g = env.ground_truth_relevance()
    far = np.argsort(g)[:20]
    rt = [env.step(int(t))[1] for t in env.world.target_ids[:2]]
    rf = [env.step(int(f))[1] for f in far[:2]]
    assert min(rt) > max(rf)


def test_pixels_step_returns_rendered_images_scored_by_ssl_encoder():
    env = InternetExplorerEnv(pixel_config())
    obs, info = env.reset(seed=0)
    assert 0.0 <= info["knn_accuracy"][20] <= 1.0
    _, r, _, _, info = env.step(int(env.world.target_ids[0]))
    assert env.cache[info["key"]]["images"].dtype == np.uint8
    assert env.cache[info["key"]]["images"].shape == (12, 32, 32, 3)
    assert -1.0 <= r <= 1.0
