"""Stable-Baselines3 on the environment: env checks, vector envs, algorithm/mode rules, learning, and a
trained model run through the runner's agent interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ie_env
from ie_agents.sb3_agent import (
    ALGO_MODES,
    SB3Agent,
    SlateRandomAgent,
    SlateScorer,
    check_algo_mode,
    policy_for,
    read_model_meta,
    save_model,
)
from ie_agents.base import AgentContext
from ie_experiments.train import TrainConfig, main as train_main, run_episode
from ie_env.env import InternetExplorerEnv
from tests.conftest import latent_config, pixel_config

MODES = ("vocab", "embedding", "slate")
SMALL_ACTIONS = {"embed_dim": 16, "slate_size": 6, "summary": True}


def _small(env_id: str, mode: str) -> dict:
    if env_id == "InternetExplorer-v0":  # SSL in the loop: keep resets and iterations cheap
        base = pixel_config(warmup_images=0, evaluate=False, info_level="minimal", queries_per_iteration=8, iterations=1,
                            ssl={"max_steps": 1})
    else:
        base = latent_config()
    return {**base, "action_mode": mode, "actions": SMALL_ACTIONS}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", sorted(ie_env.ENV_IDS))
def test_sb3_and_gymnasium_check_env_every_id_and_mode(env_id, mode):
    env = gym.make(env_id, config=_small(env_id, mode))
    sb3_check_env(env.unwrapped, warn=False, skip_render_check=True)
    gym_check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_algorithm_mode_rules_and_error_before_training(tmp_path, capsys):
    check_algo_mode("ppo", "slate")
    check_algo_mode("sac", "embedding")
    with pytest.raises(ValueError, match="compatible modes: embedding"):
        check_algo_mode("sac", "vocab")
    with pytest.raises(ValueError, match="compatible modes: vocab, slate"):
        check_algo_mode("dqn", "embedding")
    with pytest.raises(ValueError, match="unknown algorithm"):
        check_algo_mode("trpo", "vocab")
    logdir = tmp_path / "run"
    rc = train_main(["--algo", "sac", "--action-mode", "slate", "--logdir", str(logdir), "--total-timesteps", "10"])
    assert rc == 2
    assert "compatible modes: embedding" in capsys.readouterr().err
    assert not logdir.exists()  # nothing built, nothing written
    assert set(ALGO_MODES) == {"ppo", "a2c", "dqn", "maskable_ppo", "sac"}


def test_vector_envs_gymnasium_make_vec_and_subproc():
    from stable_baselines3.common.vec_env import SubprocVecEnv

    cfg = latent_config(action_mode="slate", actions=SMALL_ACTIONS)
    venv = gym.make_vec("InternetExplorerLatent-v0", num_envs=2, vectorization_mode="sync", config=cfg)
    obs, _ = venv.reset(seed=0)
    assert obs["candidates"].shape == (2, 6, 16 + 8)
    obs, r, term, trunc, info = venv.step(np.array([0, 5]))
    assert r.shape == (2,) and np.all(np.isfinite(r))
    venv.close()
    # Workers run without torch thread pools (lean info, no k-NN), so fork is safe and fast.
    lean = {**cfg, "info_level": "minimal", "evaluate": False}
    sub = SubprocVecEnv([lambda: InternetExplorerEnv(lean) for _ in range(2)], start_method="fork")
    sub.seed(1)
    o = sub.reset()
    o, r, d, infos = sub.step(np.array([1, 2]))
    assert o["context"].shape[0] == 2 and len(infos) == 2 and "true_relevance" in infos[0]
    masks = np.stack(sub.env_method("action_masks"))
    assert masks.shape == (2, 6)
    sub.close()


def test_slate_scorer_size_does_not_grow_with_k():
    def n_params(k):
        env = InternetExplorerEnv(latent_config(action_mode="slate", actions={**SMALL_ACTIONS, "slate_size": k}))
        return sum(p.numel() for p in SlateScorer(env.observation_space, 32).parameters())

    assert n_params(4) == n_params(12)
    env = InternetExplorerEnv(latent_config(action_mode="slate", actions=SMALL_ACTIONS))
    obs, _ = env.reset(seed=0)
    scorer = SlateScorer(env.observation_space, 32)
    batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    out = scorer(batch)
    assert out.shape == (1, 6 + 64)
    # Permuting the candidates permutes their scores.
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    shuffled = {"context": batch["context"], "candidates": batch["candidates"][:, perm]}
    assert torch.allclose(scorer(shuffled)[0, :6], out[0, perm], atol=1e-6)


TINY = latent_config(
    action_mode="slate", actions={"embed_dim": 16, "slate_size": 8, "summary": True},
    info_level="minimal", evaluate=False, world={"fidelity": "latent", "target_theme": "bird"},
)


def _mean_g(policy, episodes: int = 6) -> float:
    env = InternetExplorerEnv(TINY)
    rng = np.random.default_rng(0)
    out = []
    for e in range(episodes):
        obs, _ = env.reset(seed=100 + e)
        g, done = [], False
        while not done:
            a = policy(obs, rng)
            obs, _, _, done, info = env.step(a)
            g.append(info["true_relevance"])
        out.append(np.mean(g))
    return float(np.mean(out))


def _uniform_random_g(episodes: int = 6) -> float:
    env = InternetExplorerEnv(latent_config(info_level="minimal", evaluate=False, world={"fidelity": "latent", "target_theme": "bird"}))
    rng = np.random.default_rng(0)
    env.reset(seed=100)
    return float(np.mean([env.ground_truth_relevance()[rng.integers(env.action_space.n)] for _ in range(12 * episodes)]))


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_short_learning_beats_random_and_the_untrained_policy(algo, tmp_path):
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    vec = DummyVecEnv([lambda: InternetExplorerEnv(TINY) for _ in range(4)])
    vec.seed(0)
    if algo == "ppo":
        model = PPO(policy_for("ppo", "slate"), vec, n_steps=64, batch_size=64, n_epochs=5, learning_rate=1e-3,
                    gamma=0.9, seed=0, device="cpu")
    else:
        model = DQN(policy_for("dqn", "slate"), vec, learning_starts=200, buffer_size=5000, train_freq=1,
                    target_update_interval=200, exploration_fraction=0.3, learning_rate=1e-3, gamma=0.9, seed=0, device="cpu")
    act = lambda o, rng: model.predict(o, deterministic=True)[0]  # noqa: E731
    before = _mean_g(act)
    model.learn(2000)
    after = _mean_g(act)
    slot = _mean_g(lambda o, rng: int(rng.integers(8)))
    uniform = _uniform_random_g()
    assert after > 2.0 * uniform
    assert after > before + 0.03 and after > slot + 0.03
    if algo == "ppo":  # the saved model runs through the runner's agent interface
        path = save_model(model, tmp_path / "m.zip", {"algo": "ppo", "action_mode": "slate", "policy": "SlatePolicy",
                                                      "env": _env_dict(TINY)})
        assert read_model_meta(path)["algo"] == "ppo"
        slate_env = InternetExplorerEnv(TINY)  # the policy acts on the env it was trained on, as model.predict does
        res = run_episode(SB3Agent(str(path)), slate_env, seed=100)
        assert res["mean_true_relevance"] > 2.0 * uniform
        res_slot = run_episode(SlateRandomAgent(read_model_meta(path)), slate_env, seed=100)
        assert 0.0 <= res_slot["mean_true_relevance"] <= 1.0
        # What each agent states it drew from: a point mass on the deterministic policy's concept, a
        # uniform draw over the env's own slate for the random slot.
        agent, slot_agent = SB3Agent(str(path)), SlateRandomAgent(read_model_meta(path))
        obs, _ = slate_env.reset(seed=5)
        ctx = AgentContext.from_env(slate_env, seed=5)
        agent.setup(ctx)
        slot_agent.setup(ctx)
        a = agent.act(obs, {})
        assert a == model.predict(obs, deterministic=True)[0]
        p = agent.action_distribution()
        assert p[ctx.env.to_concept(a)] == 1.0 and p.sum() == 1.0
        b = slot_agent.act(obs, {})
        q = slot_agent.action_distribution()
        assert 0 <= b < 8 and q.sum() == pytest.approx(1.0)
        assert set(np.flatnonzero(q)) == set(slate_env.action_mode.candidates.tolist())
        assert SB3Agent(str(path), deterministic=False).action_distribution() is None


def _env_dict(cfg: dict) -> dict:
    import json

    from ie_env.config import to_dict
    from ie_env.env import make_config

    return json.loads(json.dumps(to_dict(make_config(cfg))))


def test_sb3_prefix_reaches_make_agent_and_bad_file_is_refused(tmp_path):
    from ie_agents.registry import make_agent

    bad = tmp_path / "nope.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Stable-Baselines3 model file"):
        make_agent(f"sb3:{bad}")
    with pytest.raises(ValueError, match="not found"):
        make_agent(f"sb3:{tmp_path / 'missing.zip'}")


def test_train_config_defaults_are_valid():
    from ie_env.config import resolve
    from ie_experiments.train import DEFAULT_CONFIG

    cfg = resolve(TrainConfig, DEFAULT_CONFIG, [])
    check_algo_mode(cfg.algo, cfg.env.action_mode)
    assert cfg.env.targets.mode == "train" and cfg.env.world.fidelity == "latent"
