"""Action modes: vocab / embedding / slate, their observations and the nearest-concept index."""

from __future__ import annotations

import numpy as np
import pytest

from ie_env.actions import (
    CANDIDATE_FEATURES,
    ActionConfig,
    EpisodeHistory,
    NearestConceptIndex,
    make_action_mode,
    project_embeddings,
)
from ie_env.config import ConfigError
from ie_env.env import InternetExplorerEnv
from tests.conftest import latent_config


@pytest.fixture(scope="module")
def emb():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, 24)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_vocab_observation_layout_is_last_history_and_budget(emb):
    mode = make_action_mode("vocab", ActionConfig(), emb, history_len=3, budget=10)
    h = EpisodeHistory(len(emb), 10)
    assert mode.observation_space.shape == (25 * 4 + 1,)
    obs = mode.observation(h)
    assert np.count_nonzero(obs[:-1]) == 0 and obs[-1] == 1.0
    for a, r in [(5, 0.1), (7, 0.2), (9, 0.3), (11, 0.4)]:
        h.record(a, r)
        obs = mode.observation(h)
        # A fresh build from the history agrees with the incremental one.
        fresh = make_action_mode("vocab", ActionConfig(), emb, 3, 10).observation(h)
        assert np.array_equal(obs, fresh)
    blocks = obs[:-1].reshape(4, 25)
    assert np.array_equal(blocks[0, :24], emb[11]) and blocks[0, 24] == pytest.approx(0.4)
    assert [b[24] for b in blocks[1:]] == pytest.approx([0.4, 0.3, 0.2])  # newest first
    assert np.array_equal(blocks[3, :24], emb[7])
    assert obs[-1] == pytest.approx(0.6)


def test_vocab_masks_forbid_repeats_only_when_asked(emb):
    h = EpisodeHistory(len(emb), 10)
    h.record(3, 0.5)
    assert make_action_mode("vocab", ActionConfig(), emb, 2, 10).action_masks(h).all()
    m = make_action_mode("vocab", ActionConfig(), emb, 2, 10, mask_queried=True).action_masks(h)
    assert not m[3] and m.sum() == len(emb) - 1


def test_projection_is_deterministic_unit_and_keeps_neighbours(emb):
    p1, p2 = project_embeddings(emb, 8), project_embeddings(emb.copy(), 8)
    assert p1.shape == (300, 8) and np.allclose(np.linalg.norm(p1, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(p1, p2)
    assert project_embeddings(emb, 0) is not None and project_embeddings(emb, 0).shape == emb.shape


def test_nearest_index_maps_a_concept_vector_to_itself_and_skips_queried(emb):
    idx = NearestConceptIndex(emb, "numpy")
    assert idx.nearest(emb[42]) == 42
    ex = np.zeros(len(emb), bool)
    ex[42] = True
    second = idx.nearest(emb[42], ex)
    sims = emb @ emb[42]
    sims[42] = -np.inf
    assert second == int(sims.argmax())
    assert idx.nearest(emb[42], np.ones(len(emb), bool)) == 42  # nothing left: ignore the mask


def test_faiss_backend_agrees_with_brute_force(emb):
    pytest.importorskip("faiss")
    a, b = NearestConceptIndex(emb, "numpy"), NearestConceptIndex(emb, "faiss")
    assert b.backend == "faiss"
    rng = np.random.default_rng(1)
    ex = rng.random(len(emb)) < 0.3
    for q in rng.uniform(-1, 1, (20, emb.shape[1])).astype(np.float32):
        assert a.nearest(q) == b.nearest(q)
        assert a.nearest(q, ex) == b.nearest(q, ex)


def test_embedding_mode_maps_proto_actions_to_unqueried_concepts(emb):
    mode = make_action_mode("embedding", ActionConfig(embed_dim=8), emb, 2, 10)
    assert mode.action_space.shape == (8,)
    h = EpisodeHistory(len(emb), 10)
    c = mode.to_concept(mode.E[17], h)
    assert c == 17
    h.record(17, 0.3)
    assert mode.to_concept(mode.E[17], h) != 17
    with pytest.raises(ValueError, match="finite"):
        mode.to_concept(np.full(8, np.nan), h)
    with pytest.raises(ValueError, match="8 finite"):
        mode.to_concept(np.zeros(3), h)


def test_slate_proposes_neighbours_of_good_concepts_and_random_ones(emb):
    cfg = ActionConfig(slate_size=8, slate_neighbor_share=0.5, slate_seeds=1, slate_neighbors=6)
    mode = make_action_mode("slate", cfg, emb, 2, 20)
    mode.reset(np.random.default_rng(0))
    h = EpisodeHistory(len(emb), 20)
    obs = mode.observation(h)
    assert set(obs) == {"context", "candidates"}
    assert obs["candidates"].shape == (8, 24 + len(CANDIDATE_FEATURES))
    assert mode.observation_space.contains(obs)
    assert not mode.from_neighbors.any()  # nothing known yet: all random
    h.record(10, 0.9)
    h.record(20, -0.2)
    obs = mode.observation(h)
    cands = mode.candidates
    assert len(set(cands.tolist())) == 8 and not np.isin(cands, [10, 20]).any()
    nb = cands[mode.from_neighbors]
    assert len(nb) == 4 and np.isin(nb, mode.neighbors[10]).all()  # the best concept's neighbours
    feats = obs["candidates"]
    d = 24
    # Candidates next to the good concept carry its reward as what is known about them.
    assert np.all(feats[mode.from_neighbors, d + 3] == pytest.approx(0.9))
    assert np.array_equal(feats[:, d + 5], mode.from_neighbors.astype(np.float32))
    assert mode.to_concept(3, h) == cands[3]
    with pytest.raises(ValueError, match="outside"):
        mode.to_concept(8, h)
    assert mode.action_masks(h).shape == (8,)


def _features_from_scratch(mode, h: EpisodeHistory) -> np.ndarray:
    """The candidate features of ``mode``'s current slate, with E[queried] gathered anew."""
    d, t, c = mode.d, h.t, mode.candidates
    out = np.zeros((mode.K, mode.cand_dim), np.float32)
    out[:, :d], out[:, d], out[:, d + 1] = mode.E[c], h.last_reward[c], h.queried[c]
    if t:
        sims = mode.E[c] @ mode.E[h.actions[:t]].T
        best = sims.argmax(axis=1)
        out[:, d + 2] = sims[np.arange(mode.K), best]
        out[:, d + 3] = h.rewards[:t][best]
        w = np.exp((sims - 1.0) / mode.cfg.kernel_width)
        out[:, d + 4] = (w @ h.rewards[:t]) / (w.sum(axis=1) + 1e-6)
        out[:, d + 6] = 4.0 * (out[:, d + 4] - h.rewards[:t].mean())
        out[:, d + 7] = 4.0 * (out[:, d + 3] - h.rewards[:t].mean())
    out[:, d + 5] = mode.from_neighbors
    return np.clip(out, -1.0, 1.0)


def test_slate_features_kept_between_steps_equal_a_fresh_computation(emb):
    # The slate keeps E[queried] between steps; a new history, a shorter one and one that ran past its
    # budget (shifted in place) must each give the features computed from scratch, bit for bit.
    mode = make_action_mode("slate", ActionConfig(slate_size=6), emb, 2, 5)
    mode.reset(np.random.default_rng(3))
    rng = np.random.default_rng(4)
    for h in (EpisodeHistory(len(emb), 5), EpisodeHistory(len(emb), 5)):
        for _ in range(8):  # 3 records past the budget of 5
            obs = mode.observation(h)
            np.testing.assert_array_equal(obs["candidates"], _features_from_scratch(mode, h))
            h.record(int(mode.candidates[rng.integers(mode.K)]), float(rng.uniform(-1, 1)))
    short = EpisodeHistory(len(emb), 5)
    short.record(7, 0.5)
    obs = mode.observation(short)
    np.testing.assert_array_equal(obs["candidates"], _features_from_scratch(mode, short))


def test_slate_size_must_fit_and_unknown_mode_is_refused(emb):
    with pytest.raises(ConfigError, match="slate_size"):
        make_action_mode("slate", ActionConfig(slate_size=1000), emb, 2, 10)
    with pytest.raises(ConfigError, match="valid: vocab, embedding, slate"):
        make_action_mode("grid", ActionConfig(), emb, 2, 10)
    with pytest.raises(ConfigError, match="slate_neighbor_share"):
        ActionConfig(slate_neighbor_share=2.0).validate()


@pytest.mark.parametrize("mode", ["vocab", "embedding", "slate"])
def test_env_modes_step_to_concepts_and_never_show_the_vocabulary(mode):
    env = InternetExplorerEnv(latent_config(action_mode=mode, actions={"embed_dim": 16, "slate_size": 6}))
    obs, _ = env.reset(seed=0)
    n, d = env.concept_embeddings.shape
    size = sum(np.prod(s.shape) for s in env.observation_space.values()) if mode == "slate" else obs.size
    assert size < n  # the N x d vocabulary is an attribute, not an observation
    env.action_space.seed(0)
    for _ in range(5):
        a = env.action_space.sample()
        expected = env.action_mode.to_concept(a, env.history)
        obs, r, term, trunc, info = env.step(a)
        assert info["action"] == expected and env.history.actions[env.history.t - 1] == expected
        assert env.observation_space.contains(obs)


def test_observation_depends_on_rewards_not_on_the_target_identity():
    """Two targets, same queries: the observation differs only in the reward entries."""
    a = InternetExplorerEnv(latent_config(world={"fidelity": "latent", "target_theme": "bird"}))
    b = InternetExplorerEnv(latent_config(world={"fidelity": "latent", "target_theme": "fish"}))
    a.reset(seed=0)
    b.reset(seed=0)
    for act in (3, 99, 512):
        oa, *_ = a.step(act)
        ob, *_ = b.step(act)
    d = a.concept_embeddings.shape[1]
    blocks_a, blocks_b = oa[:-1].reshape(-1, d + 1), ob[:-1].reshape(-1, d + 1)
    assert np.array_equal(blocks_a[:, :d], blocks_b[:, :d])
    assert not np.array_equal(blocks_a[:, d], blocks_b[:, d])
