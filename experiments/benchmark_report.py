"""The Markdown leaderboard and the figure of an ``ie-benchmark`` result (``results.json``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ie_env.config import atomic_write_bytes
from ie_env.extras import require

__all__ = ["leaderboard", "plot_benchmark", "fmt_interval", "interval_notes", "FEW"]


FEW = "†"  # marks an interval over fewer than ie_experiments.stats.STABLE_EPISODES episodes per task


def fmt_interval(est: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.123 [0.100, 0.150]`` (``†`` appended below the stable episode count; ``no CI`` where the
    interval was omitted), or a dash."""
    if not est:
        return "—"
    if est.get("low") is None:
        return f"{est['point']:.{digits}f} [no CI]"
    mark = FEW if est.get("few_episodes") else ""
    return f"{est['point']:.{digits}f} [{est['low']:.{digits}f}, {est['high']:.{digits}f}]{mark}"


def interval_notes(res: dict[str, Any]) -> list[str]:
    """One line per distinct warning of the intervals in ``res`` (few episodes, omitted intervals)."""
    notes: list[str] = []
    ests = [e for a in res["agents"] for e in ((res["suite"][a]["gap_closed"] or {}).get("iqm"),)]
    ests += [(res["per_task"][t][a].get("gap_closed") or {}).get("iqm") for t in res["per_task"] for a in res["agents"]]
    for e in ests:
        msg = (e or {}).get("omitted") or (e or {}).get("warning")
        if msg and msg not in notes:
            notes.append(msg)
    return [f"{FEW} {m}" for m in notes]


def _mean(stat: dict[str, float] | None, digits: int = 1) -> str:
    return "—" if not stat else f"{stat['mean']:.{digits}f}"


def _runs(entry: dict[str, Any]) -> str:
    ok, bad = len(entry["seeds_ok"]), len(entry["seeds_failed"])
    return f"{ok}/{ok + bad}"


def leaderboard(res: dict[str, Any]) -> str:
    """Suite table (IQM and mean over all tasks' episodes) and one row per task and agent."""
    tasks, agents = res["tasks"], res["agents"]
    short = {t: t.replace("IELatent-", "").replace("IEPixels-", "px-") for t in tasks}
    lines = [
        "| agent | IQM gap closed [95% CI] | mean gap closed [95% CI] | "
        + " | ".join(f"{short[t]}: IQM" for t in tasks) + " | runs |",
        "|---|---|---|" + "---|" * len(tasks) + "---|",
    ]
    order = sorted(agents, key=lambda a: -((res["suite"][a]["gap_closed"] or {}).get("iqm", {}).get("point", -np.inf)))
    for a in order:
        s = res["suite"][a]
        ok = sum(len(res["per_task"][t][a]["seeds_ok"]) for t in tasks)
        total = ok + sum(len(res["per_task"][t][a]["seeds_failed"]) for t in tasks)
        agg = s["gap_closed"] or {}
        cells = [fmt_interval(res["per_task"][t][a].get("gap_closed", {}).get("iqm")) for t in tasks]
        name = a if s["complete"] else f"{a} (incomplete)"
        lines.append(f"| {name} | {fmt_interval(agg.get('iqm'))} | {fmt_interval(agg.get('mean'))} | "
                     + " | ".join(cells) + f" | {ok}/{total} |")
    lines += ["", "| task | agent | IQM gap closed [95% CI] | mean [95% CI] | distinct relevant concepts | "
              "new relevant images | target classes hit | final k-NN | Δ k-NN | runs |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    labels = list(res["per_task"])
    for label in labels:
        for a in agents:
            e = res["per_task"][label][a]
            gc = e.get("gap_closed", {})
            knn = e.get("final_knn_accuracy")
            lines.append(
                f"| {label} | {a} | {fmt_interval(gc.get('iqm'))} | {fmt_interval(gc.get('mean'))} | "
                f"{_mean(e.get('distinct_relevant_concepts'))} | {_mean(e.get('new_relevant_images'), 0)} | "
                f"{_mean(e.get('target_classes_hit_share'), 2)} | {_mean(knn, 3)} | "
                f"{_mean(e.get('delta_knn_accuracy'), 3)} | {_runs(e)} |")
    info = res["task_info"]
    worlds = ", ".join(f"{t} world {info[t]['world_hash']}" for t in tasks)
    lines += ["", f"Seeds {res['seeds'][0]}–{res['seeds'][-1]} = held-out episodes reset(seed = eval_seed0 + s) "
              f"({worlds}). {res['score']}; random policy 0, oracle (the target concepts) 1. {res['intervals']}."]
    lines += interval_notes(res)
    if res.get("transfer"):
        for t, tr in res["transfer"].items():
            lines.append(f"Transfer {t} (latent twin vs pixels): Kendall tau of the agents' mean gap closed = "
                         f"{tr['kendall_tau']:.3f} over {', '.join(tr['agents'])}; per-query reward correlation "
                         f"Pearson {tr['reward_pearson']:.3f}, Spearman {tr['reward_spearman']:.3f} over {tr['queries']} replayed queries.")
    failed = {}
    for k in res["failed_runs"]:
        failed.setdefault(k.rsplit("/", 1)[0], []).append(res["runs"][k].get("error", "?"))
    for k, errs in failed.items():
        lines.append(f"FAILED {k}: {len(errs)} run(s): {sorted(set(errs))[0]}")
    return "\n".join(lines) + "\n"


def plot_benchmark(res: dict[str, Any], path: str | Path) -> Path:
    """IQM and mean gap closed with 95% intervals per agent: the suite, then each task."""
    require("plots", "The benchmark plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("suite", {a: res["suite"][a]["gap_closed"] for a in res["agents"]})]
    panels += [(t, {a: res["per_task"][t][a].get("gap_closed") for a in res["agents"]}) for t in res["per_task"]]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 1.2 + 0.45 * len(res["agents"]) * 2), squeeze=False)
    agents = res["agents"]
    for col, (title, ests) in enumerate(panels):
        for row, kind in enumerate(("iqm", "mean")):
            ax = axes[row][col]
            for i, a in enumerate(agents):
                e = (ests.get(a) or {}).get(kind)
                if not e:
                    ax.text(0.0, i, "failed", va="center", fontsize=7, color="red")
                    continue
                if e.get("low") is None:  # too few episodes for an interval: the point alone
                    ax.plot(e["point"], i, "o", mfc="none")
                    continue
                ax.errorbar(e["point"], i, xerr=[[e["point"] - e["low"]], [e["high"] - e["point"]]], fmt="o", capsize=3)
            ax.axvline(0.0, color="grey", lw=0.6)
            ax.axvline(1.0, color="grey", lw=0.6, ls=":")
            ax.set_yticks(range(len(agents)), agents if col == 0 else [""] * len(agents), fontsize=8)
            ax.set_title(f"{title}: {kind.upper() if kind == 'iqm' else 'mean'}", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            if row == 1:
                ax.set_xlabel("gap closed (95% CI)", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
