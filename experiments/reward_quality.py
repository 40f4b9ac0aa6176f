"""``ie-reward-quality``: one run with the reward-quality figures after reset and every iteration.

Runs ``ie-explore``'s runner (same ``--task`` / ``--config`` / ``--set`` / ``--agent`` / ``--seed``) with
``reward_quality`` on: on a fixed panel (every concept with g >= 0.5 plus ``--panel`` others drawn with a
fixed seed, or ``--panel all``), Spearman(reward, g), AUC for g >= 0.5, relevant concepts among the 20
highest rewards, the reward range, and the per-concept correlation with the latent twin's rewards
(:mod:`ie_env.evaluation.reward_quality`). They go to TensorBoard (``reward_quality/*``), to
``summary.json`` (``reward_quality_per_iteration``) and to a table on stdout. Any run gets them with
``ie-explore --set reward_quality=200``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ie_env.config import ConfigError, apply_overrides

COLUMNS = ("iteration", "spearman", "auc", "top20_relevant", "reward_range", "latent_pearson", "latent_spearman")


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the per-iteration figures (missing or NaN values as '-')."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["  ".join(f"{c:>15}" for c in COLUMNS)]
    lines += ["  ".join(f"{cell(r.get(c)):>15}" for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-reward-quality", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="run YAML as for ie-explore")
    p.add_argument("--task", default=None, help="a suite task id: its held-out evaluation config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--agent", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--panel", default="200", help="concepts with g < 0.5 on the panel, or 'all' (default 200)")
    p.add_argument("--logdir", default=None, help="run directory (default runs/reward-quality-<agent>-seed<seed>)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ie_experiments.run import Runner, build_config

    args = parse_args(argv)
    try:
        if args.panel == "all":
            panel = -1
        elif args.panel.isdigit() and int(args.panel) > 0:
            panel = int(args.panel)
        else:
            raise ConfigError(f"--panel must be a positive integer or 'all', got {args.panel!r}")
        cfg = apply_overrides(build_config(args), [f"reward_quality={panel}"])
        if cfg.env.engine.name != "embedded" or cfg.env.target.kind != "embedded":
            raise ConfigError("reward quality needs ground-truth relevance: the embedded world and its own target")
        logdir = args.logdir or f"runs/reward-quality-{cfg.agent}-seed{cfg.seed}"
        summary = Runner(cfg, logdir, progress=not args.no_progress).run()
    except (ConfigError, FileExistsError, ValueError) as exc:
        print(f"ie-reward-quality: error: {exc}", file=sys.stderr)
        return 2
    rows = summary["reward_quality_per_iteration"]
    print(format_table(rows))
    print(json.dumps({"ssl_init": summary.get("ssl_init"), "knn_accuracy": summary["knn_accuracy"]}))
    print(f"run directory: {logdir}  (summary.json: reward_quality_per_iteration; tensorboard --logdir {logdir}/tb)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
