"""Paired differences over seeds (ie_experiments.paired): hand-checked values on small fixtures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ie_experiments.paired import (
    benchmark_paired,
    benchmark_paired_markdown,
    bootstrap_mean_ci,
    comparison_pairs,
    paired_comparisons,
    paired_difference,
    paired_markdown,
)


def test_paired_difference_by_hand():
    gp = {0: 0.50, 1: 0.60, 2: 0.70}
    rnd = {0: 0.45, 1: 0.50, 2: 0.72}
    d = paired_difference(gp, rnd, reps=20_000, seed=1)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["differences"] == pytest.approx([0.05, 0.10, -0.02])
    assert d["mean"] == pytest.approx(0.13 / 3)
    assert d["std"] == pytest.approx(np.std([0.05, 0.10, -0.02], ddof=1))
    # Three values: each extreme resample (all three draws the same value) has probability 1/27 > 2.5%,
    # so the percentile interval's ends are the smallest and the largest difference.
    assert d["low"] == pytest.approx(-0.02) and d["high"] == pytest.approx(0.10)
    assert "interval_omitted" not in d


def test_pairs_are_matched_by_seed_not_by_position():
    a = {2: 1.0, 0: 0.0, 1: 0.5, 3: 0.9}
    b = {0: 0.0, 1: 0.0, 2: 0.0, 4: 0.3}
    d = paired_difference(a, b, reps=100)
    assert d["seeds"] == [0, 1, 2] and d["differences"] == [0.0, 0.5, 1.0]
    assert d["unpaired_seeds"] == [3, 4]


def test_fewer_than_three_seeds_omit_the_interval_with_the_reason():
    d = paired_difference({0: 0.6, 1: 0.7}, {0: 0.5, 1: None}, reps=100)
    assert d["n"] == 1 and d["mean"] == pytest.approx(0.1) and d["low"] is None and d["high"] is None
    assert d["interval_omitted"] == "1 paired seed; a bootstrap interval needs at least 3"
    nan = paired_difference({0: float("nan")}, {0: 0.5})
    assert nan["n"] == 0 and nan["mean"] is None


def test_bootstrap_matches_the_exact_resampling_distribution():
    x = np.array([0.0, 0.1, 0.3, 1.0])
    means = np.array([np.mean(c) for c in itertools.product(x, repeat=4)])  # all 256 equally likely resamples
    exact = np.quantile(means, [0.025, 0.975])
    lo, hi = bootstrap_mean_ci(x, reps=200_000, seed=3)
    assert lo == pytest.approx(exact[0], abs=0.02) and hi == pytest.approx(exact[1], abs=0.02)
    assert bootstrap_mean_ci(x, reps=500, seed=7) == bootstrap_mean_ci(x, reps=500, seed=7)  # seeded
    with pytest.raises(ValueError):
        bootstrap_mean_ci([], reps=10)


def test_every_agent_minus_every_baseline():
    labels = ["gp", "gp50", "random", "uniform", "target_only"]
    names = {"gp": "gp", "gp50": "gp", "random": "random", "uniform": "uniform", "target_only": "target_only"}
    pairs = comparison_pairs(labels, names)
    assert pairs == [
        ("gp", "random"),
        ("gp", "uniform"),
        ("gp", "target_only"),
        ("gp50", "random"),
        ("gp50", "uniform"),
        ("gp50", "target_only"),
        ("random", "uniform"),
        ("random", "target_only"),
        ("uniform", "target_only"),
    ]
    assert comparison_pairs(["gp", "oracle"], {"gp": "gp", "oracle": "oracle"}) == []


def test_paired_comparisons_and_table():
    per_seed = {
        "gp": {
            "0": {"final_knn_accuracy": 0.5, "linear_probe_accuracy": 0.6},
            "1": {"final_knn_accuracy": 0.6, "linear_probe_accuracy": 0.7},
            "2": {"final_knn_accuracy": 0.7, "linear_probe_accuracy": None},
        },
        "random": {
            "0": {"final_knn_accuracy": 0.45, "linear_probe_accuracy": 0.5},
            "1": {"final_knn_accuracy": 0.50, "linear_probe_accuracy": 0.5},
            "2": {"final_knn_accuracy": 0.72, "linear_probe_accuracy": 0.5},
        },
    }
    res = paired_comparisons(per_seed, ["gp", "random"], {"gp": "gp", "random": "random"}, reps=5000, seed=0)
    (row,) = res["comparisons"]
    assert (row["agent"], row["baseline"]) == ("gp", "random")
    assert row["final_knn_accuracy"]["mean"] == pytest.approx(0.13 / 3)
    assert row["final_knn_accuracy"]["low"] == pytest.approx(-0.02)
    probe = row["linear_probe_accuracy"]
    assert probe["n"] == 2 and probe["mean"] == pytest.approx(0.15) and probe["low"] is None
    table = paired_markdown(res)
    assert "| gp − random | +0.043 [-0.020, +0.100] (n = 3) | +0.150 (n = 2, no interval) |" in table
    assert "2 paired seeds; a bootstrap interval needs at least 3" in table
    assert paired_markdown(None) == "" and not math.isnan(res["bootstrap"]["reps"])


def test_benchmark_pairs_agents_by_held_out_episode_per_task():
    def ep(knn, probe):
        return {"final_knn_accuracy": knn, "linear_probe_accuracy": probe}

    res = {
        "agent_names": {"gp": "gp", "random": "random", "oracle": "oracle"},
        "per_task": {
            "px": {
                "gp": {"episodes": {"0": ep(0.4, 0.5), "1": ep(0.5, 0.5), "2": ep(0.6, 0.8)}},
                "random": {"episodes": {"0": ep(0.3, 0.5), "1": ep(0.5, 0.4), "2": ep(0.5, 0.5)}},
                "oracle": {"episodes": {"0": ep(0.5, 0.6), "1": ep(None, None)}},
            },
            "lat": {
                "gp": {"episodes": {"0": ep(None, None)}},
                "random": {"episodes": {"0": ep(None, None)}},
                "oracle": {"episodes": {}},
            },
        },
    }
    paired = benchmark_paired(res, reps=4000, seed=0)
    px = {(r["agent"], r["baseline"]): r for r in paired["px"]["comparisons"]}
    assert list(px) == [("gp", "random"), ("oracle", "random")]
    knn = px[("gp", "random")]["final_knn_accuracy"]
    assert knn["differences"] == pytest.approx([0.1, 0.0, 0.1]) and knn["mean"] == pytest.approx(0.2 / 3)
    assert (knn["low"], knn["high"]) == (pytest.approx(0.0), pytest.approx(0.1))
    assert px[("oracle", "random")]["final_knn_accuracy"]["n"] == 1
    text = benchmark_paired_markdown(paired)
    assert "px: paired differences" in text and "lat:" not in text  # no values there: no table
