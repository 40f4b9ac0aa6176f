"""``rescore_history``: every earlier query of the episode scored again under the updated encoder at
each iteration close, and the GP sampler refitting on those rewards."""

from __future__ import annotations

import numpy as np
import pytest

from ie_agents.base import AgentContext
from ie_agents.gp_sampler import GPSamplerAgent
from ie_env.env import InternetExplorerEnv
from ie_env.reward import image_rewards, query_reward
from tests.conftest import latent_config, pixel_config


def _reference(env: InternetExplorerEnv, key: str) -> float:
    """The query reward of ``key``'s cached images under the env's current encoder, the slow way."""
    imgs = env.cache[key]["images"]
    if len(imgs) < env.config.min_images:
        return 0.0
    rw = image_rewards(env.learner.features(imgs), env.target_feats, env.config.k).numpy()
    return query_reward(rw, env.config.top_images)


@pytest.mark.parametrize("info_level", ["full", "minimal"])
def test_latent_rescored_rewards_are_the_current_encoders(info_level):
    env = InternetExplorerEnv(latent_config(rescore_history=True, info_level=info_level, evaluate=False))
    env.reset(seed=2)
    actions = [5, 77, 5, 1200, 9, 33, 2, 600, 5, 41, 42, 43]  # repeats inside and across iterations
    keys, observed, closes = [], [], 0
    for a in actions:
        _, r, _, _, info = env.step(a)
        keys.append(env._episode_keys[-1])
        observed.append(info["query_reward"])
        if info["iteration_closed"]:
            closes += 1
            got = info["iteration_stats"]["rescored_rewards"]
            assert got["actions"] == actions[: len(keys)]
            ref = [_reference(env, k) for k in keys]
            np.testing.assert_allclose(got["rewards"], ref, atol=2e-6)
            if closes > 1:  # the encoder moved: rewards from earlier iterations changed
                assert not np.allclose(got["rewards"][:4], observed[:4], atol=1e-6)
    assert closes == 3


def test_too_few_images_rescore_to_zero_and_default_off():
    env = InternetExplorerEnv(latent_config(rescore_history=True, min_images=30))  # 20 images a query
    env.reset(seed=0)
    for a in [1, 2, 3, 4]:
        _, _, _, _, info = env.step(a)
    assert info["iteration_stats"]["rescored_rewards"]["rewards"] == [0.0] * 4
    plain = InternetExplorerEnv(latent_config())
    plain.reset(seed=0)
    for a in [1, 2, 3, 4]:
        _, _, _, _, info = plain.step(a)
    assert "rescored_rewards" not in info["iteration_stats"]


def test_pixels_rescored_rewards_are_the_current_encoders(monkeypatch):
    import ie_env.env as env_module

    monkeypatch.setattr(env_module, "RESCORE_QUERIES_PER_BATCH", 2)  # several forward batches
    env = InternetExplorerEnv(pixel_config(rescore_history=True, evaluate=False))
    env.reset(seed=1)
    keys = []
    for a in [10, 11, 10, 12, 13, 14]:
        _, _, _, _, info = env.step(a)
        keys.append(env._episode_keys[-1])
        if info["iteration_closed"]:
            got = info["iteration_stats"]["rescored_rewards"]["rewards"]
            np.testing.assert_allclose(got, [_reference(env, k) for k in keys], atol=1e-5)


def test_rescored_history_survives_a_state_round_trip():
    cfg = latent_config(rescore_history=True)
    a = InternetExplorerEnv(cfg)
    a.reset(seed=5)
    for act in [3, 4, 5, 6]:
        a.step(act)
    b = InternetExplorerEnv(cfg)
    b.reset(seed=99)
    b.load_state_dict(a.state_dict())
    for act in [7, 8, 9, 3]:
        ia = a.step(act)[4]
        ib = b.step(act)[4]
    assert ia["iteration_stats"]["rescored_rewards"] == ib["iteration_stats"]["rescored_rewards"]


@pytest.mark.parametrize("use", [True, False])
def test_gp_sampler_refits_on_rescored_rewards_when_asked(use):
    rng = np.random.default_rng(0)
    E = rng.standard_normal((200, 8)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    agent = GPSamplerAgent(tier_sizes=(5, 20), use_rescored=use)
    agent.setup(AgentContext(concept_embeddings=E, queries_per_iteration=3, seed=0))
    for a, r in [(1, 0.5), (2, 0.6)]:
        agent.observe(a, r, None, {"query_reward": r, "iteration_closed": False})
    rescored = {"actions": [1, 2, 3], "rewards": [0.1, 0.2, float("nan")]}
    agent.observe(3, 0.7, None, {"query_reward": 0.7, "iteration_closed": True,
                                 "iteration_stats": {"rescored_rewards": rescored}})
    if use:  # the re-scored rewards replace the observed ones (a NaN is dropped, as when observed)
        assert agent.actions == [1, 2] and agent.rewards == [0.1, 0.2]
    else:
        assert agent.actions == [1, 2, 3] and agent.rewards == [0.5, 0.6, 0.7]


def test_gp_run_with_rescoring_end_to_end_is_deterministic(tmp_path):
    """``ie-explore`` with ``env.rescore_history``: the GP fits the re-scored rewards (its saved history
    is the last re-scoring, not the logged rewards), the per-query lists stay out of summary.json, and
    a second run of the same config logs the same queries and rewards."""
    import json

    import yaml

    from ie_experiments.run import main, read_checkpoint

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": latent_config(rescore_history=True), "threads": 1,
                                   "agent_config": {"tier_sizes": [10, 30]}}))
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "gp", "--logdir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "rescored_rewards" not in json.dumps(summary)
    logged = [json.loads(line)["query_reward"] for line in (out / "queries.jsonl").read_text().splitlines()]
    ckpt = read_checkpoint(sorted((out / "checkpoints").glob("*.pt"))[-1])
    agent_rewards = ckpt["agent"]["rewards"]
    assert len(agent_rewards) == len(logged) == 12
    assert not np.allclose(agent_rewards[:4], logged[:4], atol=1e-6)  # first iteration: re-scored since
    again = tmp_path / "again"
    assert main(["--config", str(cfg), "--agent", "gp", "--logdir", str(again), "--no-progress"]) == 0
    assert (again / "queries.jsonl").read_text() == (out / "queries.jsonl").read_text()
