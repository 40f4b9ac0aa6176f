"""Latent-to-pixels transfer: does the fast fidelity rank policies and score queries as the real one?

For a pixels task run by ``ie-benchmark --transfer`` next to its latent twin (same world seed, same
held-out targets, same agents and seeds):

* Kendall tau between the agents' mean gap closed in ``latent`` and in ``pixels``;
* the correlation (Pearson, Spearman) of per-query rewards between the fidelities: every pixels
  run's query sequence is replayed through the latent twin (same reset seed, same actions), so both
  rewards belong to the same query at the same point of the same episode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as st

from ie_experiments.benchmark import TWIN
from ie_experiments.stats import kendall_tau

__all__ = ["replay_rewards", "transfer_report"]


def replay_rewards(task_id: str, seed: int, actions: list[int], fidelity: str = "latent") -> tuple[list[float], list[float]]:
    """(query rewards, g) of ``actions`` replayed through the task's ``fidelity`` twin from ``reset(seed)``."""
    from ie_env.config import merge
    from ie_env.env import InternetExplorerEnv
    from ie_env.suite import eval_config

    cfg = merge(eval_config(task_id, fidelity), {"info_level": "minimal", "evaluate": False})
    env = InternetExplorerEnv(cfg)
    env.reset(seed=seed)
    rewards, g = [], []
    for a in actions:
        _, _, _, _, info = env.step(int(a))
        rewards.append(float(info["query_reward"]))
        g.append(float(info["true_relevance"]))
    return rewards, g


def _queries(run_dir: Path) -> list[dict[str, Any]]:
    from ie_experiments.target_only import _read_jsonl

    return _read_jsonl(run_dir / "queries.jsonl")


def transfer_report(out: Path, res: dict[str, Any]) -> dict[str, Any]:
    """``{task: {kendall_tau, scores, reward_pearson, reward_spearman, ...}}`` for every pixels task
    with a latent twin in ``res`` (``ie-benchmark``'s collected results)."""
    report: dict[str, Any] = {}
    for tid in res["tasks"]:
        twin = tid + TWIN
        if twin not in res["per_task"]:
            continue
        px, lat = res["per_task"][tid], res["per_task"][twin]
        agents = [a for a in res["agents"] if px[a].get("gap_closed") and lat[a].get("gap_closed")]
        s_px = [px[a]["gap_closed"]["mean"]["point"] for a in agents]
        s_lat = [lat[a]["gap_closed"]["mean"]["point"] for a in agents]
        r_px, r_lat, per_run, same_g = [], [], {}, True
        for a in agents:
            for s in px[a]["seeds_ok"]:
                run_dir = out / res["runs"][f"{tid}/{a}/seed{s}"]["dir"]
                recs = _queries(run_dir)
                seed = json.loads((run_dir / "summary.json").read_text())["seed"]
                lat_r, lat_g = replay_rewards(tid, seed, [r["action"] for r in recs])
                pix_r = [float(r["query_reward"]) for r in recs]
                same_g &= bool(np.allclose(lat_g, [float(r["true_relevance"]) for r in recs]))
                r_px += pix_r
                r_lat += lat_r
                if np.std(pix_r) > 0 and np.std(lat_r) > 0:
                    per_run[f"{a}/seed{s}"] = float(np.corrcoef(pix_r, lat_r)[0, 1])
        report[tid] = {
            "agents": agents,
            "mean_gap_closed_pixels": dict(zip(agents, s_px)),
            "mean_gap_closed_latent": dict(zip(agents, s_lat)),
            "ranking_pixels": [a for _, a in sorted(zip(s_px, agents), reverse=True)],
            "ranking_latent": [a for _, a in sorted(zip(s_lat, agents), reverse=True)],
            "kendall_tau": kendall_tau(s_px, s_lat) if len(agents) >= 2 else float("nan"),
            "queries": len(r_px),
            "reward_pearson": float(np.corrcoef(r_px, r_lat)[0, 1]) if len(r_px) > 1 else float("nan"),
            "reward_spearman": float(st.spearmanr(r_px, r_lat).statistic) if len(r_px) > 1 else float("nan"),
            "reward_pearson_per_run": per_run,
            "ground_truth_identical": same_g,
            "note": "each pixels run's queries replayed through the latent twin from the same reset seed",
        }
    return report
