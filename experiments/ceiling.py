"""How much of the gap the paper's tiered sampler can close on a world, whatever model predicts the rewards.

The GP sampler ranks concepts by a prediction of their query reward. Two upper references replace
that prediction by exact values (sigma = 0), keeping every other part of the sampler (uniform first
iteration, tempered softmax with SMR, rank tiers, batches drawn with replacement):

* ``g_known``: ranked by ground-truth relevance g itself. Its expected gap closed is exact
  (``p . g``, no sampling), the same every iteration (averaged over the seeds' targets where each
  episode draws its own).
* ``reward_known``: ranked by each concept's exact current query reward (``peek_query_rewards``:
  what the query would return under the current encoder), recomputed every iteration while the
  episode runs and trains on what was drawn. Gap closed as ``ie-compare`` measures it (the mean g of
  the drawn queries), per seed, over the second half of the budget and the whole run.

A model-based sampler can approach ``reward_known`` but not exceed it in expectation; the gap between
``reward_known`` and ``g_known`` is what the reward's disagreement with g costs.

    python -m ie_experiments.ceiling --config experiments/configs/compare_latent.yaml --seeds 10
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np

from ie_agents.gp_sampler import GPSamplerConfig, build_config, tiered_distribution
from ie_env.config import ConfigError
from ie_env.env import InternetExplorerEnv
from ie_experiments.compare import gap_closed, load_compare_config, mean_std
from ie_experiments.run import agent_kwargs

__all__ = ["expected_gap_g_known", "reward_known_run", "main"]


def expected_gap_g_known(g: np.ndarray, smr: float, tier_sizes: Sequence[int], tier_masses: Sequence[float]) -> float:
    """Expected gap closed of one draw from the tiered distribution over ``r = g``."""
    g = np.asarray(g, dtype=np.float64)
    p, _ = tiered_distribution(g, smr, tuple(tier_sizes), tuple(tier_masses))
    return float(gap_closed(p @ g, float(g.mean()), float(g.max())))


def reward_known_run(env: InternetExplorerEnv, seed: int, smr: float, tier_sizes: Sequence[int],
                     tier_masses: Sequence[float]) -> dict[str, Any]:
    """One episode of the tiered sampler over exact current query rewards; its gap closed per iteration,
    and ``g_known`` for the episode's target (with ``targets.mode`` train / heldout each reset draws one)."""
    cfg = env.config
    env.reset(seed=seed)
    g = env.ground_truth_relevance().astype(np.float64)
    n, M = len(g), cfg.queries_per_iteration
    rng = np.random.default_rng(seed)
    per_it: list[float] = []
    for it in range(cfg.iterations):
        if it == 0:
            batch = rng.choice(n, size=M, replace=True)
        else:
            p, _ = tiered_distribution(env.peek_query_rewards(), smr, tuple(tier_sizes), tuple(tier_masses))
            batch = rng.choice(n, size=M, replace=True, p=p)
        for a in batch:
            env.step(int(a))
        per_it.append(float(gap_closed(g[batch].mean(), float(g.mean()), float(g.max()))))
    half = cfg.iterations // 2
    return {"seed": seed, "gap_per_iteration": per_it, "gap_second_half": float(np.mean(per_it[half:])),
            "gap_all": float(np.mean(per_it)), "g_known": expected_gap_g_known(g, smr, tier_sizes, tier_masses)}


def parse_tiers(items: list[str]) -> list[tuple[int, ...]]:
    """``["50,150", "250,750"]`` -> ``[(50, 150), (250, 750)]``."""
    out = []
    for item in items:
        try:
            sizes = tuple(int(v) for v in item.split(","))
        except ValueError:
            raise ConfigError(f"--tiers takes comma-separated tier sizes such as 50,150, got {item!r}") from None
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"tier sizes must be positive integers, got {item!r}")
        out.append(sizes)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m ie_experiments.ceiling", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="an ie-explore / ie-compare config (default: the shipped default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--tiers", nargs="*", default=None,
                   help="tier sizes to compare, e.g. 50,150 250,750 (default: the gp agent's from the config)")
    args = p.parse_args(argv)
    try:
        cfg, _ = load_compare_config(args.config, args.overrides)
        gp_cfg = build_config(GPSamplerConfig, agent_kwargs(cfg, "gp"), {})
        tiers = parse_tiers(args.tiers) if args.tiers else [tuple(gp_cfg.tier_sizes)]
        for sizes in tiers:
            if len(sizes) != len(gp_cfg.tier_masses) - 1:
                raise ConfigError(f"tiers {','.join(map(str, sizes))}: the gp agent's tier_masses "
                                  f"{list(gp_cfg.tier_masses)} need {len(gp_cfg.tier_masses) - 1} tier sizes")
        if args.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
    except (ConfigError, TypeError, ValueError) as exc:
        print(f"ceiling: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    env = InternetExplorerEnv(cfg.env)
    rows: dict[str, Any] = {}
    for sizes in tiers:
        runs = [reward_known_run(env, s, gp_cfg.smr, sizes, gp_cfg.tier_masses)
                for s in range(args.first_seed, args.first_seed + args.seeds)]
        rows[",".join(map(str, sizes))] = {
            "g_known": float(np.mean([r["g_known"] for r in runs])),
            "reward_known_second_half": mean_std([r["gap_second_half"] for r in runs]),
            "reward_known_all": mean_std([r["gap_all"] for r in runs]),
            "per_seed_second_half": [round(r["gap_second_half"], 4) for r in runs],
        }
    out = {"benchmark": "sampler_ceiling", "config": args.config, "overrides": args.overrides, "seeds": args.seeds,
           "first_seed": args.first_seed, "smr": gp_cfg.smr, "tier_masses": list(gp_cfg.tier_masses),
           "fidelity": cfg.env.world.fidelity, "concepts": len(env.vocabulary), "iterations": cfg.env.iterations,
           "queries_per_iteration": cfg.env.queries_per_iteration, "tiers": rows}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
