"""The retrieval baseline: DINOv2-style retrieval from the world's uncaptioned pool, at the image budget
of an exploring run, with the same SSL in the loop.

It builds the same environment and learner as the exploring run it is matched to (same config and
seed: the same target, initial weights and warm-up). For each iteration of that run it retrieves as
many new images as the run downloaded (queries neither cached nor under ``min_images`` hits): every
pool image is embedded with the *current* encoder and the ``k`` nearest pool images of each target
train image are taken (sample-based retrieval, DINOv2), ``k`` growing until the budget is met, the
closest first, never an image taken before. The learner then trains exactly as the environment's
iteration close does (the new images plus ``pcr`` x as many from the target train set and replay; the
best ``replay_fraction`` of the new images by reward join the replay buffer), and k-NN is evaluated;
at the end, the linear probe, as ``ie-explore`` and the target-only baseline report it.
The pool is the embedded world's pool view (:mod:`ie_env.curation.world_pool`): ``per_concept``
images of every vocabulary concept, without captions; their concepts are used only to score the
selection against ground-truth relevance g (coverage figures as ``ie-explore`` reports them).

    python -m ie_experiments.retrieval_baseline --match runs/gp-seed0 --logdir runs/retrieval-seed0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ie_env.config import ConfigError, atomic_write_text, to_dict

__all__ = ["check_retrieval_config", "main", "new_images_per_iteration", "retrieval_from_run", "run_retrieval"]


def check_retrieval_config(run_cfg: Any) -> None:
    """Refuse a run config the retrieval baseline cannot serve: it embeds the embedded world's pool
    images, so it needs ``world.fidelity: pixels`` and the embedded world (engine and target)."""
    from ie_experiments.run import has_ground_truth

    if run_cfg.env.world.fidelity != "pixels":
        raise ConfigError(
            "the retrieval baseline embeds images: it needs env.world.fidelity: pixels "
            f"(got {run_cfg.env.world.fidelity!r}); leave retrieval out for a latent comparison"
        )
    if not has_ground_truth(run_cfg.env):
        raise ConfigError(
            "the retrieval baseline retrieves from the embedded world's pool: it needs env.engine.name: embedded "
            f"and env.target.kind: embedded (got {run_cfg.env.engine.name!r}, {run_cfg.env.target.kind!r})"
        )


def new_images_per_iteration(run_dir: str | Path) -> list[int]:
    """New images the finished exploring run in ``run_dir`` downloaded, per iteration (its trained
    images minus the ``pcr`` x as many mixed in, recovered exactly from the environment's rule)."""
    from ie_experiments.target_only import _load_run_config, trained_images_per_iteration

    pcr = _load_run_config(Path(run_dir)).env.pcr
    out = []
    for total in trained_images_per_iteration(run_dir):
        guess = round(total / (1.0 + pcr))
        n = next((m for m in range(max(0, guess - 2), guess + 3) if m + round(pcr * m) == total), None)
        if n is None:
            raise ValueError(f"{run_dir}: {total} trained images is not n + round({pcr} n) for any n")
        out.append(n)
    return out


def _retrieve(feats: np.ndarray, targets: np.ndarray, budget: int, taken: np.ndarray) -> np.ndarray:
    """``budget`` rows not yet ``taken``: the union of each target's nearest rows, ``k`` growing."""
    from ie_env.curation.index import VectorIndex
    from ie_env.curation.retrieval import sample_based

    index = VectorIndex(feats, kind="flat")
    allowed = ~taken
    budget = min(budget, int(allowed.sum()))
    k = max(1, -(-budget // max(len(targets), 1)))
    while True:
        rows, score = sample_based(index, targets, k, allowed)
        if len(rows) >= budget or k >= allowed.sum():
            break
        k *= 2
    order = np.argsort(-score, kind="stable")[:budget]
    return np.sort(rows[order])


def run_retrieval(
    run_cfg: Any,
    new_per_iteration: list[int],
    per_concept: int = 8,
    logdir: str | Path | None = None,
    matched_to: str = "",
) -> dict[str, Any]:
    """Retrieval SSL for ``run_cfg`` (an ``ie_experiments.run.RunConfig``) with the given new-image counts.

    Writes ``config.yaml``, ``summary.json`` and TensorBoard scalars under ``logdir`` when given.
    """
    from ie_env.curation.world_pool import NS_POOL
    from ie_env.env import InternetExplorerEnv
    from ie_experiments.target_only import final_probe

    t0 = time.time()
    check_retrieval_config(run_cfg)
    if any(int(n) < 0 for n in new_per_iteration) or per_concept < 1:
        raise ValueError("new image counts must be >= 0 and per_concept >= 1")
    env = InternetExplorerEnv(run_cfg.env)
    env.reset(seed=run_cfg.seed)
    world = env.world
    concepts = np.repeat(np.arange(len(world.vocabulary)), per_concept)
    pool = world.images(concepts, np.arange(len(concepts)), NS_POOL)
    g = world.relevance
    taken = np.zeros(len(pool), bool)
    knn = list(env.knn_history) or [env.evaluate()]
    writer = None
    if logdir is not None:
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            logdir / "config.yaml", yaml.safe_dump(json.loads(json.dumps(to_dict(run_cfg))), sort_keys=False)
        )
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir / "tb"))
    per_it: dict[str, list] = {
        "new_relevant_images": [],
        "relevant_share": [],
        "mean_true_relevance": [],
        "ssl_images": [],
        "ssl_steps": [],
        "ssl_loss": [],
    }
    relevant_concepts: set[int] = set()
    classes_hit: set[int] = set()
    for it, n in enumerate(new_per_iteration, start=1):
        n = int(n)
        rows = np.zeros(0, np.int64)
        if n > 0:
            feats = env.learner.features(pool).numpy()
            rows = _retrieve(feats, env.target_feats.cpu().numpy(), n, taken)
            taken[rows] = True
            fresh = pool[rows]
            rewards = env._score(fresh)
            upd = env.learner.update(env._training_batch(fresh, len(rows)))
            env.replay.add_top(fresh, rewards, run_cfg.env.replay_fraction)
            env._refresh_targets()
            per_it["ssl_images"].append(len(rows) + int(round(run_cfg.env.pcr * len(rows))))
            per_it["ssl_steps"].append(float(upd.get("steps", 0.0)))
            per_it["ssl_loss"].append(float(upd.get("loss", 0.0)))
        else:
            per_it["ssl_images"].append(0)
            per_it["ssl_steps"].append(0.0)
            per_it["ssl_loss"].append(None)
        rel = g[concepts[rows]]
        hit = rel >= 0.5
        relevant_concepts.update(concepts[rows][hit].tolist())
        classes_hit.update(world.nearest_target[concepts[rows][hit]].tolist())
        per_it["new_relevant_images"].append(int(hit.sum()))
        per_it["relevant_share"].append(float(hit.mean()) if len(rows) else float("nan"))
        per_it["mean_true_relevance"].append(float(rel.mean()) if len(rows) else float("nan"))
        knn.append(env.evaluate())
        if writer is not None:
            for k, v in knn[-1].items():
                writer.add_scalar(f"eval/knn_accuracy_k{k}", v, it)
            writer.add_scalar("coverage/new_relevant_images", float(sum(per_it["new_relevant_images"])), it)
            writer.add_scalar("retrieval/relevant_share", per_it["relevant_share"][-1], it)
    summary: dict[str, Any] = {
        "agent": "retrieval",
        "seed": run_cfg.seed,
        "iterations": len(new_per_iteration),
        "queries": 0,
        "matched_to": matched_to,
        "pool_images": len(pool),
        "knn_accuracy": [h[20] for h in knn if 20 in h],
        "new_images_per_iteration": [int(n) for n in new_per_iteration],
        "new_relevant_images_per_iteration": per_it["new_relevant_images"],
        "retrieved_relevant_share_per_iteration": per_it["relevant_share"],
        "mean_true_relevance_per_iteration": per_it["mean_true_relevance"],
        "new_relevant_images": int(sum(per_it["new_relevant_images"])),
        "distinct_relevant_concepts": len(relevant_concepts),
        "target_classes_hit_share": len(classes_hit) / len(world.target_ids),
        "ssl_images_per_iteration": per_it["ssl_images"],
        "ssl_steps_per_iteration": per_it["ssl_steps"],
        "ssl_loss_per_iteration": per_it["ssl_loss"],
        "world_hash": world.fingerprint(),
        "seconds_this_process": time.time() - t0,
    }
    for k in (10, 200):
        summary[f"knn_accuracy_k{k}"] = [h[k] for h in knn if k in h]
    summary.update(final_probe(env, run_cfg.seed))
    env.close()
    if writer is not None:
        if summary["linear_probe_accuracy"] is not None:
            writer.add_scalar("eval/linear_probe_accuracy", summary["linear_probe_accuracy"], len(new_per_iteration))
        writer.close()
        atomic_write_text(Path(logdir) / "summary.json", json.dumps(summary, indent=2))
    return summary


def retrieval_from_run(
    match_dir: str | Path, logdir: str | Path | None = None, run_cfg: Any = None, per_concept: int = 8
) -> dict[str, Any]:
    """The retrieval baseline at the image budget of the finished exploring run in ``match_dir``."""
    from ie_experiments.target_only import _load_run_config

    match_dir = Path(match_dir)
    cfg = run_cfg if run_cfg is not None else _load_run_config(match_dir)
    return run_retrieval(cfg, new_images_per_iteration(match_dir), per_concept, logdir, matched_to=str(match_dir))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ie_experiments.retrieval_baseline", description=__doc__.splitlines()[0])
    p.add_argument("--match", required=True, help="finished ie-explore run directory (config, seed, image budget)")
    p.add_argument("--logdir", required=True, help="where to write config.yaml, summary.json and tb/")
    p.add_argument("--per-concept", type=int, default=8, help="pool images per vocabulary concept")
    args = p.parse_args(argv)
    out = Path(args.logdir)
    if (out / "summary.json").exists():
        print(f"retrieval_baseline: error: {out} already holds a finished run", file=sys.stderr)
        return 2
    try:
        summary = retrieval_from_run(args.match, out, per_concept=args.per_concept)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"retrieval_baseline: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("knn_accuracy", "new_images_per_iteration", "new_relevant_images")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
