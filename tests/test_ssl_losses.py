"""SSL building blocks: MoCo-v3 loss and EMA, LARS, KoLeo, DINO loss/centering/head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ie_env.learner.dino import DINO, DINOHead, DINOLoss, auto_out_dim, cosine_momentum
from ie_env.learner.koleo import KoLeoLoss, koleo_loss
from ie_env.learner.lars import LARS
from ie_env.learner.moco import MoCoV3, build_mlp, contrastive_loss, ema_update, symmetric_loss


# ----------------------------------------------------------------------------- MoCo-v3
def test_contrastive_loss_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = I / T with T = 1: CE per row = log(1 + e^-1); MoCo-v3 scales by 2T = 2.
    expected = 2.0 * math.log(1.0 + math.exp(-1.0))
    assert contrastive_loss(q, q.clone(), 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 0.5: logits = 2 I; CE = log(1 + e^-2); scale 2T = 1.
    assert contrastive_loss(q * 3.0, q, 0.5).item() == pytest.approx(math.log(1.0 + math.exp(-2.0)), rel=1e-6)


def test_contrastive_loss_prefers_matching_pairs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(32, 16, generator=g)
    k_match = q + 0.1 * torch.randn(32, 16, generator=g)
    k_shuffled = k_match[torch.randperm(32, generator=g)]
    assert contrastive_loss(q, k_match, 0.2) < contrastive_loss(q, k_shuffled, 0.2) - 1.0


def test_symmetric_loss_is_sum_of_both_directions():
    g = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.randn(8, 4, generator=g) for _ in range(4))
    total = symmetric_loss(q1, q2, k1, k2, 0.2)
    assert total.item() == pytest.approx((contrastive_loss(q1, k2, 0.2) + contrastive_loss(q2, k1, 0.2)).item())


def test_contrastive_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        contrastive_loss(torch.zeros(4, 3), torch.zeros(5, 3), 0.2)


def test_build_mlp_follows_moco_v3():
    mlp = build_mlp(3, 8, 16, 4, last_bn=True)
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    assert all(m.bias is None for m in linears)
    assert isinstance(mlp[-1], nn.BatchNorm1d) and not mlp[-1].affine
    pred = build_mlp(2, 4, 16, 4, last_bn=False)
    assert isinstance(pred[-1], nn.Linear)


def test_ema_update_maths():
    torch.manual_seed(0)
    src, tgt = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in tgt.parameters()]
    s0 = [p.detach().clone() for p in src.parameters()]
    ema_update(tgt, src, 0.9)
    for p, a, b in zip(tgt.parameters(), t0, s0):
        assert torch.allclose(p, 0.9 * a + 0.1 * b, atol=1e-7)
    before = [p.detach().clone() for p in tgt.parameters()]
    ema_update(tgt, src, 1.0)
    assert all(torch.equal(p, b) for p, b in zip(tgt.parameters(), before))
    ema_update(tgt, src, 0.0)
    assert all(torch.equal(p, b) for p, b in zip(tgt.parameters(), s0))
    with pytest.raises(ValueError):
        ema_update(tgt, src, 1.5)


def _tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_moco_v3_gradients_and_momentum_branch():
    torch.manual_seed(0)
    model = MoCoV3(_tiny_backbone(), 4, hidden_dim=8, proj_dim=6, temperature=0.2)
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    loss, _ = model([x1, x2])
    loss.backward()
    assert all(p.grad is None for p in model.momentum_parameters())
    assert all(p.grad is not None for _, p in model.online_parameters())
    names = [n for n, _ in model.online_parameters()]
    assert any(n.startswith("predictor.") for n in names) and not any(n.startswith("momentum_") for n in names)
    # Momentum branch starts as a copy; after an optimiser step + EMA it sits between old and new.
    old = [p.detach().clone() for p in model.momentum_backbone.parameters()]
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    model.momentum_update(0.75)
    for p, o in zip(model.momentum_backbone.parameters(), old):
        assert torch.allclose(p, o + 0.25, atol=1e-6)
    with pytest.raises(ValueError):
        model([x1])


# ----------------------------------------------------------------------------- LARS
def test_lars_step_maths():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.5, trust_coefficient=0.001)
    gw, gb = torch.tensor([[0.0, 1.0]]), torch.tensor([0.5, 0.5])
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    u = gw + 0.5 * torch.tensor([[3.0, 4.0]])  # [[1.5, 3.0]]
    u = u * (0.001 * 5.0 / u.norm())
    assert torch.allclose(w, torch.tensor([[3.0, 4.0]]) - 0.1 * u, atol=1e-7)
    # The bias is excluded: no weight decay, no trust ratio, plain momentum SGD.
    assert torch.allclose(b, torch.tensor([1.0, -1.0]) - 0.1 * gb, atol=1e-7)
    # Second step: momentum buffer mu = 0.9 mu + u'.
    w_prev, b_prev = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = gw.clone(), gb.clone()
    opt.step()
    assert torch.allclose(b, b_prev - 0.1 * (0.9 * gb + gb), atol=1e-7)
    u2 = gw + 0.5 * w_prev
    u2 = u2 * (0.001 * w_prev.norm() / u2.norm())
    assert torch.allclose(w, w_prev - 0.1 * (0.9 * u + u2), atol=1e-6)


def test_lars_zero_weight_uses_unit_ratio_and_group_exclude():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(w, -torch.ones(2, 2))  # ||w|| = 0: ratio 1
    v = nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [v], "exclude": True}], lr=1.0, momentum=0.0, weight_decay=10.0)
    v.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(v, torch.zeros(2, 2))  # excluded group: no decay, no adaptation
    with pytest.raises(ValueError):
        LARS([v], lr=-1.0)


# ----------------------------------------------------------------------------- KoLeo
def test_koleo_known_configuration():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # Every nearest neighbour sits at distance sqrt(2) on the unit circle.
    assert koleo_loss(square).item() == pytest.approx(-math.log(math.sqrt(2.0)), abs=1e-5)
    # Scale does not matter (rows are normalised); crowding raises the loss.
    assert koleo_loss(5 * square).item() == pytest.approx(koleo_loss(square).item(), abs=1e-6)
    crowded = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [0.0, -1.0]])
    assert koleo_loss(crowded) > koleo_loss(square) + 1.0


def test_koleo_module_weight_chunks_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, requires_grad=True)
    mod = KoLeoLoss(weight=0.1, chunks=2)
    expected = 0.1 * (koleo_loss(x[:4]) + koleo_loss(x[4:]))
    out = mod(x)
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    out.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    dup = torch.ones(4, 3, requires_grad=True)  # identical rows: finite, no NaN gradient
    koleo_loss(dup).backward()
    assert torch.isfinite(dup.grad).all()
    assert KoLeoLoss(weight=0.0)(x).item() == 0.0
    with pytest.raises(ValueError):
        koleo_loss(torch.ones(1, 3))


# ----------------------------------------------------------------------------- DINO
def _reference_dino(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, ts: float, tt: float, n_s: int):
    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    s_chunks = np.split(np.log(softmax(student / ts)), n_s)
    t_chunks = np.split(softmax((teacher - center) / tt), 2)
    terms = [(-(t * s).sum(axis=1)).mean() for i, t in enumerate(t_chunks) for j, s in enumerate(s_chunks) if i != j]
    return float(np.mean(terms))


def test_dino_loss_matches_reference_and_updates_center():
    g = torch.Generator().manual_seed(0)
    b, k = 3, 5
    student = torch.randn(4 * b, k, generator=g)  # 2 global + 2 local crops
    teacher = torch.randn(2 * b, k, generator=g)
    loss_fn = DINOLoss(k, student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)
    loss = loss_fn(student, teacher, n_student=4)
    ref = _reference_dino(student.numpy().astype(np.float64), teacher.numpy().astype(np.float64), 0.0, 0.1, 0.04, 4)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    # Center: EMA of the teacher batch mean, from zero.
    assert torch.allclose(loss_fn.center, 0.1 * teacher.mean(dim=0, keepdim=True), atol=1e-7)
    loss_fn(student, teacher, n_student=4)
    assert torch.allclose(loss_fn.center, 0.19 * teacher.mean(dim=0, keepdim=True), atol=1e-6)


def test_dino_centering_removes_a_constant_teacher_offset():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    offset = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    plain, shifted = DINOLoss(4, center_momentum=0.0), DINOLoss(4, center_momentum=0.0)
    plain.center.zero_()
    shifted.center.copy_(offset)
    # With the centre equal to the offset, the shifted teacher gives the unshifted loss.
    assert shifted(student, teacher + offset, 2).item() == pytest.approx(plain(student, teacher, 2).item(), rel=1e-5)
    # Without it, the offset dominates the teacher's distribution and the loss changes.
    off = DINOLoss(4, center_momentum=0.0)
    assert abs(off(student, teacher + offset, 2).item() - plain(student, teacher, 2).item()) > 0.1


def test_cosine_momentum_schedule_and_out_dim():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, 0.99) == pytest.approx(1.0)
    assert auto_out_dim(512) == 8192 and auto_out_dim(96) == 2048 and auto_out_dim(8) == 1024
    assert auto_out_dim(8192) == 65536


def test_dino_head_and_model_with_local_crops():
    torch.manual_seed(0)
    head = DINOHead(4, 32, hidden_dim=16, bottleneck_dim=8)
    out = head(torch.randn(5, 4))
    assert out.shape == (5, 32) and out.abs().max() <= 1.0 + 1e-5  # cosine logits
    model = DINO(_tiny_backbone(), 4, out_dim=32, hidden_dim=16, bottleneck_dim=8, koleo_weight=0.1)
    views = [torch.randn(6, 3, 12, 12), torch.randn(6, 3, 12, 12), torch.randn(6, 3, 6, 6), torch.randn(6, 3, 6, 6)]
    loss, logs = model(views, teacher_temp=0.04)
    assert torch.isfinite(loss) and set(logs) == {"dino", "koleo"}
    assert loss.item() == pytest.approx((logs["dino"] + logs["koleo"]).item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in model.teacher_backbone.parameters())
    assert model.head.prototypes.grad is not None
    assert model.loss.center.abs().sum() > 0
    with pytest.raises(ValueError):
        model(views[:1])
