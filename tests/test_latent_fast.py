"""The latent fidelity's compiled paths against straightforward numpy references (issue #4 item 4).

Scoring against a float64 brute force (ties included), the surrogate's running moments against
``np.cov`` of everything it was updated on, the fused iteration close against the separate steps, and
every numpy fallback (no numba: a machine without it) against the compiled path.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ie_env.latent_fast as lf
from ie_env.actions import ActionConfig, EpisodeHistory, make_action_mode
from ie_env.env import InternetExplorerEnv
from ie_env.latent_fast import LatentScorer
from ie_env.learner.surrogate import SurrogateConfig, WhiteningSurrogate
from tests.conftest import latent_config

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not lf.HAVE_NUMBA, reason="numba not installed: only the numpy path exists")


def _bruteforce(learner, targets, x, k, top):
    """Rewards in float64 straight from the definition: mean of the k largest cosines to the targets."""
    def feats(z):
        f = (z.astype(np.float64) - learner.mean) @ learner.W
        if learner.bias:
            f = np.concatenate([f, np.full((len(f), 1), learner.bias)], axis=1)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    sims = feats(x) @ feats(targets).T
    kk = min(k, len(targets))
    r = -np.sort(-sims, axis=1)[:, :kk].mean(axis=1)
    return r, -np.sort(-r)[: min(top, len(r))].mean()


def _learner(rng, d=16, bias=4.0):
    learner = WhiteningSurrogate(d, SurrogateConfig(bias=bias))
    learner.update(rng.standard_normal((400, d)) * rng.uniform(0.5, 2.0, d) + rng.uniform(-1, 1, d))
    return learner


@pytest.mark.parametrize("n,t,k,bias", [(50, 200, 15, 4.0), (50, 100, 15, 0.0), (7, 30, 15, 4.0), (20, 10, 15, 4.0),
                                        (1, 5, 1, 4.0), (33, 15, 15, 4.0)])
@pytest.mark.parametrize("numba", [True, False])
def test_scoring_matches_a_float64_brute_force(n, t, k, bias, numba, monkeypatch):
    if numba and not lf.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(lf, "HAVE_NUMBA", numba)
    rng = np.random.default_rng(n * 1000 + t)
    learner = _learner(rng, bias=bias)
    targets = rng.standard_normal((t, 16)).astype(np.float32)
    for scorer in (LatentScorer.from_learner(learner, learner.features_np(targets), k),
                   LatentScorer.for_targets(learner, targets, k)[0]):
        for rep in range(3):  # the threshold search's warm start moves: the numbers must not
            x = (targets[rng.integers(0, t, n)] + 0.6 * rng.standard_normal((n, 16))).astype(np.float32)
            got, q = scorer.score(x, 10)
            ref, qref = _bruteforce(learner, targets, x, k, 10)
            np.testing.assert_allclose(got, ref, atol=2e-6)
            assert q == pytest.approx(qref, abs=2e-6)


@needs_numba
def test_ties_at_the_kth_similarity_are_exact():
    """Duplicated targets make the k-th and (k+1)-th similarities equal: no threshold separates them,
    and the kernel's insertion fallback must still give the exact top-k mean."""
    rng = np.random.default_rng(1)
    learner = _learner(rng)
    base = rng.standard_normal((40, 16)).astype(np.float32)
    targets = np.repeat(base, 5, axis=0)  # every similarity five times
    x = (base[rng.integers(0, 40, 50)] + 0.5 * rng.standard_normal((50, 16))).astype(np.float32)
    for k in (15, 13, 5, 1):
        scorer = LatentScorer.from_learner(learner, learner.features_np(targets), k)
        got, _ = scorer.score(x, 10)
        np.testing.assert_allclose(got, _bruteforce(learner, targets, x, k, 10)[0], atol=2e-6)


def test_running_moments_match_np_cov_of_everything_seen():
    rng = np.random.default_rng(2)
    d, prior = 16, 64.0
    learner = WhiteningSurrogate(d, SurrogateConfig(prior_count=prior))
    seen = []
    warm = (rng.standard_normal((300, d)) + 0.7).astype(np.float32)
    warm.setflags(write=False)  # read-only: its moments are cached, as the env's warm-up batch's are
    for _ in range(2):
        learner.update(warm)
        seen.append(warm)
    for it in range(6):  # the env's path: new finds + a draw from target train and replay
        fresh = (rng.standard_normal((80, d)) * 1.5 + it).astype(np.float32)
        a = rng.standard_normal((30, d)).astype(np.float32)
        b = rng.standard_normal((10 * it, d)).astype(np.float32)
        idx = rng.integers(0, len(a) + len(b), 160)
        learner.update_rows(fresh, a, b if len(b) else None, idx)
        seen.append(np.concatenate([fresh, np.concatenate([a, b])[idx]]))
    x = np.concatenate(seen).astype(np.float64)
    n = len(x)
    mx = x.mean(axis=0)
    # the identity prior counts as `prior` pseudo-observations at the origin with covariance I
    m2 = prior * np.eye(d) + np.cov(x.T, bias=True) * n + np.outer(mx, mx) * prior * n / (prior + n)
    assert learner.count == prior + n and learner.steps == 8
    np.testing.assert_allclose(learner.mean, mx * n / (prior + n), rtol=0, atol=1e-9)
    np.testing.assert_allclose(learner.m2, m2, rtol=1e-9, atol=1e-9 * np.abs(m2).max())
    cov = 0.9 * m2 / (learner.count - 1.0) + 0.1 * np.eye(d)
    # a whitening map of everything seen: W W^T = cov^-1, so (x - mu) W has identity covariance
    np.testing.assert_allclose(learner.W @ learner.W.T, np.linalg.inv(cov), atol=1e-9)
    np.testing.assert_allclose(learner.W.T @ cov @ learner.W, np.eye(d), atol=1e-9)


@pytest.mark.parametrize("numba", [True, False])
def test_gathered_update_equals_the_concatenated_batch(numba, monkeypatch):
    if numba and not lf.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(lf, "HAVE_NUMBA", numba)
    rng = np.random.default_rng(3)
    a_l = _learner(rng)
    b_l = copy.deepcopy(a_l)
    for it in range(4):
        fresh = (rng.standard_normal((100, 16)) + 1).astype(np.float32)
        tr = rng.standard_normal((50, 16)).astype(np.float32)
        rep = rng.standard_normal((20 * it, 16)).astype(np.float32)
        idx = rng.integers(0, 50 + len(rep), 200)
        pool = np.concatenate([tr, rep])
        a_l.update(np.concatenate([fresh, pool[idx]]))
        b_l.update_rows(fresh, tr, rep if len(rep) else None, idx)
        np.testing.assert_allclose(b_l.m2, a_l.m2, rtol=1e-12, atol=1e-12 * np.abs(a_l.m2).max())
        np.testing.assert_allclose(b_l.mean, a_l.mean, atol=1e-12)
        np.testing.assert_allclose(b_l.W, a_l.W, atol=1e-12)
        assert b_l.count == a_l.count and b_l.steps == a_l.steps


@needs_numba
@pytest.mark.parametrize("shrinkage", [0.1, 0.0])
def test_compiled_map_is_numpys(shrinkage):
    """The compiled map is the numpy one (Cholesky ``L^-T``; eigh's ZCA map when the covariance is
    singular, which only an unshrunk estimate can be) to rounding, and whitens."""
    from ie_env.learner.surrogate import whitening_map

    rng = np.random.default_rng(4)
    for trial in range(20):
        x = rng.standard_normal((300, 16)) * rng.uniform(0.2, 3, 16) + rng.uniform(-2, 2, 16)
        if shrinkage == 0.0 and trial % 2:
            x[:, 5] = x[:, 3]  # a rank-deficient covariance
        m2, mean = (x - x.mean(0)).T @ (x - x.mean(0)), x.mean(0)
        cov = (1 - shrinkage) * (m2 / 363.0) + shrinkage * np.eye(16)
        W, W32, mu32 = lf.whitening(m2, 364.0, shrinkage, mean)
        np.testing.assert_allclose(W, whitening_map(cov), rtol=1e-9, atol=1e-9 * np.abs(W).max())
        if shrinkage == 0.0 and trial % 2:
            vals, vecs = np.linalg.eigh(cov)
            np.testing.assert_allclose(W, (vecs / np.sqrt(np.maximum(vals, 1e-8))) @ vecs.T, rtol=1e-6, atol=1e-6)
        else:
            assert np.allclose(np.triu(W), W)  # L^-T is upper triangular
            np.testing.assert_allclose(W.T @ cov @ W, np.eye(16), atol=1e-9)
        assert np.array_equal(W32, W.astype(np.float32)) and np.array_equal(mu32, mean.astype(np.float32))


def _run(cfg, seed, actions, fused=True):
    env = InternetExplorerEnv(cfg)
    if not fused:
        env._latent_close = lambda *a: None
    env.reset(seed=seed)
    rewards = []
    for a in actions:
        rewards.append(env.step(int(a))[1])
    return env, np.array(rewards)


@needs_numba
def test_fused_iteration_close_equals_the_separate_steps():
    cfg = latent_config(queries_per_iteration=4, iterations=4, info_level="minimal", evaluate=False)
    actions = np.random.default_rng(5).integers(0, 2518, 16)
    a, ra = _run(cfg, 3, actions, fused=True)
    b, rb = _run(cfg, 3, actions, fused=False)
    np.testing.assert_allclose(ra, rb, atol=1e-7)
    np.testing.assert_allclose(a.learner.m2, b.learner.m2, rtol=1e-12)
    np.testing.assert_allclose(a.learner.W, b.learner.W, atol=1e-12)
    assert np.array_equal(a.replay.images, b.replay.images) and np.array_equal(a.replay.rewards, b.replay.rewards)
    np.testing.assert_allclose(a.target_feats.numpy(), b.target_feats.numpy(), atol=1e-7)


def test_stack_rows_and_targets_fallbacks_agree(monkeypatch):
    rng = np.random.default_rng(6)
    first = rng.standard_normal((30, 16)).astype(np.float32)
    a = rng.standard_normal((20, 16)).astype(np.float32)
    b = rng.standard_normal((15, 16)).astype(np.float32)
    idx = rng.integers(0, 35, 70)
    learner = _learner(rng)
    got = {}
    for numba in ([True, False] if lf.HAVE_NUMBA else [False]):
        monkeypatch.setattr(lf, "HAVE_NUMBA", numba)
        x, total = lf.stack_rows(first, a, b, idx)
        sc, feats = LatentScorer.for_targets(learner, a, 15)
        got[numba] = (x, total, sc.Maug, feats)
    ref = np.concatenate([first, np.concatenate([a, b])[idx]]).astype(np.float64)
    for x, total, Maug, feats in got.values():
        assert np.array_equal(x, ref)
        np.testing.assert_allclose(total, ref.sum(0), rtol=1e-12)
        np.testing.assert_allclose(feats, learner.features_np(a), atol=1e-6)
    if len(got) == 2:
        np.testing.assert_allclose(got[True][2], got[False][2], atol=1e-6)


@pytest.mark.parametrize("summary,H", [(False, 4), (True, 4), (False, 0), (True, 1)])
def test_compiled_context_equals_the_numpy_one(summary, H, monkeypatch):
    rng = np.random.default_rng(7)
    E = rng.standard_normal((300, 24)).astype(np.float32)
    mode_a = make_action_mode("vocab", ActionConfig(summary=summary), E, H, 12)
    mode_b = make_action_mode("vocab", ActionConfig(summary=summary), E, H, 12)
    hist = EpisodeHistory(300, 12)
    compiled = lf.HAVE_NUMBA
    for _ in range(13):
        a = mode_a.context(hist)
        monkeypatch.setattr(lf, "HAVE_NUMBA", False)
        b = mode_b.context(hist)
        monkeypatch.setattr(lf, "HAVE_NUMBA", compiled)
        assert np.array_equal(a, b)
        hist.record(int(rng.integers(0, 300)), float(rng.random()))


def test_without_numba_the_env_runs_on_numpy_and_gives_the_same_rewards(tmp_path):
    """A machine without numba (e.g. a GPU box): the import-time fallback, end to end, in a process
    where ``import numba`` fails."""
    script = tmp_path / "no_numba.py"
    script.write_text(
        "import sys, json\n"
        "sys.modules['numba'] = None  # import numba -> ImportError\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import numpy as np\n"
        "import ie_env.latent_fast as lf\n"
        "from ie_env.env import InternetExplorerEnv\n"
        "from tests.conftest import latent_config\n"
        "assert not lf.HAVE_NUMBA\n"
        "env = InternetExplorerEnv(latent_config(queries_per_iteration=4, iterations=2))\n"
        "env.reset(seed=11)\n"
        "out = [env.step(a)[1] for a in [3, 50, 700, 3, 9, 1200, 44, 45]]\n"
        "print(json.dumps(out))\n"
    )
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env_vars, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    no_numba = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    env = InternetExplorerEnv(latent_config(queries_per_iteration=4, iterations=2))
    env.reset(seed=11)
    here = np.array([env.step(a)[1] for a in [3, 50, 700, 3, 9, 1200, 44, 45]])
    np.testing.assert_allclose(no_numba, here, atol=2e-6)


@needs_numba
def test_stable_descending_order_is_numpys_stable_argsort():
    rng = np.random.default_rng(8)
    for n in (0, 1, 7, 800, 3000):
        v = rng.standard_normal(n).astype(np.float32)
        if n > 10:
            v[: n // 3] = v[n // 3 : 2 * (n // 3)]  # many ties
            v[:4] = [0.0, -0.0, 0.0, -0.0]  # signed zeros are equal
            v[5] = np.inf
            v[6] = -np.inf
        assert np.array_equal(lf._stable_descending(v), np.argsort(-v, kind="stable"))
    # The radix passes: keys equal in some bytes (a pass skipped), in all (every pass), subnormals.
    low = (np.float32(1.5) + rng.integers(0, 4, 500).astype(np.float32) * np.spacing(np.float32(1.5))).astype(np.float32)
    for v in (low, np.full(300, 0.25, np.float32), (rng.standard_normal(400) * 1e-40).astype(np.float32),
              -np.abs(rng.standard_normal(400)).astype(np.float32)):
        assert np.array_equal(lf._stable_descending(v), np.argsort(-v, kind="stable"))


def test_replay_appends_rows_in_place_like_concatenation():
    from ie_env.replay import ReplayBuffer

    rng = np.random.default_rng(9)
    grown, ref = ReplayBuffer(), ReplayBuffer()
    held = []
    for it in range(12):
        imgs = rng.standard_normal((37 + it, 16)).astype(np.float32)
        rw = -np.sort(-rng.random(len(imgs)).astype(np.float32))
        grown.add_sorted(imgs, rw)
        ref.images = imgs.copy() if ref.images is None else np.concatenate([ref.images, imgs])
        ref.rewards = np.concatenate([ref.rewards, rw])
        held.append((grown.images, grown.images.copy()))  # a view handed out earlier...
        assert np.array_equal(grown.images, ref.images) and np.array_equal(grown.rewards, ref.rewards)
        assert grown.images.flags.c_contiguous and len(grown) == len(ref.images)
    for view, snapshot in held:  # ...never changes afterwards
        assert np.array_equal(view, snapshot)
