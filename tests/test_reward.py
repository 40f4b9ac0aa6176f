import numpy as np
import torch

from ie_env.reward import image_rewards, query_reward


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_image_rewards_match_brute_force():
    rng = np.random.default_rng(0)
    imgs = _unit(rng.standard_normal((37, 24)))
    targets = _unit(rng.standard_normal((50, 24)))
    got = image_rewards(torch.tensor(imgs, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64), k=15).numpy()
    for i, v in enumerate(imgs):
        sims = sorted((float(v @ t) for t in targets), reverse=True)
        assert abs(got[i] - np.mean(sims[:15])) < 1e-12


def test_k_capped_at_target_count_and_empty():
    t = torch.eye(3)
    r = image_rewards(torch.eye(3), t, k=15)
    assert torch.allclose(r, torch.full((3,), 1 / 3))
    assert image_rewards(torch.zeros(0, 3), t).numel() == 0


def test_query_reward_is_top10_mean():
    r = np.arange(30, dtype=np.float32)
    assert query_reward(r) == np.mean(np.arange(20, 30))
    assert query_reward(np.array([0.5, 0.1])) == np.float32(0.3)
    assert query_reward(np.array([])) == 0.0


def test_k1_is_attracted_by_an_outlier_k15_is_not():
    # One outlier target sits exactly on an off-topic image; k=15 averages it away.
    rng = np.random.default_rng(1)
    cluster = _unit(rng.standard_normal((1, 8)) + 0.05 * rng.standard_normal((20, 8)))
    off = _unit(rng.standard_normal((1, 8)))
    targets = torch.tensor(np.concatenate([cluster, off]))
    on = torch.tensor(_unit(cluster[:1] + 0.01))
    k1 = image_rewards(torch.tensor(off), targets, k=1)
    k15_off, k15_on = image_rewards(torch.tensor(off), targets, k=15), image_rewards(on, targets, k=15)
    assert k1.item() > 0.99
    assert k15_on.item() > k15_off.item()
