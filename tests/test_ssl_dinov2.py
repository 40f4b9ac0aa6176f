"""DINOv2's objective options: Sinkhorn-Knopp centering and iBOT's masked-patch loss (ViT backbones)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ie_env.config import ConfigError
from ie_env.learner.dino import DINO, DINOLoss
from ie_env.learner.ibot import ibot_patch_loss, num_patch_tokens, random_patch_masks, vit_tokens
from ie_env.learner.sinkhorn import sinkhorn_knopp
from ie_env.learner.ssl import SSLConfig, SSLLearner


def _tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4, depth=1, embed_dim=24,
        num_heads=2,
    )


# ----------------------------------------------------------------------------- Sinkhorn-Knopp
def test_sinkhorn_symmetric_case_by_hand():
    # exp(logits) = [[1, 2], [2, 1]] is already balanced: the result is each row normalised.
    q = sinkhorn_knopp(torch.tensor([[0.0, math.log(2)], [math.log(2), 0.0]]), temperature=1.0)
    assert torch.allclose(q, torch.tensor([[1 / 3, 2 / 3], [2 / 3, 1 / 3]]), atol=1e-6)


def test_sinkhorn_spreads_a_batch_that_prefers_one_prototype():
    # Both samples prefer prototype 0 (softmax 0.8 / 0.2); balanced assignments give each prototype
    # half of the batch: by hand, one iteration already yields 0.5 everywhere.
    logits = torch.tensor([[math.log(4), 0.0], [math.log(4), 0.0]])
    assert torch.allclose(torch.softmax(logits, dim=1)[:, 0], torch.tensor([0.8, 0.8]))
    assert torch.allclose(sinkhorn_knopp(logits, 1.0, iterations=1), torch.full((2, 2), 0.5), atol=1e-6)


def test_sinkhorn_rows_are_distributions_and_columns_balance():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g) * 3
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    q50 = sinkhorn_knopp(logits, temperature=0.5, iterations=200)
    assert torch.allclose(q50.sum(dim=0), torch.full((4,), 3.0), atol=1e-3)
    # The plain softmax is far from balanced on the same logits.
    assert (torch.softmax(logits / 0.5, dim=1).sum(dim=0) - 3.0).abs().max() > 0.5


def test_sinkhorn_is_invariant_to_a_constant_offset_and_rejects_bad_input():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    assert torch.allclose(sinkhorn_knopp(logits, 0.1), sinkhorn_knopp(logits + 100.0, 0.1), atol=1e-6)
    with pytest.raises(ValueError):
        sinkhorn_knopp(torch.zeros(3), 0.1)
    with pytest.raises(ValueError):
        sinkhorn_knopp(logits, 0.0)


def test_dino_loss_with_sinkhorn_centering_leaves_the_ema_center_alone():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(8, 6, generator=g), torch.randn(4, 6, generator=g)
    loss_fn = DINOLoss(6, centering="sinkhorn")
    loss = loss_fn(student, teacher, n_student=4, n_teacher=2)
    assert torch.isfinite(loss) and float(loss) > 0
    assert torch.equal(loss_fn.center, torch.zeros(1, 6))
    # By hand: the loss is the mean cross-entropy of the SK targets against the student.
    t = sinkhorn_knopp(teacher, 0.04).chunk(2)
    s = torch.log_softmax(student / 0.1, dim=-1).chunk(4)
    ref = np.mean([float(-(t[i] * s[j]).sum(-1).mean()) for i in range(2) for j in range(4) if i != j])
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(6, centering="median")


# ----------------------------------------------------------------------------- iBOT
def test_ibot_patch_loss_by_hand():
    # Image 0: two masked patches; image 1: none; image 2: one. Student temperature 1.
    s = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    idx = torch.tensor([0, 0, 2])
    a, b = -math.log(0.75), -math.log(0.25)
    expected = ((a + b) / 2 + math.log(2)) / 2
    assert float(ibot_patch_loss(s, t, idx, n_images=3, student_temp=1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(ibot_patch_loss(s[:0], t[:0], idx[:0], n_images=3)) == 0.0
    with pytest.raises(ValueError):
        ibot_patch_loss(s, t[:2], idx, n_images=3)


def test_random_patch_masks_counts_and_determinism():
    torch.manual_seed(3)
    m = random_patch_masks(4, 10, ratio=(0.1, 0.5), prob=0.5)
    assert m.shape == (4, 10) and m.dtype == torch.bool
    assert m.sum(dim=1).tolist() == [1, 3, 0, 0]  # ratios 0.1 and 0.3 for the two masked images
    torch.manual_seed(3)
    assert torch.equal(m, random_patch_masks(4, 10, ratio=(0.1, 0.5), prob=0.5))
    with pytest.raises(ValueError):
        random_patch_masks(4, 10, ratio=(0.6, 0.5))


def test_vit_tokens_match_the_model_and_masking_hides_content():
    vit = _tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pooled, patches = vit_tokens(vit, x)
    assert torch.allclose(pooled, vit(x), atol=1e-6)
    n = num_patch_tokens(vit, 16, 16)
    assert n == 16 and patches.shape == (2, 16, 24)
    token = torch.randn(1, 24)
    all_masked = torch.ones(2, n, dtype=torch.bool)
    _, p_masked = vit_tokens(vit, x, all_masked, token)
    _, p_other = vit_tokens(vit, torch.randn(2, 3, 16, 16), all_masked, token)
    assert torch.allclose(p_masked, p_other, atol=1e-5)  # nothing of the image is left
    with pytest.raises(ValueError, match="Vision Transformer"):
        vit_tokens(torch.nn.Linear(3, 3), x)


def test_dino_with_ibot_trains_the_mask_token():
    model = DINO(_tiny_vit(), 24, out_dim=32, hidden_dim=16, bottleneck_dim=8, ibot_weight=1.0, ibot_mask_prob=1.0)
    torch.manual_seed(0)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    loss, logs = model(views)
    assert set(logs) == {"dino", "koleo", "ibot"} and float(logs["ibot"]) > 0
    assert float(loss.detach()) == pytest.approx(float(logs["dino"] + logs["koleo"] + logs["ibot"]), rel=1e-5)
    loss.backward()
    assert model.mask_token.grad is not None and float(model.mask_token.grad.abs().sum()) > 0
    assert float(model.ibot_loss.center.abs().sum()) > 0  # EMA centering of the patch targets moved
    with pytest.raises(ValueError, match="Vision Transformer"):
        DINO(torch.nn.Linear(3, 3), 3, out_dim=8, ibot_weight=1.0)


TINY_VIT_SSL = {
    "objective": "dino",
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 24, "num_heads": 2},
    "image_size": 16,
    "batch_size": 8,
    "dino_hidden_dim": 16,
    "dino_bottleneck_dim": 8,
    "dino_out_dim": 32,
    "dino_centering": "sinkhorn",
    "ibot_weight": 1.0,
    "device": "cpu",
    "seed": 0,
}


def test_ssl_learner_dino_ibot_sinkhorn_is_deterministic():
    images = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    a, b = SSLLearner(SSLConfig(**TINY_VIT_SSL)), SSLLearner(SSLConfig(**TINY_VIT_SSL))
    la, lb = a.update(images, steps=2), b.update(images, steps=2)
    assert la["loss"] == lb["loss"] and np.isfinite(la["ibot"])
    assert torch.equal(a.features(images[:4]), b.features(images[:4]))


def test_ibot_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="Vision Transformer"):
        SSLLearner(SSLConfig(objective="dino", backbone="resnet18", ibot_weight=1.0, device="cpu"))
    with pytest.raises(ConfigError, match="objective 'dino'"):
        SSLConfig(objective="mocov3", ibot_weight=1.0)
    with pytest.raises(ConfigError, match="dino_centering"):
        SSLConfig(objective="dino", dino_centering="median")


def test_pixels_episode_with_dino_ibot_on_a_tiny_vit_completes():
    import gymnasium as gym

    import ie_env  # noqa: F401
    from tests.conftest import pixel_config

    ssl = {**TINY_VIT_SSL, "image_size": 32, "backbone_kwargs": {**TINY_VIT_SSL["backbone_kwargs"], "patch_size": 8}}
    ssl.update({"max_steps": 2, "min_steps": 1, "deterministic": True, "batch_size": 16})
    env = gym.make("InternetExplorer-v0", config=pixel_config(ssl=ssl))
    env.reset(seed=0)
    done, stats = False, []
    while not done:
        _, r, term, trunc, info = env.step(env.action_space.sample())
        assert np.isfinite(r)
        if "iteration_stats" in info:
            stats.append(info["iteration_stats"])
        done = term or trunc
    assert len(stats) == 2
    env.close()
