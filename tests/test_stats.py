"""IQM, stratified bootstrap intervals and Kendall tau (experiments/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from experiments.stats import interval_estimates, iqm, kendall_tau, stratified_bootstrap_ci


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
