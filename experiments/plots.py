"""Figures of an ``ie-compare`` result: curves with mean ± std bands over seeds (matplotlib, Agg).

``plot_comparison(results, out_dir)`` writes ``reward.png`` (mean query reward and gap closed per
iteration, the expected gap dashed), ``knn.png`` (k-NN accuracy per iteration, target-only included) and ``regret.png``
(cumulative regret per query), and returns their paths.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ie_env.config import atomic_write_bytes
from ie_env.extras import require

__all__ = ["plot_comparison", "band"]


def _plt():
    require("plots", "Plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band(ax: Any, x: np.ndarray, stat: dict[str, Any] | None, label: str, color: Any, style: str = "-") -> bool:
    """Plot ``stat["mean"]`` with a ``± stat["std"]`` band; False when there is nothing to plot."""
    if not stat or not stat.get("mean"):
        return False
    m, s = np.asarray(stat["mean"], dtype=float), np.asarray(stat["std"], dtype=float)
    x = np.asarray(x)[: len(m)]
    ax.plot(x, m, style, color=color, label=f"{label} (n={stat.get('n', '?')})", lw=1.8)
    if np.any(s > 0):
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.2, lw=0)
    return True


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_comparison(res: dict[str, Any], out_dir: str | Path) -> list[Path]:
    plt = _plt()
    out_dir = Path(out_dir)
    results = res["results"]
    labels = list(results)
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    iters = np.arange(1, res["iterations"] + 1)
    queries = np.arange(1, res["query_budget"] + 1)
    title = f"{res['query_budget']} queries, seeds {res['seeds'][0]}–{res['seeds'][-1]}, mean ± std"
    written = []
    try:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for lab in labels:
            band(a1, iters, results[lab].get("mean_reward_per_iteration"), lab, colors[lab])
            band(a2, iters, results[lab].get("gap_closed_per_iteration"), lab, colors[lab])
            expected = results[lab].get("expected_gap_closed_per_iteration")  # p . g: without the draws' noise
            if expected and expected.get("mean"):
                m = np.asarray(expected["mean"], dtype=float)
                a2.plot(iters[: len(m)], m, "--", color=colors[lab], lw=1.2, label=f"{lab}: expected")
        a1.set(xlabel="iteration", ylabel="mean query reward", title="reward (current encoder)")
        if not any(results[lab].get("gap_closed_per_iteration") for lab in labels):
            a2.text(0.5, 0.5, "ground truth unknown\n(search engine)", ha="center", va="center", transform=a2.transAxes)
        a2.axhline(0.0, color="grey", lw=0.8, ls=":")
        a2.axhline(1.0, color="grey", lw=0.8, ls=":")
        a2.set(xlabel="iteration", ylabel="gap closed (random 0, best 1)",
               title="ground-truth relevance (dashed: expected, p · g)")
        a1.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        written.append(_save(fig, out_dir / "reward.png"))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        any_knn = False
        for lab in labels:
            any_knn |= band(ax, np.arange(0, res["iterations"] + 1), results[lab].get("knn_accuracy"), lab, colors[lab],
                            "--" if lab in ("target_only", "retrieval") else "-")
        if any_knn:
            ax.set(xlabel="iteration (0 = before exploring)", ylabel="k-NN accuracy (k=20)", title=title)
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / "knn.png"))
        plt.close(fig)

        if any(results[lab].get("regret") for lab in labels):  # none without ground truth (search engines)
            fig, ax = plt.subplots(figsize=(6, 4))
            for lab in labels:
                band(ax, queries, results[lab].get("regret"), lab, colors[lab])
            ax.set(xlabel="query", ylabel="cumulative regret  Σ (max g − g)", title=title)
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / "regret.png"))
            plt.close(fig)
    finally:
        plt.close("all")
    return written
