"""Construction and reset seconds of every registered id (``gymnasium.make`` and ``reset``).

Prints one JSON object: per id, ``first_make_s`` (the first env of that id in this process: world
arrays built, or taken from the per-process store when an earlier id shares them), ``make_s`` (a
further env of the same id: what each extra env of a ``SyncVectorEnv`` costs), ``reset_s`` (median
of ``--resets`` seeded resets; pixels ids run their SSL warm-up in it) and ``builds`` (arrays built
for it). ``import_s`` is the time to import the package (torch included).

    python benchmarks/env_construction.py [--resets 5] [--skip-pixels]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resets", type=int, default=5)
    p.add_argument("--skip-pixels", action="store_true", help="leave out pixels ids (their reset trains the SSL warm-up)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import gymnasium as gym
    import numpy as np

    import ie_env
    import ie_env.env  # noqa: F401
    from ie_env import suite
    from ie_env.worlds import shared

    out: dict = {"import_s": time.perf_counter() - t0, "python": platform.python_version(), "cpus": os.cpu_count(),
                 "ids": {}}
    for env_id in list(ie_env.ENV_IDS) + list(suite.TASKS):
        if args.skip_pixels and gym.spec(env_id).nondeterministic:
            continue
        before = dict(shared.BUILDS)
        t = time.perf_counter()
        env = gym.make(env_id)
        first = time.perf_counter() - t
        builds = {k: v - before.get(k, 0) for k, v in shared.BUILDS.items() if v - before.get(k, 0)}
        t = time.perf_counter()
        gym.make(env_id).close()
        again = time.perf_counter() - t
        resets = []
        n = args.resets if not gym.spec(env_id).nondeterministic else min(args.resets, 2)
        for s in range(n):
            t = time.perf_counter()
            env.reset(seed=s)
            resets.append(time.perf_counter() - t)
        out["ids"][env_id] = {"first_make_s": first, "make_s": again, "reset_s": float(np.median(resets)),
                              "resets": n, "builds": builds}
        env.close()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
