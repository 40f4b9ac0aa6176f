"""IQM, stratified bootstrap intervals and Kendall tau (experiments/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from ie_experiments import stats
from ie_experiments.stats import interval_estimates, iqm, kendall_tau, stratified_bootstrap_ci


def test_iqm_hand_computed_values():
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # floor(4/4) = 1 cut each end: mean(2, 3)
    assert iqm([10, 1, 3, 2, 100, 4, 5, 6]) == pytest.approx(np.mean([3, 4, 5, 6]))  # 2 cut each end
    assert iqm([0.0, 0.0, 5.0, 1000.0, -1000.0]) == pytest.approx(5.0 / 3)  # n=5: one cut each end
    assert iqm([7.0]) == 7.0
    x = np.random.default_rng(1).normal(size=37)
    assert iqm(x) == pytest.approx(st.trim_mean(x, 0.25))  # rliable.metrics.aggregate_iqm
    with pytest.raises(ValueError):
        iqm([])


def test_bootstrap_constant_scores_give_zero_width_interval():
    p, lo, hi = stratified_bootstrap_ci([[0.3] * 5, [0.3] * 7], reps=200)
    assert p == lo == hi == pytest.approx(0.3)


def test_bootstrap_interval_contains_point_and_is_seeded():
    rng = np.random.default_rng(0)
    tasks = [rng.normal(0.2, 0.1, 6), rng.normal(0.5, 0.1, 6), rng.normal(0.1, 0.05, 4)]
    a = stratified_bootstrap_ci(tasks, reps=500, seed=3)
    b = stratified_bootstrap_ci(tasks, reps=500, seed=3)
    c = stratified_bootstrap_ci(tasks, reps=500, seed=4)
    assert a == b and a != c
    assert a[1] <= a[0] <= a[2] and a[2] - a[1] > 0
    est = interval_estimates(tasks, reps=500)
    assert est["mean"]["point"] == pytest.approx(np.mean(np.concatenate(tasks)))


def test_bootstrap_is_stratified_by_task():
    # Two tasks with constant but different scores: resampling within tasks keeps every replicate's
    # pool at 3 x 0 and 3 x 1, so the mean's interval has zero width; pooled resampling would not.
    p, lo, hi = stratified_bootstrap_ci([[0.0] * 3, [1.0] * 3], func=np.mean, reps=300)
    assert p == lo == hi == 0.5


def test_bootstrap_coverage_of_a_known_mean():
    rng = np.random.default_rng(7)
    hits = sum(lo <= 0.0 <= hi for lo, hi in
               (stratified_bootstrap_ci([rng.normal(0, 1, 20)], func=np.mean, reps=300, seed=s)[1:] for s in range(60)))
    assert 48 <= hits <= 60  # nominal 95%: about 57 of 60


def test_kendall_tau():
    assert kendall_tau([0.0, 0.1, 1.0], [0.01, 0.3, 0.9]) == 1.0
    assert kendall_tau([0.0, 0.1, 1.0], [0.3, 0.01, 0.9]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        kendall_tau([1.0], [1.0])


def _fixture():
    """Three tasks x 12 runs of seeded scores: the shared fixture of rliable and the fallback."""
    rng = np.random.default_rng(11)
    return [rng.normal(0.2, 0.1, 12), rng.normal(0.5, 0.2, 12), rng.beta(2, 5, 12)]


@pytest.mark.skipif(not stats.rliable_available(), reason="rliable is not installed (pip install rliable)")
def test_rliable_and_the_fallback_agree_on_a_shared_fixture():
    tasks = _fixture()
    via_rliable = interval_estimates(tasks, reps=4000, seed=0)
    via_numpy = interval_estimates(tasks, reps=4000, seed=0, backend="numpy")
    for name in ("iqm", "mean"):
        r, n = via_rliable[name], via_numpy[name]
        assert r["backend"] == "rliable" and n["backend"] == "numpy"
        assert r["point"] == pytest.approx(n["point"], abs=1e-12)  # the same estimator
        width = n["high"] - n["low"]
        assert abs(r["low"] - n["low"]) < 0.1 * width and abs(r["high"] - n["high"]) < 0.1 * width  # bootstrap noise
        assert not r["few_episodes"] and "warning" not in r
    assert interval_estimates(tasks, reps=300, seed=1) == interval_estimates(tasks, reps=300, seed=1)  # seeded


def test_too_few_episodes_omit_or_flag_the_interval():
    two = interval_estimates([[0.1, 0.4], [0.2, 0.3]], reps=100)
    for est in two.values():
        assert est["low"] is None and est["high"] is None and est["point"] == pytest.approx(0.25)
        assert "fewer than 3" in est["omitted"] and "10" in est["omitted"]
    five = interval_estimates([[0.1, 0.4, 0.2, 0.3, 0.9]], reps=100, backend="numpy")
    assert five["iqm"]["few_episodes"] and five["iqm"]["low"] is not None
    assert "at least 10 episodes per task" in five["iqm"]["warning"]
    uneven = interval_estimates([[0.1] * 12, [0.2] * 11], reps=100)  # rliable needs equal runs: the fallback
    assert uneven["mean"]["backend"] == "numpy" and not uneven["mean"]["few_episodes"]
    with pytest.raises(ValueError, match="backend"):
        interval_estimates([[0.1] * 4], backend="scipy")
