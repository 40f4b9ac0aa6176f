"""Paired differences between agents over seeds, with a percentile-bootstrap 95% interval.

Two runs on the same seed share the target and the learner's initial weights (the episode seed
drawn by ``reset(seed)`` fixes the target draw and ``ssl.seed``; the target-only baseline resets
its env with the same seed), so a figure such as final k-NN accuracy is compared as per-seed
differences ``agent(s) - baseline(s)`` (DESIGN §8, "Paired differences"), not as two means with two
standard deviations. The interval is the percentile bootstrap of the mean difference: ``reps``
resamples of the seeds' differences with replacement (seeded), the 2.5 and 97.5 percentiles of
their means. With fewer than :data:`MIN_SEEDS` paired seeds the interval is omitted and the reason
given: the bootstrap of one or two values says nothing.

Used by ``ie-compare`` (every agent minus every baseline present, target-only and retrieval included) and
``ie-benchmark`` (per task, every agent minus every baseline agent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BASELINE_NAMES",
    "DEFAULT_REPS",
    "MIN_SEEDS",
    "PAIRED_METRICS",
    "benchmark_paired",
    "benchmark_paired_markdown",
    "bootstrap_mean_ci",
    "comparison_pairs",
    "paired_comparisons",
    "paired_difference",
    "paired_markdown",
]

MIN_SEEDS = 3  # fewer paired seeds: no interval
DEFAULT_REPS = 10_000
PAIRED_METRICS = ("final_knn_accuracy", "linear_probe_accuracy")
METRIC_TITLES = {"final_knn_accuracy": "final k-NN", "linear_probe_accuracy": "linear probe"}
#: Agent names that are baselines, in the order a difference is taken (an earlier one minus a later one).
BASELINE_NAMES = ("retrieval", "random", "uniform", "target_only")


def bootstrap_mean_ci(values: Sequence[float], reps: int = DEFAULT_REPS, size: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``size`` interval of the mean of ``values`` (resampled with replacement,
    ``reps`` times, from ``numpy.random.default_rng(seed)``)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if not 0 < size < 1 or reps < 1:
        raise ValueError("size must lie in (0, 1) and reps be >= 1")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(reps, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - size) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def paired_difference(a: Mapping[Any, Any], b: Mapping[Any, Any], reps: int = DEFAULT_REPS, seed: int = 0,
                      min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """``a - b`` on every seed both hold a finite value for: the per-seed differences, their mean
    and sample std, and the bootstrap 95% interval of the mean (or why it is omitted)."""
    seeds = sorted((s for s in a if s in b and _finite(a[s]) and _finite(b[s])), key=lambda s: int(s))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    out: dict[str, Any] = {"seeds": [int(s) for s in seeds], "differences": diffs, "n": len(diffs),
                           "mean": float(np.mean(diffs)) if diffs else None,
                           "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
                           "low": None, "high": None}
    unpaired = sorted({int(s) for s in (*a, *b)} - set(out["seeds"]))
    if unpaired:
        out["unpaired_seeds"] = unpaired
    if len(diffs) < min_seeds:
        out["interval_omitted"] = (f"{len(diffs)} paired seed{'s' if len(diffs) != 1 else ''}; "
                                   f"a bootstrap interval needs at least {min_seeds}")
    else:
        out["low"], out["high"] = bootstrap_mean_ci(diffs, reps=reps, seed=seed)
    return out


def comparison_pairs(labels: Sequence[str], names: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(agent, baseline)`` pairs: every label minus every baseline present (a label whose agent
    name is in :data:`BASELINE_NAMES`), a baseline only minus the baselines after it in that order."""
    def rank(label: str) -> int:
        name = names.get(label, label)
        return BASELINE_NAMES.index(name) if name in BASELINE_NAMES else -1

    baselines = sorted((lab for lab in labels if rank(lab) >= 0), key=rank)
    order = {lab: i for i, lab in enumerate(labels)}
    return [(a, b) for a in labels for b in baselines if (rank(a), order[a]) < (rank(b), order[b])]


def paired_comparisons(per_seed: Mapping[str, Mapping[Any, Mapping[str, Any]]], labels: Sequence[str],
                       names: Mapping[str, str], metrics: Sequence[str] = PAIRED_METRICS,
                       reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Any]:
    """Paired differences for every :func:`comparison_pairs` pair and metric.

    ``per_seed[label][seed]`` holds a run's scalar figures (``None`` or NaN where unknown).
    """
    rows = []
    for a, b in comparison_pairs(list(labels), names):
        row: dict[str, Any] = {"agent": a, "baseline": b}
        for m in metrics:
            va = {s: r.get(m) for s, r in per_seed.get(a, {}).items()}
            vb = {s: r.get(m) for s, r in per_seed.get(b, {}).items()}
            row[m] = paired_difference(va, vb, reps=reps, seed=seed)
        rows.append(row)
    return {
        "definition": "per seed: agent minus baseline on the same seed (same target and initial weights); "
                      "mean over seeds and a percentile-bootstrap 95% interval of that mean",
        "bootstrap": {"reps": reps, "seed": seed, "size": 0.95, "min_seeds": MIN_SEEDS},
        "metrics": list(metrics),
        "comparisons": rows,
    }


def _cell(d: dict[str, Any] | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "—"
    mean = f"{round(d['mean'], digits) + 0.0:+.{digits}f}"
    if d.get("low") is None:
        return f"{mean} (n = {d['n']}, no interval)"
    return f"{mean} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}] (n = {d['n']})"


def paired_markdown(paired: dict[str, Any] | None, title: str = "Paired differences") -> str:
    """A Markdown table of :func:`paired_comparisons`' result, with the omitted intervals' reasons."""
    if not paired or not paired.get("comparisons"):
        return ""
    metrics = paired["metrics"]
    lines = ["", f"**{title}** (agent − baseline per seed: mean [bootstrap 95% interval])", "",
             "| agent − baseline | " + " | ".join(METRIC_TITLES.get(m, m) for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    reasons = set()
    for row in paired["comparisons"]:
        lines.append(f"| {row['agent']} − {row['baseline']} | " + " | ".join(_cell(row.get(m)) for m in metrics) + " |")
        reasons.update(row[m]["interval_omitted"] for m in metrics if row.get(m, {}).get("interval_omitted")
                       and row[m]["n"] > 0)
    b = paired["bootstrap"]
    lines += ["", (f"Percentile bootstrap over seeds, {b['reps']} resamples (seed {b['seed']}); "
                  f"no interval below {b['min_seeds']} paired seeds; — where a figure is unknown.")]
    if reasons:
        lines.append("Intervals omitted: " + "; ".join(sorted(reasons)) + ".")
    return "\n".join(lines) + "\n"


def benchmark_paired(res: dict[str, Any], reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Any]:
    """Per task of an ``ie-benchmark`` result: every agent minus every baseline agent, paired by
    held-out episode (seed ``s`` is the same target and initial weights for every agent)."""
    out = {}
    for task, agents in res["per_task"].items():
        per_seed = {a: e.get("episodes", {}) for a, e in agents.items()}
        out[task] = paired_comparisons(per_seed, list(agents), res.get("agent_names", {}), reps=reps, seed=seed)
    return out


def benchmark_paired_markdown(paired: dict[str, Any]) -> str:
    """One :func:`paired_markdown` table per task that has comparisons with any value."""
    parts = []
    for task, p in paired.items():
        if any(r[m]["n"] for r in p["comparisons"] for m in p["metrics"]):
            parts.append(paired_markdown(p, title=f"{task}: paired differences"))
    return "".join(parts)
