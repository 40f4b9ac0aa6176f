"""The target-only baseline: SSL on the target train set alone, compute-matched to an exploring run.

DESIGN §7 ("compute-matched baselines"): target-only SSL runs the same number of SSL steps, at the
same batch size, as the exploring run it is compared with. It builds the same environment and
learner as that run (same config, same seed, so the same initial weights and the same warm-up),
then, for every iteration of the exploring run, trains on exactly as many images as that iteration
trained on (its new images plus ``pcr`` x as many mixed in), all drawn from the target train split
(each pass over it freshly shuffled), and evaluates k-NN on the target test split. The SSL learner's
step count is a function of the image count and the batch size, so equal images means equal steps.
It makes no queries: only its k-NN and final linear-probe figures are comparable.

    python -m ie_experiments.target_only --match runs/gp-seed0 --logdir runs/target_only-seed0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ie_env.config import ConfigError, atomic_write_text, from_dict, to_dict
from ie_env.extras import require

__all__ = ["trained_images_per_iteration", "run_target_only", "target_only_from_run", "main"]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a ``queries.jsonl`` (a torn last line is ignored, the file is not touched)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _load_run_config(run_dir: Path):
    from ie_experiments.run import RunConfig

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.yaml: not an ie-explore run directory")
    return from_dict(RunConfig, yaml.safe_load(path.read_text()) or {})


def trained_images_per_iteration(run_dir: str | Path) -> list[int]:
    """Images the learner of the finished exploring run in ``run_dir`` trained on, per iteration.

    Taken from ``summary.json`` (``ssl_images_per_iteration``) when the runner records it, else
    rebuilt from ``queries.jsonl`` with the environment's own rule: an iteration trains on its new
    images (queries neither cached nor under ``min_images`` hits) plus ``round(pcr x new)`` more.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no summary.json: the exploring run did not finish")
    summary = json.loads(summary_path.read_text())
    if isinstance(summary.get("ssl_images_per_iteration"), list):
        return [int(n) for n in summary["ssl_images_per_iteration"]]
    env = _load_run_config(run_dir).env
    records = _read_jsonl(run_dir / "queries.jsonl") if (run_dir / "queries.jsonl").is_file() else []
    if len(records) != env.query_budget:
        raise ValueError(f"{run_dir}/queries.jsonl holds {len(records)} queries, the budget is {env.query_budget}")
    new = [0] * env.iterations
    for r in records:
        if not r["cached"] and int(r["hits"]) >= env.min_images:
            new[int(r["iteration"])] += int(r["hits"])
    return [n + int(round(env.pcr * n)) if n else 0 for n in new]


def _tiled_indices(n: int, pool: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``range(pool)``: whole shuffled passes, then a random part of one more."""
    passes = math.ceil(n / pool)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


def final_probe(env: Any, seed: int) -> dict[str, Any]:
    """Linear-probe accuracy of ``env``'s current encoder on the target train / test split, as
    ``ie-explore`` reports it at the end of a run (None where evaluation is off or the probe cannot fit)."""
    from ie_env.evaluation.linear_probe import linear_probe_accuracy

    if not env.config.evaluate:
        return {"linear_probe_accuracy": None, "linear_probe_best_C": None}
    try:
        res = linear_probe_accuracy(env.learner.features(env.train_images), env.train_labels,
                                    env.learner.features(env.test_images), env.test_labels, seed=seed)
    except ValueError as exc:  # e.g. a single class: report, don't lose the run
        print(f"[target-only] linear probe skipped: {exc}", file=sys.stderr)
        return {"linear_probe_accuracy": None, "linear_probe_best_C": None}
    return {"linear_probe_accuracy": res["accuracy"], "linear_probe_best_C": res["best_C"]}


def run_target_only(run_cfg: Any, images_per_iteration: list[int], logdir: str | Path | None = None,
                    matched_to: str = "") -> dict[str, Any]:
    """Target-only SSL for ``run_cfg`` (an ``ie_experiments.run.RunConfig``) with the given image counts.

    Writes ``config.yaml``, ``summary.json`` and TensorBoard scalars (same tags as ``ie-explore``)
    under ``logdir`` when given; returns the summary.
    """
    from ie_env.env import InternetExplorerEnv
    from ie_experiments.run import has_ground_truth

    t0 = time.time()
    if any(int(n) < 0 for n in images_per_iteration):
        raise ValueError("images_per_iteration must be non-negative counts")
    env = InternetExplorerEnv(run_cfg.env)
    env.reset(seed=run_cfg.seed)
    knn = list(env.knn_history) or [env.evaluate()]
    train = env.train_images
    steps, losses = [], []
    writer = None
    if logdir is not None:
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(logdir / "config.yaml", yaml.safe_dump(json.loads(json.dumps(to_dict(run_cfg))), sort_keys=False))
        require("tensorboard", "TensorBoard logs of the target-only baseline")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir / "tb"))
    for it, n in enumerate(images_per_iteration, start=1):
        n = int(n)
        if n > 0:
            idx = _tiled_indices(n, len(train), env.rng)
            upd = env.learner.update(train[idx])
            env.counters["ssl_updates"] += 1
            env.target_feats = env.learner.features(env.train_images)
            steps.append(float(upd.get("steps", 0.0)))
            losses.append(float(upd.get("loss", 0.0)))
        else:
            steps.append(0.0)
            losses.append(None)
        knn.append(env.evaluate())
        if writer is not None:
            for k, v in knn[-1].items():
                writer.add_scalar(f"eval/knn_accuracy_k{k}", v, it)
            writer.add_scalar("ssl/images", float(n), it)
            writer.add_scalar("ssl/steps", steps[-1], it)
            if losses[-1] is not None:
                writer.add_scalar("ssl/loss", losses[-1], it)
    summary: dict[str, Any] = {
        "agent": "target_only",
        "seed": run_cfg.seed,
        "iterations": len(images_per_iteration),
        "queries": 0,
        "matched_to": matched_to,
        "knn_accuracy": [h[20] for h in knn if 20 in h],
        "ssl_images_per_iteration": [int(n) for n in images_per_iteration],
        "ssl_steps_per_iteration": steps,
        "ssl_loss_per_iteration": losses,
        # Without ground truth (a search engine, a user's target set) no embedded world to name.
        "world_hash": env.world.fingerprint() if has_ground_truth(run_cfg.env) else None,
        "seconds_this_process": time.time() - t0,
    }
    for k in (10, 200):
        summary[f"knn_accuracy_k{k}"] = [h[k] for h in knn if k in h]
    summary.update(final_probe(env, run_cfg.seed))
    env.close()
    if logdir is not None:
        if summary["linear_probe_accuracy"] is not None:
            writer.add_scalar("eval/linear_probe_accuracy", summary["linear_probe_accuracy"], len(images_per_iteration))
        writer.close()
        atomic_write_text(logdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def target_only_from_run(match_dir: str | Path, logdir: str | Path | None = None, run_cfg: Any = None) -> dict[str, Any]:
    """The target-only baseline compute-matched to the finished exploring run in ``match_dir``.

    ``run_cfg`` defaults to that run's own ``config.yaml`` (same world, learner and seed).
    """
    match_dir = Path(match_dir)
    images = trained_images_per_iteration(match_dir)
    cfg = run_cfg if run_cfg is not None else _load_run_config(match_dir)
    return run_target_only(cfg, images, logdir, matched_to=str(match_dir))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ie_experiments.target_only", description=__doc__.splitlines()[0])
    p.add_argument("--match", required=True, help="finished ie-explore run directory to match (config, seed, SSL images)")
    p.add_argument("--logdir", required=True, help="where to write config.yaml, summary.json and tb/")
    args = p.parse_args(argv)
    out = Path(args.logdir)
    if (out / "summary.json").exists():
        print(f"target_only: error: {out} already holds a finished run", file=sys.stderr)
        return 2
    try:
        summary = target_only_from_run(args.match, out)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"target_only: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("knn_accuracy", "ssl_images_per_iteration", "ssl_steps_per_iteration")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
