"""Tests for the embedded world's procedural renderer."""

from __future__ import annotations

import numpy as np
import pytest

from ie_env.config import ConfigError, from_dict
from ie_env.worlds.render import RenderConfig, Renderer


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(RenderConfig())


def _latents(n: int, seed: int = 0, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_shape_dtype_and_not_blank(size: int) -> None:
    r = Renderer(RenderConfig(image_size=size))
    img = r.render(_latents(6), np.arange(6, dtype=np.int64))
    assert img.shape == (6, size, size, 3)
    assert img.dtype == np.uint8
    # Every image has an object on a background: real spatial variation, no saturation to one value.
    assert (img.reshape(6, -1, 3).std(axis=1).max(axis=1) > 10).all()
    assert r.render_one(_latents(1)[0], 3).shape == (size, size, 3)


def test_empty_batch(renderer: Renderer) -> None:
    out = renderer.render(np.zeros((0, 16), np.float32), np.zeros(0, np.int64))
    assert out.shape == (0, 32, 32, 3) and out.dtype == np.uint8


def test_deterministic_across_instances_and_calls(renderer: Renderer) -> None:
    lat, seeds = _latents(20, 1), np.arange(100, 120, dtype=np.uint64)
    a = renderer.render(lat, seeds)
    b = Renderer(RenderConfig()).render(lat, seeds)
    c = renderer.render(lat, seeds)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_batch_order_and_composition_independence() -> None:
    lat, seeds = _latents(300, 2), np.arange(300, dtype=np.int64) * 7919 + 5
    full = Renderer(RenderConfig(), chunk_size=128).render(lat, seeds)
    perm = np.random.default_rng(0).permutation(300)
    shuffled = Renderer(RenderConfig(), chunk_size=37).render(lat[perm], seeds[perm])
    assert np.array_equal(shuffled, full[perm])
    sub = Renderer(RenderConfig()).render(lat[[5, 250, 17]], seeds[[5, 250, 17]])
    assert np.array_equal(sub, full[[5, 250, 17]])
    one = Renderer(RenderConfig()).render_one(lat[123], int(seeds[123]))
    assert np.array_equal(one, full[123])


def test_int64_and_uint64_seeds_agree(renderer: Renderer) -> None:
    lat = _latents(3, 3)
    signed = np.array([1, 2**62, -5], dtype=np.int64)
    assert np.array_equal(renderer.render(lat, signed), renderer.render(lat, signed.view(np.uint64)))


def test_seed_changes_nuisance_only(renderer: Renderer) -> None:
    lat = np.repeat(_latents(1, 4), 2, axis=0)
    a, b = renderer.render(lat, np.array([1, 2], dtype=np.int64))
    assert not np.array_equal(a, b)


def test_latent_noise_changes_images(renderer: Renderer) -> None:
    rng = np.random.default_rng(5)
    lat = _latents(16, 5)
    seeds = np.arange(16, dtype=np.int64)
    noisy = (lat + 0.5 * rng.standard_normal(lat.shape)).astype(np.float32)
    a = renderer.render(lat, seeds).astype(np.int16)
    b = renderer.render(noisy, seeds).astype(np.int16)
    per_image = np.abs(a - b).reshape(16, -1).mean(axis=1)
    assert (per_image > 2.0).all()


def test_same_concept_closer_than_distinct_concepts(renderer: Renderer) -> None:
    rng = np.random.default_rng(6)
    concepts, per = 8, 12
    z = rng.standard_normal((concepts, 16))
    lat = (z[:, None, :] + 0.5 * rng.standard_normal((concepts, per, 16))).reshape(-1, 16)
    img = renderer.render(lat.astype(np.float32), np.arange(concepts * per, dtype=np.int64) + 1000)
    x = img.reshape(concepts * per, -1).astype(np.float32) / 255.0
    dist = np.abs(x[:, None, :] - x[None, :, :]).mean(axis=-1)
    label = np.repeat(np.arange(concepts), per)
    same = (label[:, None] == label[None, :]) & ~np.eye(len(label), dtype=bool)
    diff = label[:, None] != label[None, :]
    assert dist[same].mean() < 0.8 * dist[diff].mean()


def test_mean_colour_tracks_latent(renderer: Renderer) -> None:
    """Colours come from the latent, not the seed: same latent, many seeds -> stable mean colour."""
    lat = _latents(2, 7)
    seeds = np.arange(40, dtype=np.int64)
    means = [
        renderer.render(np.repeat(lat[i : i + 1], 40, 0), seeds).reshape(40, -1, 3).mean(1)
        for i in range(2)
    ]
    within = max(m.std(axis=0).mean() for m in means)
    between = np.abs(means[0].mean(0) - means[1].mean(0)).mean()
    assert between > 2 * within


def test_distractor_rate_matches_config() -> None:
    seeds = np.arange(4000, dtype=np.int64) * 31 + 11
    for prob in (0.0, 0.3, 1.0):
        rate = Renderer(RenderConfig(distractor_prob=prob)).has_distractor(seeds).mean()
        assert abs(rate - prob) < 0.03
    # The flag is what the pixels show: images differ from distractor-free ones exactly where flagged.
    lat, s = _latents(400, 8), seeds[:400]
    base = Renderer(RenderConfig(distractor_prob=0.0)).render(lat, s)
    r = Renderer(RenderConfig(distractor_prob=0.3))
    changed = (r.render(lat, s) != base).reshape(400, -1).any(axis=1)
    flagged = r.has_distractor(s)
    assert np.array_equal(changed & ~flagged, np.zeros(400, bool))
    assert changed[flagged].mean() > 0.95


def test_map_depends_on_config_seed() -> None:
    lat, seeds = _latents(4, 9), np.arange(4, dtype=np.int64)
    a = Renderer(RenderConfig(seed=0)).render(lat, seeds)
    b = Renderer(RenderConfig(seed=1)).render(lat, seeds)
    assert not np.array_equal(a, b)


def test_pixel_noise_zero_is_smooth() -> None:
    lat, seeds = _latents(4, 10), np.arange(4, dtype=np.int64)
    clean = Renderer(RenderConfig(pixel_noise=0.0)).render(lat, seeds).astype(np.float32)
    noisy = Renderer(RenderConfig(pixel_noise=0.1)).render(lat, seeds).astype(np.float32)
    # Neighbouring-pixel differences grow with pixel noise.
    tv = lambda im: np.abs(np.diff(im, axis=2)).mean()  # noqa: E731
    assert tv(noisy) > tv(clean) + 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 8},
        {"image_size": 1000},
        {"latent_dim": 0},
        {"distractor_prob": 1.5},
        {"distractor_prob": -0.1},
        {"pixel_noise": -0.01},
        {"pixel_noise": float("nan")},
        {"stripe_freq_min": 3.0, "stripe_freq_max": 1.0},
        {"scale_jitter": 0.95},
        {"seed": -1},
        {"image_size": 32.5},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RenderConfig(**kwargs)


def test_config_from_dict() -> None:
    cfg = from_dict(RenderConfig, {"image_size": 48, "distractor_prob": 0.5})
    assert cfg.image_size == 48 and cfg.distractor_prob == 0.5
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(RenderConfig, {"image_sise": 48})
    with pytest.raises(ValueError):
        from_dict(RenderConfig, {"distractor_prob": 2.0})


def test_bad_inputs_raise_clear_errors(renderer: Renderer) -> None:
    seeds = np.arange(3, dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        renderer.render(np.zeros((3, 8), np.float32), seeds)
    with pytest.raises(ValueError, match="shape"):
        renderer.render(np.zeros(16, np.float32), seeds[:1])
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(np.full((3, 16), np.nan, np.float32), seeds)
    with pytest.raises(ValueError, match="seeds"):
        renderer.render(np.zeros((3, 16), np.float32), seeds[:2])
    with pytest.raises(ValueError, match="integers"):
        renderer.render(np.zeros((3, 16), np.float32), np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="latent"):
        renderer.render_one(np.zeros(5, np.float32), 0)
    with pytest.raises(ValueError, match="seed"):
        renderer.render_one(np.zeros(16, np.float32), 1.5)
    with pytest.raises(ValueError):
        Renderer(RenderConfig(), chunk_size=0)
