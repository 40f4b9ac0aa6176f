"""SSL learner: augmentation, config, features, training, checkpoint round trip."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ie_env.config import ConfigError, from_dict
from ie_env.learner.augment import (
    MultiViewAugment,
    ViewSpec,
    color_jitter,
    crop_resize,
    eval_transform,
    gaussian_blur,
    random_view,
    sample_crop_boxes,
    to_tensor_batch,
)
from ie_env.learner.base import Learner
from ie_env.learner.ssl import SSLConfig, SSLLearner

TINY = {
    "backbone": "test_resnet",
    "batch_size": 16,
    "hidden_dim": 64,
    "proj_dim": 32,
    "dino_hidden_dim": 64,
    "device": "cpu",
}


def blobs(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Coloured discs on dark backgrounds: a small dataset SSL can make progress on."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        imgs[i] = r.integers(0, 60, 3)
        cx, cy = r.integers(size // 4, 3 * size // 4, 2)
        rad = r.integers(size // 8, size // 3)
        imgs[i][(yy - cy) ** 2 + (xx - cx) ** 2 < rad**2] = r.integers(0, 256, 3)
    return imgs


# ----------------------------------------------------------------------------- augmentation
def test_to_tensor_batch_validates():
    x = to_tensor_batch(np.zeros((2, 5, 7, 3), np.uint8))
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        to_tensor_batch(np.zeros((2, 5, 7, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_tensor_batch(np.zeros((5, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        to_tensor_batch(np.zeros((2, 5, 7, 4), np.uint8))
    with pytest.raises(TypeError):
        to_tensor_batch([[1, 2, 3]])


def test_crop_boxes_follow_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(500, 40, 48, (0.2, 1.0), (3 / 4, 4 / 3), g)
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert torch.equal(boxes, boxes.round())
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48).all() and (y2 <= 40).all()
    area = w * h / (40 * 48)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    # Impossible request (scale 1, ratio 2..3 on a square): the centre-crop fallback.
    fb = sample_crop_boxes(4, 30, 30, (1.0, 1.0), (2.0, 3.0), g)
    assert torch.equal(fb[:, 2] - fb[:, 0], torch.full((4,), 30.0, dtype=fb.dtype))
    assert torch.equal(fb[:, 3] - fb[:, 1], torch.full((4,), 15.0, dtype=fb.dtype))


@pytest.mark.parametrize("backend", ["roi_align", "torchvision"])
def test_full_box_crop_is_identity(backend):
    x = to_tensor_batch(blobs(3, 0))
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 3, dtype=torch.float64)
    out = crop_resize(x, boxes, 32, backend)
    assert out.dtype == torch.float32 and torch.allclose(out, x.float() / 255.0, atol=1e-6)


def test_crop_backends_agree_roughly():
    x = to_tensor_batch(blobs(4, 1, size=48))
    boxes = torch.tensor([[4.0, 2.0, 36.0, 42.0]] * 4, dtype=torch.float64)
    a, b = crop_resize(x, boxes, 32, "roi_align"), crop_resize(x, boxes, 32, "torchvision")
    assert a.shape == b.shape == (4, 3, 32, 32)
    assert (a - b).abs().mean() < 0.03
    with pytest.raises(ValueError):
        crop_resize(x, boxes, 32, "nope")  # type: ignore[arg-type]


def test_color_jitter_matches_torchvision_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    assert torch.allclose(color_jitter(x.clone(), torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)), x, atol=1e-6)
    f = torch.tensor([[1.2, 0.8, 1.3, 0.1]] * 2)
    ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, 1.2), 0.8), 1.3), 0.1)
    assert torch.allclose(color_jitter(x.clone(), f), ref, atol=1e-4)


def test_gaussian_blur_preserves_constants_and_smooths():
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 16, 16, generator=g)
    out = gaussian_blur(noise, torch.tensor([0.01, 2.0]))
    assert torch.allclose(out[0], noise[0], atol=1e-4)  # tiny sigma: identity
    assert out[1].std() < 0.5 * noise[1].std()  # large sigma: smoother


def test_views_shapes_dtypes_and_seed_determinism():
    x = to_tensor_batch(blobs(6, 2, size=48))
    spec = ViewSpec(32, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5, jitter=(0.4, 0.4, 0.2, 0.1))
    aug = MultiViewAugment([spec, ViewSpec(16, scale=(0.05, 0.4))])
    v1 = aug(x, torch.Generator().manual_seed(7))
    v2 = aug(x, torch.Generator().manual_seed(7))
    v3 = aug(x, torch.Generator().manual_seed(8))
    assert [tuple(v.shape) for v in v1] == [(6, 3, 32, 32), (6, 3, 16, 16)]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in v1)
    assert all(torch.equal(a, b) for a, b in zip(v1, v2))
    assert not torch.equal(v1[0], v3[0])
    g = torch.Generator().manual_seed(7)
    first, second = random_view(x, spec, g), random_view(x, spec, g)
    assert not torch.equal(first, second)  # the generator advances
    with pytest.raises(ValueError):
        ViewSpec(32, scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        random_view(x.float(), spec, g)


def test_eval_transform_resizes_and_centre_crops():
    x = to_tensor_batch(blobs(2, 3, size=64))
    out = eval_transform(x, 32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    rect = to_tensor_batch(np.zeros((1, 40, 64, 3), np.uint8))
    assert eval_transform(rect, 32).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- config
def test_config_validation_budget_and_paper_preset():
    cfg = from_dict(SSLConfig, {"objective": "dino", "blur_prob": [0.5, 0.1], "max_steps": 50})
    assert cfg.blur_prob == (0.5, 0.1) and cfg.max_steps == 50
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(SSLConfig, {"lr_typo": 1.0})
    with pytest.raises(ConfigError):
        from_dict(SSLConfig, {"objective": "simclr"})
    with pytest.raises(ConfigError, match="crop_min_scale"):
        SSLConfig(crop_min_scale=0.0)
    with pytest.raises(ConfigError, match="max_steps"):
        SSLConfig(min_steps=10, max_steps=5)
    c = SSLConfig(batch_size=128, epochs_per_iteration=2.0, min_steps=3, max_steps=40)
    assert c.planned_steps(1000) == math.ceil(2.0 * 1000 / 128)
    assert c.planned_steps(10) == 3  # ceil(2 * 10 / 10) = 2 -> min_steps
    assert c.planned_steps(100_000) == 40
    assert c.planned_steps(1) == 0
    p = SSLConfig.paper()
    assert (p.backbone, p.optimizer, p.batch_size, p.image_size) == ("resnet50", "lars", 224, 224)
    assert p.lr == pytest.approx(0.7) and p.momentum_ema == 0.9985 and p.epochs_per_iteration == 10.0
    assert p.crop_min_scale == 0.2


# ----------------------------------------------------------------------------- learner
def test_features_shape_norm_and_determinism():
    learner = SSLLearner(SSLConfig(**TINY))
    assert isinstance(learner, Learner)
    imgs = blobs(10, 4)
    f1, f2 = learner.features(imgs), learner.features(imgs)
    assert f1.shape == (10, learner.feature_dim) and f1.dtype == torch.float32 and f1.device.type == "cpu"
    assert torch.allclose(f1.norm(dim=1), torch.ones(10), atol=1e-5)
    assert torch.equal(f1, f2)
    assert learner.backbone.training  # features() restores the training flag
    # Another resolution is resized; batches of features agree with one-by-one features.
    assert learner.features(blobs(3, 5, size=48)).shape == (3, learner.feature_dim)
    one = torch.cat([learner.features(imgs[i : i + 1]) for i in range(3)])
    assert torch.allclose(one, f1[:3], atol=1e-5)
    assert learner.features(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, learner.feature_dim)
    frozen = imgs.copy()
    frozen.flags.writeable = False  # e.g. a memmap of the image store
    assert torch.equal(learner.features(frozen), f1)
    with pytest.raises(ValueError):
        learner.features(imgs.astype(np.float32))


def test_update_lowers_moco_loss_on_repeated_data():
    learner = SSLLearner(SSLConfig(**TINY, lr=3e-3, seed=0))
    imgs = blobs(32, 0)
    losses = [learner.update(imgs, steps=6)["loss"] for _ in range(6)]
    assert learner.train_steps_total == 36
    assert losses[-1] < losses[0] - 0.5
    assert all(np.isfinite(losses))


def test_update_budget_and_report():
    learner = SSLLearner(SSLConfig(**TINY, epochs_per_iteration=1.0, min_steps=1, max_steps=3))
    out = learner.update(blobs(40, 1))
    assert out["steps"] == 3.0 and out["batch_size"] == 16.0  # ceil(40/16)=3
    for key in ("loss", "loss_first", "loss_last", "images_per_second", "views_per_second", "lr", "momentum"):
        assert np.isfinite(out[key])
    assert out["views_per_second"] == pytest.approx(2 * out["images_per_second"])
    small = learner.update(blobs(5, 2))  # fewer images than the batch: batch = N
    assert small["batch_size"] == 5.0 and small["steps"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        learner.update(blobs(1, 3))
    with pytest.raises(ValueError):
        learner.update(blobs(4, 3).astype(np.int64))


def _run_and_compare(cfg: SSLConfig) -> None:
    imgs = blobs(24, 6)
    a = SSLLearner(cfg)
    a.update(imgs, steps=2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = SSLLearner(cfg, seed=cfg.seed + 1)  # different init and RNG: everything must come from state
    b.load_state_dict(state)
    assert b.train_steps_total == a.train_steps_total == 2
    ra, rb = a.update(imgs, steps=2), b.update(imgs, steps=2)
    assert ra["loss"] == rb["loss"] and ra["loss_first"] == rb["loss_first"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.features(imgs[:4]), b.features(imgs[:4]))


def test_state_round_trip_continues_bit_for_bit_moco():
    _run_and_compare(SSLConfig(**TINY, deterministic=True, seed=3))


def test_state_round_trip_continues_bit_for_bit_dino_lars():
    cfg = SSLConfig(
        **TINY,
        objective="dino",
        optimizer="lars",
        lr=0.1,
        dino_local_crops=2,
        grad_clip=3.0,
        dino_warmup_teacher_temp=0.02,
        dino_warmup_teacher_temp_steps=10,
        deterministic=True,
    )
    _run_and_compare(cfg)


def test_load_state_dict_rejects_foreign_state():
    learner = SSLLearner(SSLConfig(**TINY))
    with pytest.raises(ValueError, match="not an SSLLearner state"):
        learner.load_state_dict({"model": {}})
    state = learner.state_dict()
    state["config"] = dict(state["config"], backbone="resnet18")
    with pytest.raises(ValueError, match="backbone"):
        learner.load_state_dict(state)
    other = SSLLearner(SSLConfig(**dict(TINY, hidden_dim=32)))
    with pytest.raises(ValueError, match="does not fit"):
        other.load_state_dict(learner.state_dict())


def test_sgd_optimizer_and_dino_cosine_momentum():
    learner = SSLLearner(SSLConfig(**TINY, objective="dino", optimizer="sgd", lr=0.01, koleo_weight=0.0))
    out = learner.update(blobs(16, 7), steps=3)
    assert np.isfinite(out["loss"]) and out["koleo"] == 0.0
    assert out["momentum"] == pytest.approx(1.0)  # per-update cosine ends at 1
    groups = learner.optimizer.param_groups
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in groups[1]["params"])


def test_checkpoint_loading_and_unknown_backbone(tmp_path):
    src = SSLLearner(SSLConfig(**TINY, seed=11))
    moco_style = {"state_dict": {f"module.base_encoder.{k}": v for k, v in src.backbone.state_dict().items()}}
    moco_style["state_dict"]["module.base_encoder.fc.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "moco.pth"
    torch.save(moco_style, path)
    dst = SSLLearner(SSLConfig(**TINY, seed=12, checkpoint=str(path)))
    imgs = blobs(4, 8)
    assert torch.allclose(dst.features(imgs), src.features(imgs), atol=1e-6)
    torch.save(src.state_dict(), tmp_path / "learner.pt")  # a learner state works too
    again = SSLLearner(SSLConfig(**TINY, seed=13, checkpoint=str(tmp_path / "learner.pt")))
    assert torch.allclose(again.features(imgs), src.features(imgs), atol=1e-6)
    with pytest.raises(ConfigError, match="does not exist"):
        SSLLearner(SSLConfig(**TINY, checkpoint=str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        SSLLearner(SSLConfig(**TINY, checkpoint=str(tmp_path / "junk.pt")))
    with pytest.raises(ConfigError, match="unknown timm model"):
        SSLLearner(SSLConfig(**dict(TINY, backbone="no_such_model_xyz")))
