"""Aggregate scores over runs and tasks as rliable does (Agarwal et al., NeurIPS 2021).

* :func:`iqm`: interquartile mean, ``scipy.stats.trim_mean(x, 0.25)`` over all scores pooled (what
  ``rliable.metrics.aggregate_iqm`` computes: ``floor(n / 4)`` scores cut from each end).
* :func:`stratified_bootstrap_ci`: percentile confidence interval of an aggregate, resampling the runs
  of each task with replacement, independently per task (rliable's ``StratifiedBootstrap``).
* :func:`kendall_tau`: rank agreement of two score lists (``scipy.stats.kendalltau``, tau-b).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["iqm", "mean", "AGGREGATES", "stratified_bootstrap_ci", "interval_estimates", "kendall_tau"]


def iqm(scores: np.ndarray | Sequence[float]) -> float:
    """Interquartile mean of all scores pooled (``floor(n/4)`` cut from each end, as rliable)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("iqm of no scores")
    return float(_st.trim_mean(x, 0.25))


def mean(scores: np.ndarray | Sequence[float]) -> float:
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean of no scores")
    return float(x.mean())


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {"iqm": iqm, "mean": mean}


def stratified_bootstrap_ci(per_task: Sequence[Sequence[float]], func: Callable[[np.ndarray], float] = iqm,
                            reps: int = 2000, size: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: ``func`` of all scores pooled and its percentile ``size`` interval.

    ``per_task`` holds each task's run scores (tasks may differ in run count). Each bootstrap
    replicate resamples every task's runs with replacement, independently per task, pools them and
    applies ``func``; the interval is the (1 - size)/2 and (1 + size)/2 quantiles of the replicates.
    """
    tasks = [np.asarray(t, dtype=np.float64).ravel() for t in per_task]
    tasks = [t for t in tasks if t.size]
    if not tasks:
        raise ValueError("no scores to aggregate")
    if not 0 < size < 1 or reps < 1:
        raise ValueError("size must lie in (0, 1) and reps be >= 1")
    point = func(np.concatenate(tasks))
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, t.size, size=(reps, t.size)) for t in tasks]
    reps_vals = np.array([func(np.concatenate([t[i[r]] for t, i in zip(tasks, idx)])) for r in range(reps)])
    alpha = (1.0 - size) / 2.0
    low, high = np.quantile(reps_vals, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def interval_estimates(per_task: Sequence[Sequence[float]], reps: int = 2000, size: float = 0.95,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"iqm": {point, low, high}, "mean": {...}}`` with stratified-bootstrap intervals."""
    out = {}
    for name, func in AGGREGATES.items():
        p, lo, hi = stratified_bootstrap_ci(per_task, func, reps, size, seed)
        out[name] = {"point": p, "low": lo, "high": hi}
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two equally long score lists (NaN when undefined)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two lists of equal length >= 2")
    return float(_st.kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic)
