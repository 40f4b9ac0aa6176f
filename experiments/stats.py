"""Aggregate scores over runs and tasks as rliable does (Agarwal et al., NeurIPS 2021).

* :func:`iqm`: interquartile mean, ``scipy.stats.trim_mean(x, 0.25)`` over all scores pooled (what
  ``rliable.metrics.aggregate_iqm`` computes: ``floor(n / 4)`` scores cut from each end).
* :func:`stratified_bootstrap_ci`: percentile confidence interval of an aggregate, resampling the runs
  of each task with replacement, independently per task (rliable's ``StratifiedBootstrap``).
* :func:`kendall_tau`: rank agreement of two score lists (``scipy.stats.kendalltau``, tau-b).

:func:`interval_estimates` computes its intervals with ``rliable`` itself where it is installed
(``pip install rliable``; every task with the same number of runs, as rliable's score matrices
need), else with :func:`stratified_bootstrap_ci`, the tested fallback (the two agree within
bootstrap noise on a shared fixture). Each estimate says which computed it (``backend``), how many
episodes it rests on (``n``), and flags what a reader must know: fewer than
:data:`MIN_EPISODES_FOR_INTERVAL` episodes, no interval at all (``omitted`` says why); fewer than
:data:`STABLE_EPISODES` per task, ``few_episodes`` (the percentile interval of a handful of runs is
about their range, and the IQM trims nothing below 4).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["iqm", "mean", "AGGREGATES", "stratified_bootstrap_ci", "interval_estimates", "kendall_tau",
           "rliable_ci", "rliable_available", "MIN_EPISODES_FOR_INTERVAL", "STABLE_EPISODES", "few_episodes_warning"]

MIN_EPISODES_FOR_INTERVAL = 3  # below this no interval is reported (only the point estimate and why)
STABLE_EPISODES = 10  # per task: below this an interval is flagged as unstable


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


def rliable_available() -> bool:
    """Whether ``rliable`` imports (a broken install counts as absent: the fallback is used)."""
    try:
        from rliable import library, metrics  # noqa: F401
    except Exception:  # noqa: BLE001 - rliable pulls in arch / pandas, whose version mismatches fail in several ways
        return False
    return True


def rliable_ci(per_task: Sequence[Sequence[float]], name: str, reps: int = 2000, size: float = 0.95,
               seed: int = 0) -> tuple[float, float, float] | None:
    """``(point, low, high)`` of aggregate ``name`` (``iqm`` or ``mean``) from
    ``rliable.library.get_interval_estimates`` (stratified bootstrap, percentile interval), or None
    when rliable is not installed or the tasks hold different numbers of runs."""
    tasks = [np.asarray(t, dtype=np.float64).ravel() for t in per_task]
    tasks = [t for t in tasks if t.size]
    if not tasks or len({t.size for t in tasks}) != 1 or not rliable_available():
        return None
    from rliable import library as rly
    from rliable import metrics as rm

    agg = {"iqm": rm.aggregate_iqm, "mean": rm.aggregate_mean}[name]
    scores = {"agent": np.stack(tasks, axis=1)}  # (runs, tasks), rliable's layout
    # rliable's StratifiedBootstrap draws its run indices from NumPy's global generator, whatever
    # random_state says: seed that one for the call and put the caller's state back.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arch: random_state is deprecated
            points, cis = rly.get_interval_estimates(scores, lambda x: np.array([agg(x)]), reps=reps,
                                                     confidence_interval_size=size,
                                                     random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    return float(points["agent"][0]), float(cis["agent"][0, 0]), float(cis["agent"][1, 0])


def few_episodes_warning(n: int) -> str:
    """What a reader of an interval over ``n`` episodes per task needs to know."""
    if n < MIN_EPISODES_FOR_INTERVAL:
        return (f"{n} episode(s): no interval (a bootstrap over fewer than {MIN_EPISODES_FOR_INTERVAL} runs is its "
                f"own range); run at least {STABLE_EPISODES} episodes per task (--seeds {STABLE_EPISODES})")
    return (f"{n} episodes per task: the 95% interval is unstable (about the range of the runs) and the IQM trims "
            f"{n // 4} from each end; a stable interval needs at least {STABLE_EPISODES} episodes per task "
            f"(--seeds {STABLE_EPISODES})")


def interval_estimates(per_task: Sequence[Sequence[float]], reps: int = 2000, size: float = 0.95,
                       seed: int = 0, backend: str = "auto") -> dict[str, dict[str, Any]]:
    """``{"iqm": {point, low, high, backend, n, ...}, "mean": {...}}`` with stratified-bootstrap
    intervals: from rliable where it applies (``backend="auto"`` or ``"rliable"``), else (or with
    ``backend="numpy"``) from :func:`stratified_bootstrap_ci`. Below :data:`MIN_EPISODES_FOR_INTERVAL`
    runs in any task ``low`` / ``high`` are None and ``omitted`` says why; below
    :data:`STABLE_EPISODES` ``few_episodes`` is True with a ``warning``."""
    if backend not in ("auto", "rliable", "numpy"):
        raise ValueError(f"backend must be auto, rliable or numpy, got {backend!r}")
    sizes = [len(t) for t in per_task if len(t)]
    if not sizes:
        raise ValueError("no scores to aggregate")
    n_min = min(sizes)
    out: dict[str, dict[str, Any]] = {}
    for name, func in AGGREGATES.items():
        pooled = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in per_task if len(t)])
        est: dict[str, Any] = {"point": func(pooled), "low": None, "high": None, "n": int(pooled.size),
                               "min_episodes_per_task": int(n_min), "few_episodes": n_min < STABLE_EPISODES}
        if n_min < MIN_EPISODES_FOR_INTERVAL:
            est.update(backend=None, omitted=few_episodes_warning(n_min))
        else:
            got = rliable_ci(per_task, name, reps, size, seed) if backend != "numpy" else None
            if got is None and backend == "rliable":
                raise ValueError("rliable is not installed or the tasks hold different numbers of runs")
            if got is not None:
                est.update(point=got[0], low=got[1], high=got[2], backend="rliable")
            else:
                _, lo, hi = stratified_bootstrap_ci(per_task, func, reps, size, seed)
                est.update(low=lo, high=hi, backend="numpy")
        if est["few_episodes"]:
            est["warning"] = few_episodes_warning(n_min)
        out[name] = est
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two equally long score lists (NaN when undefined)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("kendall_tau needs two lists of equal length >= 2")
    return float(_st.kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic)
