"""Fresh hidden targets per reset: disjoint train / held-out splits (DESIGN §7)."""

from __future__ import annotations

import numpy as np
import pytest

from ie_env.config import ConfigError
from ie_env.env import InternetExplorerEnv
from ie_env.target_sampling import TargetSampler, TargetSamplingConfig
from ie_env.worlds.embedded import load_vocabulary
from tests.conftest import latent_config


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary("embedded")


def test_heldout_themes_and_concepts_are_disjoint_from_training(vocab):
    s = TargetSampler(vocab, 10, TargetSamplingConfig(split_seed=3))
    assert s.train_themes and s.heldout_themes
    assert not set(s.train_themes) & set(s.heldout_themes)
    train, held = s.split_concepts("train"), s.split_concepts("heldout")
    assert len(np.intersect1d(train, held)) == 0
    rng = np.random.default_rng(0)
    for _ in range(50):
        theme, ids = s.sample("train", rng)
        assert theme in s.train_themes and np.isin(ids, train).all() and len(set(ids)) == 10
        assert all(vocab[int(i)].theme == theme for i in ids)
        theme, ids = s.sample("heldout", rng)
        assert theme in s.heldout_themes and np.isin(ids, held).all()


def test_split_is_a_function_of_its_seed(vocab):
    a = TargetSampler(vocab, 10, TargetSamplingConfig(split_seed=1))
    b = TargetSampler(vocab, 10, TargetSamplingConfig(split_seed=1))
    c = TargetSampler(vocab, 10, TargetSamplingConfig(split_seed=2))
    assert a.heldout_themes == b.heldout_themes
    assert a.heldout_themes != c.heldout_themes
    n_themes = len(vocab.themes)
    assert len(a.heldout_themes) == round(0.25 * n_themes)


def test_explicit_heldout_themes_and_bad_config(vocab):
    s = TargetSampler(vocab, 10, TargetSamplingConfig(heldout_themes=["bird", "fish"]))
    assert s.heldout_themes == ["bird", "fish"] and "bird" not in s.train_themes
    with pytest.raises(ConfigError, match="unknown themes"):
        TargetSampler(vocab, 10, TargetSamplingConfig(heldout_themes=["unicorn"]))
    with pytest.raises(ConfigError, match="mode"):
        TargetSamplingConfig(mode="sometimes").validate()
    with pytest.raises(ConfigError, match="at least"):
        TargetSampler(vocab, 10_000, TargetSamplingConfig())


def test_env_draws_a_fresh_training_target_each_reset_and_hides_it():
    env = InternetExplorerEnv(latent_config(targets={"mode": "train"}))
    held = set(env.target_sampler.split_concepts("heldout").tolist())
    seen, obs0 = set(), []
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        ids = tuple(env.world.target_ids.tolist())
        seen.add(ids)
        assert not set(ids) & held
        assert info["target_theme"] in env.target_sampler.train_themes
        g = env.ground_truth_relevance()
        assert np.all(g[list(ids)] == 1.0)
        obs0.append(obs)
    assert len(seen) >= 5  # fresh targets
    # Before any query the observation is the same whatever the target: nothing about it leaks.
    assert all(np.array_equal(o, obs0[0]) for o in obs0)
    # Same reset seed, same target.
    env.reset(seed=2)
    a = env.world.target_ids.copy()
    env.reset(seed=2)
    assert np.array_equal(a, env.world.target_ids)


def test_env_heldout_mode_draws_only_heldout_targets():
    env = InternetExplorerEnv(latent_config(targets={"mode": "heldout"}))
    held = env.target_sampler.split_concepts("heldout")
    for seed in range(4):
        env.reset(seed=seed)
        assert np.isin(env.world.target_ids, held).all()
        assert env.target_theme in env.target_sampler.heldout_themes


def test_fixed_mode_keeps_the_configured_target():
    env = InternetExplorerEnv(latent_config())
    env.reset(seed=0)
    a = env.world.target_ids.copy()
    env.reset(seed=1)
    assert np.array_equal(a, env.world.target_ids)
    assert env.target_sampler is None
