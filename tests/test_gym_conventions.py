"""Gymnasium conventions over every registered id (MiniGrid style: one parametrised test per rule).

Seeding fixes the whole episode stream (later unseeded resets included); latent steps are
bit-deterministic for a seed and pixels ids say ``nondeterministic=True``; ``info["episode"]`` works
with ``RecordEpisodeStatistics`` and SB3's ``Monitor``; env and spec kwargs pickle; ``SyncVectorEnv``,
``AsyncVectorEnv`` and SB3's ``SubprocVecEnv`` run, and no process builds the world's large arrays
more than once (worker processes cost seconds each here, so those run for one id per entry point
and fidelity). Budgets are cut to a few queries and pixels ids get a tiny SSL model to stay fast.
"""

from __future__ import annotations

import multiprocessing
import pickle

import gymnasium as gym
import numpy as np
import pytest

import ie_env
from ie_env import suite
from ie_env.worlds import shared
from tests.conftest import pixel_config

ALL_IDS = sorted(ie_env.ENV_IDS) + sorted(suite.TASKS)
_TINY_PIXELS = {k: v for k, v in pixel_config().items() if k not in ("iterations", "queries_per_iteration")}


def small(env_id: str) -> dict:
    """The id's own config with a short budget (pixels: one iteration, a tiny SSL model, no k-NN)."""
    cfg = {"iterations": 2, "queries_per_iteration": 3}
    if gym.spec(env_id).nondeterministic:
        cfg.update(_TINY_PIXELS, iterations=1, warmup_images=16, evaluate=False)
    return cfg


def is_pixels(env_id: str) -> bool:
    return gym.make(env_id, config=small(env_id)).unwrapped.config.world.fidelity == "pixels"


def _episode(env, seed, actions):
    """(reset obs, target ids, [(obs, reward, g)] ...) of one episode; ``seed=None`` = unseeded reset."""
    obs, _ = env.reset(seed=seed)
    out = {"obs0": obs, "targets": env.unwrapped.world.target_ids.copy(), "steps": []}
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out["steps"].append((obs, r, info["true_relevance"], info["action"]))
        if term or trunc:
            break
    return out


def _same_obs(a, b) -> bool:
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def _actions(env, n, seed=0):
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_reset_seed_fixes_the_whole_episode_stream(env_id):
    envs = [gym.make(env_id, config=small(env_id)) for _ in range(2)]
    acts = _actions(envs[0], 10)
    exact = not gym.spec(env_id).nondeterministic
    assert exact == (not is_pixels(env_id))  # pixels + SSL is flagged nondeterministic, latent is not
    n_unseeded = 2 if exact else 1
    runs = [[_episode(e, 7, acts)] + [_episode(e, None, acts) for _ in range(n_unseeded)] for e in envs]
    for ep_a, ep_b in zip(*runs):
        assert np.array_equal(ep_a["targets"], ep_b["targets"])
        assert _same_obs(ep_a["obs0"], ep_b["obs0"])
        assert len(ep_a["steps"]) == len(ep_b["steps"]) == envs[0].unwrapped.config.query_budget
        for (o1, r1, g1, c1), (o2, r2, g2, c2) in zip(ep_a["steps"], ep_b["steps"]):
            assert (c1, g1) == (c2, g2)
            if exact:  # latent: bit-identical rewards and observations
                assert r1 == r2 and _same_obs(o1, o2)
    if envs[0].unwrapped.target_sampler is not None:  # a fresh target per reset: the stream moves on
        assert len({tuple(ep["targets"]) for ep in runs[0]} | {tuple(_episode(envs[0], 8, acts)["targets"])}) > 1


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_episode_statistics_wrappers_report_the_episode(env_id):
    from stable_baselines3.common.monitor import Monitor

    for wrap in (gym.wrappers.RecordEpisodeStatistics, Monitor):
        env = wrap(gym.make(env_id, config=small(env_id)))
        env.reset(seed=0)
        total, done, n = 0.0, False, 0
        while not done:
            _, r, term, trunc, info = env.step(env.action_space.sample())
            total, n, done = total + r, n + 1, term or trunc
        assert "episode" in info, wrap.__name__
        assert int(np.asarray(info["episode"]["l"])) == n == env.unwrapped.config.query_budget
        assert float(np.asarray(info["episode"]["r"])) == pytest.approx(total, rel=1e-5, abs=1e-5)
        env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_env_and_kwargs_pickle(env_id):
    spec = gym.spec(env_id)
    assert pickle.loads(pickle.dumps(spec.kwargs)) == spec.kwargs
    env = gym.make(pickle.loads(pickle.dumps(spec)), config=small(env_id))
    acts = _actions(env, env.unwrapped.config.query_budget)
    env.reset(seed=3)
    env.step(acts[0])
    clone = pickle.loads(pickle.dumps(env))  # mid-episode: the clone goes on where the env stands
    a_out = [env.step(a)[:2] for a in acts[1:]]
    b_out = [clone.step(a)[:2] for a in acts[1:]]
    if not spec.nondeterministic:
        assert all(_same_obs(x[0], y[0]) and x[1] == y[1] for x, y in zip(a_out, b_out))
    assert clone.unwrapped.config == env.unwrapped.config


def _factory(env_id: str, config: dict):
    def make():
        import gymnasium as gym

        import ie_env  # noqa: F401
        from ie_env.worlds import shared

        env = gym.make(env_id, config=config)
        env.unwrapped.build_counts = lambda: dict(shared.BUILDS)
        return env

    return make


@pytest.fixture(scope="module")
def forkserver():
    """Workers forked from a server that imported the package once (cheap, and no OpenMP pool
    inherited from this process)."""
    ctx = multiprocessing.get_context("forkserver")
    multiprocessing.set_forkserver_preload(["torch", "timm", "ie_env", "ie_env.env", "stable_baselines3"])
    return ctx


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_sync_vector_env_runs_and_shares_the_world(env_id):
    cfg = small(env_id)
    before = dict(shared.BUILDS)
    sync = gym.vector.SyncVectorEnv([_factory(env_id, cfg) for _ in range(3)])
    grown = {k: v - before.get(k, 0) for k, v in shared.BUILDS.items()}
    assert all(v <= 1 for v in grown.values()), grown  # three envs, at most one build of each array
    envs = [e.unwrapped for e in sync.envs]
    assert all(e.concept_embeddings is envs[0].concept_embeddings and e.world.latents is envs[0].world.latents for e in envs)
    assert not envs[0].world.latents.flags.writeable
    sync.reset(seed=0)
    sync.step(sync.action_space.sample())
    sync.close()


# Worker processes cost seconds each on a 2-core machine: one id per entry point and fidelity.
@pytest.mark.parametrize("env_id", ["InternetExplorerLatentRL-v0", "IELatent-Standard-v1", "IEPixels-Standard-v1"])
def test_process_vector_envs_run_and_build_the_world_once_per_worker(env_id, forkserver):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    cfg = small(env_id)
    asyn = gym.vector.AsyncVectorEnv([_factory(env_id, cfg) for _ in range(2)], context="forkserver")
    asyn.reset(seed=0)
    asyn.step(asyn.action_space.sample())
    for counts in asyn.call("build_counts"):
        assert counts and all(v <= 1 for v in counts.values()), counts
    asyn.close()

    sub = SubprocVecEnv([_factory(env_id, cfg) for _ in range(2)], start_method="forkserver")
    sub.seed(0)
    sub.reset()
    sub.step(np.array([sub.action_space.sample() for _ in range(2)]))
    for counts in sub.env_method("build_counts"):
        assert counts and all(v <= 1 for v in counts.values()), counts
    sub.close()
