"""The native vector env (``gymnasium.make_vec``'s default for every id) returns what Gymnasium's
``SyncVectorEnv`` returns for the same seeds and actions, bit for bit, autoresets included."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import ie_env
from ie_env import suite
from ie_env.env import InternetExplorerEnv
from ie_env.vector import InternetExplorerVectorEnv
from tests.conftest import latent_config
from tests.test_gym_conventions import small

LATENT_IDS = [i for i in sorted(ie_env.ENV_IDS) + sorted(suite.TASKS) if not gym.spec(i).nondeterministic]
PIXEL_IDS = [i for i in sorted(ie_env.ENV_IDS) + sorted(suite.TASKS) if gym.spec(i).nondeterministic]


def assert_same(a, b, path="") -> None:
    """Equal values, dtypes and nesting (NaN equals NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, (path, getattr(b, "dtype", type(b)), a.dtype)
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (path, a, b)


def _pair(env_id: str, n: int, cfg: dict):
    native = gym.make_vec(env_id, num_envs=n, config=cfg)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", config=cfg)
    return native, sync


@pytest.mark.parametrize("env_id", LATENT_IDS)
def test_native_vector_env_equals_sync_vector_env(env_id):
    cfg = small(env_id)  # 2 iterations x 3 queries: several autoresets in 20 steps
    native, sync = _pair(env_id, 3, cfg)
    assert isinstance(native, InternetExplorerVectorEnv) and isinstance(sync, gym.vector.SyncVectorEnv)
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"]
    assert_same(native.reset(seed=5), sync.reset(seed=5))
    native.action_space.seed(1)
    for step in range(20):
        action = native.action_space.sample()
        got, want = native.step(action), sync.step(action)
        assert_same(got, want, f"step {step}")
    assert native.get_attr("steps") == sync.get_attr("steps")
    # unseeded resets continue each sub-env's own stream, as single envs do
    assert_same(native.reset(), sync.reset())
    native.close()
    sync.close()


@pytest.mark.parametrize("env_id", PIXEL_IDS)
def test_native_vector_env_runs_pixels_ids(env_id):
    native = gym.make_vec(env_id, num_envs=2, config=small(env_id))
    obs, _ = native.reset(seed=0)
    assert native.observation_space.contains(obs)
    obs, r, term, trunc, info = native.step(native.action_space.sample())
    assert native.observation_space.contains(obs) and r.shape == (2,) and np.all(np.isfinite(r))
    assert info["_true_relevance"].all() and info["true_relevance"].shape == (2,)
    native.close()


def test_reset_mask_masks_and_calls():
    cfg = latent_config(info_level="minimal", evaluate=False, mask_queried=True)
    native, sync = _pair("InternetExplorerLatent-v0", 3, cfg)
    assert_same(native.reset(seed=0), sync.reset(seed=0))
    for a in ([1, 2, 3], [4, 5, 6]):
        assert_same(native.step(np.array(a)), sync.step(np.array(a)))
    mask = np.array([False, True, False])
    assert_same(native.reset(seed=[None, 9, None], options={"reset_mask": mask}),
                sync.reset(seed=[None, 9, None], options={"reset_mask": mask}))
    assert_same(native.step(np.array([7, 8, 9])), sync.step(np.array([7, 8, 9])))
    masks = native.action_masks()
    assert masks.shape == (3, native.single_action_space.n)
    assert not masks[0, [1, 4, 7]].any() and masks[1, 1]  # env 1 was reset: only concept 8 is queried
    np.testing.assert_array_equal(masks, np.stack(sync.call("action_masks")))
    assert native.call("action_masks")[2].shape == (native.single_action_space.n,)
    native.set_attr("tag", [1, 2, 3])
    assert native.get_attr("tag") == (1, 2, 3)
    with pytest.raises(ValueError, match="reset_mask"):
        native.reset(options={"reset_mask": np.zeros(3, bool)})
    with pytest.raises(ValueError, match="length must match"):
        native.reset(seed=[1, 2])


def test_observations_are_copies_unless_asked():
    cfg = latent_config(info_level="minimal", evaluate=False)
    native = gym.make_vec("InternetExplorerLatent-v0", num_envs=2, config=cfg)
    first, _ = native.reset(seed=0)
    kept = first.copy()
    native.step(np.array([1, 2]))
    np.testing.assert_array_equal(first, kept)  # the batch was not written through
    shared = gym.make_vec("InternetExplorerLatent-v0", num_envs=2, config=cfg, copy=False)
    obs, _ = shared.reset(seed=0)
    obs2, *_ = shared.step(np.array([1, 2]))
    assert obs is obs2


def test_sub_envs_must_share_spaces():
    a = InternetExplorerEnv(latent_config())
    b = InternetExplorerEnv(latent_config(history=2))
    with pytest.raises(ValueError, match="same observation and action spaces"):
        InternetExplorerVectorEnv([a, b])
    with pytest.raises(ValueError, match="at least one"):
        InternetExplorerVectorEnv([])
