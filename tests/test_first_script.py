"""What an RL researcher's first script does, on every registered id, with no adapter code:
``gym.make(id, render_mode=...)``, ``spec.max_episode_steps``, SB3's ``make_vec_env(id, n_envs=4)``
(which passes ``render_mode="rgb_array"``), ``gym.make_vec``, ``Monitor``, ``EvalCallback`` and the
documented TensorBoard callback (``ie_experiments.train.metrics_callback``). Pixels ids cost seconds
per env here: they build two envs for ``make_vec_env`` and leave ``gym.make_vec`` to
``tests/test_vector_env.py`` and PPO to the latent ids.

Ids whose default episode takes well under a second step their own config; the others (SSL in the
loop, full info with k-NN every iteration) a short budget with a tiny SSL model (``small``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import ie_env
from ie_env import suite
from ie_env.env import make_config
from tests.test_gym_conventions import ALL_IDS, small

FAST = {"IELatent-Easy-v1", "IELatent-Standard-v1", "IELatent-Hard-v1", "InternetExplorerLatentRL-v0",
        "InternetExplorerLatentRLHeldout-v0"}


def kwargs_for(env_id: str) -> dict:
    return {} if env_id in FAST else {"config": small(env_id)}


def default_budget(env_id: str) -> int:
    if env_id in suite.TASKS:
        return suite.task_config(env_id).query_budget
    return make_config(ie_env.ENV_IDS[env_id]).query_budget


def _run_to_end(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    done, n = False, 0
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        done, n = terminated or truncated, n + 1
    return n, info


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_make_render_modes_and_time_limit(env_id):
    assert gym.spec(env_id).max_episode_steps == default_budget(env_id)
    kw = kwargs_for(env_id)
    # pixels ids (SSL in the loop) run one episode, with frames; the other mode only constructs
    modes = ("rgb_array",) if gym.spec(env_id).nondeterministic else (None, "rgb_array")
    if len(modes) == 1:
        assert gym.make(env_id, render_mode=None, **kw).render_mode is None
    for mode in modes:
        env = gym.make(env_id, render_mode=mode, **kw)
        assert env.render_mode == mode and env.unwrapped.render_mode == mode
        n, info = _run_to_end(env)
        assert n == env.unwrapped.config.query_budget
        ep = info["ie_episode"]
        assert np.isfinite(ep["gap_closed"]) and -1.0 <= ep["gap_closed"] <= 1.0
        frame = env.render()
        if mode is None:
            assert frame is None
        else:
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
            assert frame[40:].std() > 5  # the query's images are drawn, not a blank grid
        env.close()


def test_an_unknown_render_mode_is_refused_naming_the_valid_ones():
    from ie_env.config import ConfigError
    from ie_env.env import InternetExplorerEnv

    with pytest.raises(ConfigError, match="render_mode 'ascii' is not supported; valid: None, rgb_array"):
        InternetExplorerEnv(small("IELatent-Standard-v1"), render_mode="ascii")


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_sb3_make_vec_env_and_gymnasium_make_vec(env_id):
    from stable_baselines3.common.env_util import make_vec_env

    kw = kwargs_for(env_id)
    pixels = gym.spec(env_id).nondeterministic  # SSL in the loop: two envs, and make_vec in test_vector_env
    n = 2 if pixels else 4
    vec = make_vec_env(env_id, n_envs=n, seed=0, env_kwargs=kw or None)
    vec.reset()
    budget = vec.get_attr("config")[0].query_budget
    for _ in range(budget):
        _, _, dones, infos = vec.step(np.array([vec.action_space.sample() for _ in range(n)]))
    assert dones.all()
    for info in infos:  # Monitor's episode record and the env's own score, side by side
        assert info["episode"]["l"] == budget and "gap_closed" in info["ie_episode"]
    vec.close()
    if pixels:
        return
    gvec = gym.make_vec(env_id, num_envs=2, **kw)
    gvec.reset(seed=0)
    _, r, _, _, _ = gvec.step(gvec.action_space.sample())
    assert r.shape == (2,) and np.isfinite(r).all()
    gvec.close()


@pytest.mark.parametrize("env_id", ["IELatent-Standard-v1", "InternetExplorerLatent-v0"])
def test_ppo_learns_with_eval_callback_and_monitor(env_id, tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    kw = {"config": small(env_id)}
    vec = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=kw)
    eval_env = make_vec_env(env_id, n_envs=1, seed=1, env_kwargs=kw)
    policy = "MultiInputPolicy" if isinstance(vec.observation_space, gym.spaces.Dict) else "MlpPolicy"
    model = PPO(policy, vec, n_steps=6, batch_size=12, n_epochs=1, seed=0, device="cpu")
    from stable_baselines3.common.logger import configure

    from ie_experiments.train import metrics_callback

    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    cb = EvalCallback(eval_env, n_eval_episodes=1, eval_freq=6, log_path=str(tmp_path), verbose=0)
    model.learn(12, callback=[cb, metrics_callback()])
    assert cb.evaluations_timesteps and np.isfinite(cb.last_mean_reward)
    rows = (tmp_path / "log" / "progress.csv").read_text().splitlines()
    col = rows[0].split(",").index("ie/gap_closed")  # the documented callback puts the score in the logs
    values = [r.split(",")[col] for r in rows[1:] if r.split(",")[col]]
    assert values and all(np.isfinite(float(v)) for v in values)
