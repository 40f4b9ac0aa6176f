"""The latent fidelity's fast path computes the paper's rewards from latents, exactly as the slow one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ie_env.latent_fast as lf
from ie_env.env import InternetExplorerEnv
from ie_env.latent_fast import LatentScorer, segment_top_means, top_mean
from ie_env.learner.surrogate import WhiteningSurrogate
from ie_env.reward import image_rewards, query_reward
from tests.conftest import latent_config


def _reference(learner, targets, x, k):
    return image_rewards(learner.features(x), learner.features(targets), k).numpy()


@pytest.mark.parametrize("n,t,k", [(50, 100, 15), (7, 30, 15), (20, 10, 15), (1, 5, 1)])
def test_scorer_matches_reference_image_and_query_rewards(n, t, k):
    rng = np.random.default_rng(n + t)
    learner = WhiteningSurrogate(16)
    learner.update(rng.standard_normal((300, 16)) * rng.uniform(0.5, 2, 16) + 0.3)
    targets = rng.standard_normal((t, 16)).astype(np.float32)
    x = (targets[rng.integers(0, t, n)] + 0.5 * rng.standard_normal((n, 16))).astype(np.float32)
    scorer = LatentScorer.from_learner(learner, learner.features_np(targets), k)
    ref = _reference(learner, targets, x, k)
    got, q = scorer.score(x, 10)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    assert q == pytest.approx(query_reward(ref, 10), abs=2e-6)
    assert top_mean(got, 10) == pytest.approx(q, abs=1e-6)


def test_numpy_fallback_agrees_with_the_compiled_kernel(monkeypatch):
    rng = np.random.default_rng(5)
    learner = WhiteningSurrogate(16)
    targets = rng.standard_normal((100, 16)).astype(np.float32)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    scorer = LatentScorer.from_learner(learner, learner.features_np(targets), 15)
    fast, qf = scorer.score(x, 10)
    monkeypatch.setattr(lf, "HAVE_NUMBA", False)
    slow, qs = scorer.score(x, 10)
    np.testing.assert_allclose(fast, slow, atol=2e-6)
    assert qf == pytest.approx(qs, abs=2e-6)
    assert scorer.score(x[:0], 10)[1] == 0.0


def test_segment_top_means():
    v = np.array([1, 2, 3, 10, 20, 0.5], np.float32)
    assert segment_top_means(v, [3, 2, 1], 2) == pytest.approx([2.5, 15.0, 0.5])
    assert top_mean(np.zeros(0, np.float32), 3) == 0.0


def test_env_rewards_are_the_reference_computation_on_its_own_state():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=4)
    for a in [5, 77, 5, 1200, 9, 33, 2, 600]:
        _, r, _, _, info = env.step(a)
        imgs = env.cache[info["key"]]["images"]
        if not info["iteration_closed"]:  # scored under the encoder still in place
            ref = image_rewards(env.learner.features(imgs), env.target_feats, env.config.k).numpy()
            np.testing.assert_allclose(info["image_rewards"], ref, atol=2e-6)
            assert r == pytest.approx(query_reward(ref, env.config.top_images), abs=2e-6)


@pytest.mark.parametrize("reward,min_images,mode", [("gain", 10, "vocab"), ("query", 10, "vocab"), ("query", 30, "vocab"),
                                                    ("query", 10, "embedding")])
def test_minimal_info_changes_nothing_but_the_info(reward, min_images, mode):
    """``info_level=minimal`` takes the lean step (score, record and observation in one compiled call);
    everything but the info's extra fields is the general path's, bit for bit: repeats within an
    iteration, queries with too few images (``min_images`` 30 > 20 images), iteration closes, episodes."""
    actions = [3, 40, 3, 900, 41, 42, 7, 8, 100, 101, 5, 6, 3, 3, 77, 78]
    over = {"reward": reward, "min_images": min_images, "action_mode": mode, "iterations": 2}
    full = InternetExplorerEnv(latent_config(**over))
    lean = InternetExplorerEnv(latent_config(**over, info_level="minimal"))
    emb = full.action_mode.E
    for seed in (9, 10):
        of, _ = full.reset(seed=seed)
        ol, _ = lean.reset(seed=seed)
        assert np.array_equal(of, ol)
        for a in actions[: full.config.query_budget]:
            act = a if mode == "vocab" else emb[a] / np.abs(emb[a]).max()
            of, rf, _, tf, inf_f = full.step(act)
            ol, rl, _, tl, inf_l = lean.step(act)
            assert np.array_equal(of, ol) and rf == rl and tf == tl
            for key in ("action", "concept", "query_reward", "true_relevance", "hits", "new_images", "cached",
                        "iteration", "iteration_closed"):
                assert inf_f[key] == inf_l[key], key
            assert "image_rewards" in inf_f and "image_rewards" not in inf_l
            if min_images > 20:
                assert rl == 0.0 and inf_l["new_images"] == 0
        assert np.array_equal(full.history.rewards, lean.history.rewards)
        assert np.array_equal(full.history.last_reward, lean.history.last_reward)
        assert full.history.n_distinct == lean.history.n_distinct
    assert full.knn_history and not lean.knn_history
    assert np.array_equal(full.learner.W, lean.learner.W)
    assert np.array_equal(full.replay.images, lean.replay.images)
    assert np.array_equal(full.replay.rewards, lean.replay.rewards)


@pytest.mark.parametrize("mode", ["vocab", "slate"])
def test_new_finds_buffer_gives_the_concatenated_batch(mode):
    """The lean step writes an iteration's new finds into one buffer as they come (in the compiled call
    for context-only observations, with numpy for slates) and the close reads it; a buffer too small for
    them falls back to concatenating every query's images: the same update and replay either way."""
    actions = [3, 40, 3, 900, 41, 42, 7, 8, 100, 101, 5, 6]
    over = {"action_mode": mode, "info_level": "minimal"}
    buffered, small = (InternetExplorerEnv(latent_config(**over)) for _ in range(2))
    for seed in (9, 10):
        buffered.reset(seed=seed)
        small.reset(seed=seed)
        small._fresh_x = small._fresh_x[:20]  # room for one query's 20 images only
        fallback = []
        for a in actions:
            n_before = buffered._n_fresh
            ob, rb, _, _, info = buffered.step(a % buffered.action_space.n)
            os_, rs, _, _, _ = small.step(a % small.action_space.n)
            assert rb == rs
            assert np.array_equal(ob["context"], os_["context"]) if mode == "slate" else np.array_equal(ob, os_)
            if info["iteration_closed"]:
                assert buffered._n_fresh == 0 and buffered._fresh_ok and small._fresh_ok  # a fresh buffer
            else:
                assert buffered._fresh_ok and buffered._n_fresh == n_before + info["new_images"]
                fallback.append(not small._fresh_ok)
        assert any(fallback)  # the small buffer overflowed: those closes concatenated
        assert np.array_equal(buffered.learner.W, small.learner.W)
        assert np.array_equal(buffered.replay.images, small.replay.images)
        assert np.array_equal(buffered.replay.rewards, small.replay.rewards)
        assert np.array_equal(buffered.history.rewards, small.history.rewards)


def test_result_bank_is_shared_by_envs_on_an_equal_world_only():
    """Query results depend on the world's seed, config and vocabulary, not on its targets: envs on an
    equal world (a vector env's sub-envs, fresh-target envs) share one bank; another world has its own."""
    a = InternetExplorerEnv(latent_config())
    b = InternetExplorerEnv(latent_config(targets={"mode": "train"}))  # other targets each episode
    other = InternetExplorerEnv(latent_config(world={"fidelity": "latent", "seed": 123}))
    assert a._bank is b._bank and other._bank is not a._bank
    a.reset(seed=0)
    b.reset(seed=1)
    assert not np.array_equal(a.world.target_ids, b.world.target_ids)
    _, _, _, _, ia = a.step(31)
    _, _, _, _, ib = b.step(31)
    assert b.cache[ib["key"]]["images"] is a.cache[ia["key"]]["images"]  # served from the shared bank
    concepts, idx = b.world.search(31, 0, b.config.images_per_query)
    np.testing.assert_array_equal(b.cache[ib["key"]]["images"], b.world.images(concepts, idx))
    other.reset(seed=0)
    _, _, _, _, io = other.step(31)
    assert not np.array_equal(other.cache[io["key"]]["images"], a.cache[ia["key"]]["images"])


def test_result_bank_serves_identical_images_across_episodes_and_is_read_only():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    _, _, _, _, i1 = env.step(11)
    img1 = env.cache[i1["key"]]["images"]
    env.reset(seed=1)
    _, _, _, _, i2 = env.step(11)
    img2 = env.cache[i2["key"]]["images"]
    assert img1 is img2  # one bank entry per query, shared by episodes
    concepts, idx = env.world.search(11, 0, env.config.images_per_query)
    np.testing.assert_array_equal(img2, env.world.images(concepts, idx))
    with pytest.raises(ValueError):
        img2[0, 0] = 1.0
    assert env.counters["materialized_images"] == 2 * env.config.images_per_query  # counted per episode


def test_target_features_assigned_from_outside_rescore():
    """``experiments/target_only`` sets ``env.target_feats``; the scorer must follow it."""
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    env.target_feats = torch.from_numpy(env.learner.features_np(env.train_images[:20]))
    _, r, _, _, info = env.step(3)
    ref = image_rewards(env.learner.features(env.cache[info["key"]]["images"]), env.target_feats, env.config.k)
    np.testing.assert_allclose(info["image_rewards"], ref.numpy(), atol=2e-6)


def test_state_round_trip_resumes_the_same_trajectory():
    cfg = latent_config(action_mode="slate", actions={"embed_dim": 16, "slate_size": 6})
    a = InternetExplorerEnv(cfg)
    a.reset(seed=3)
    for i in range(4):
        a.step(i % 6)
    state = a.state_dict()
    b = InternetExplorerEnv(cfg)
    b.reset(seed=99)
    b.load_state_dict(state)
    assert np.array_equal(a._obs()["candidates"], b._obs()["candidates"])
    for i in range(4):
        oa, ra, *_ = a.step(i)
        ob, rb, *_ = b.step(i)
        assert ra == pytest.approx(rb, abs=1e-6)
        assert np.array_equal(oa["candidates"], ob["candidates"])


def test_iteration_and_episode_figures_follow_each_episodes_target():
    """The close's means and the episode summary (whose oracle figure is kept while the world's
    relevance array is the same) against direct computations, over episodes with fresh targets."""
    env = InternetExplorerEnv(latent_config(info_level="minimal", targets={"mode": "train"},
                                            world={"fidelity": "latent", "num_targets": 2}))
    oracles = set()
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        rel = env.world.relevance.copy()
        acts, rewards, t = [], [], 0
        rng = np.random.default_rng(seed)
        while True:
            a = int(rng.integers(env.action_space.n))
            _, r, _, trunc, info = env.step(a)
            acts.append(a)
            rewards.append(r)
            assert info["true_relevance"] == float(rel[a])
            if info["iteration_closed"]:
                stats = info["iteration_stats"]
                assert stats["mean_query_reward"] == pytest.approx(np.mean(rewards[t:]), rel=1e-12, abs=1e-15)
                assert stats["mean_true_relevance"] == pytest.approx(np.mean(rel[acts[t:]].astype(np.float64)), rel=1e-12)
                t = len(acts)
            if trunc:
                break
        summary = info["ie_episode"]
        n = len(acts)
        oracle = float(np.sort(rel)[-n:].mean())
        assert summary["oracle_relevance"] == pytest.approx(oracle, rel=1e-6)
        assert summary["mean_true_relevance"] == float(rel[np.array(acts)].mean())
        assert summary["mean_query_reward"] == float(np.array(rewards, np.float32).mean())
        oracles.add(summary["oracle_relevance"])
    assert len(oracles) == 3  # three targets, three oracle figures: none kept from an earlier episode


def test_array_mean_is_numpys_mean_bit_for_bit():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 7, 8, 9, 15, 16, 17, 127, 128, 129, 1000]:
        for dtype in (np.float32, np.float64):
            for _ in range(50):
                a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
                m = lf.array_mean(a)
                assert m == a.mean() and m.dtype == a.mean().dtype
