"""Environment steps per second, per fidelity and action mode, beside a trivial no-op Gymnasium env.

Prints one JSON object. The ``latent`` rows use ``InternetExplorerLatent-v0`` as shipped (50 images a
query, 20 targets x 10 train images, k = 15, 8 x 16 queries an episode, resets included) with
``info_level=minimal`` (no per-image reward lists, no per-query gains, no k-NN after each iteration;
rewards are still computed from the image latents under the current surrogate) and ``blas_threads=1``
(a process setting: numpy's BLAS in one thread, faster for these tiny products). ``latent_full_info``
is the same with the full info of the paper's loop. Each figure is the best of ``--repeats`` timed
runs in one process; ``cpu_steps_per_second`` divides by this process's CPU time instead of wall
time (the two differ when the machine is shared). ``ratio_to_noop`` compares with a no-op env stepped
the same way in the same run. Rows with ten or more whole episodes also give the median and the 90th
percentile of per-episode rates (an episode's closes and reset included): on a shared machine the
spread between them is other tenants' load. ``latent_vocab_vector8_native`` / ``_sync`` step 8 envs through
``gymnasium.make_vec`` (the package's native vector env / Gymnasium's ``SyncVectorEnv``) and count
every sub-env step.

    python benchmarks/env_steps.py [--steps 20000] [--repeats 3] [--pixels-steps 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import gymnasium as gym
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ie_env  # noqa: E402,F401  (registers the ids)
from ie_env.latent_fast import HAVE_NUMBA  # noqa: E402


class NoopEnv(gym.Env):
    """The cheapest possible Gymnasium env: fixed observation, zero reward."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


def _actions(env: gym.Env, n: int, seed: int) -> list:
    space = env.action_space
    space.seed(seed)
    if isinstance(space, gym.spaces.Discrete):
        return [int(a) for a in np.random.default_rng(seed).integers(0, space.n, size=n)]
    return [space.sample() for _ in range(n)]


def time_steps(env: gym.Env, steps: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Best-of-``repeats`` wall and CPU rates of ``steps`` random steps (resets when an episode ends)."""
    actions = _actions(env, steps, seed)
    env.reset(seed=seed)
    for a in actions[: min(steps, 2000)]:  # warm-up: compiled kernels, caches
        if env.step(a)[3]:
            env.reset()
    best_wall, best_cpu = 0.0, 0.0
    episodes: list[float] = []  # steps per second of each whole episode (its closes and reset included)
    for _ in range(repeats):
        env.reset(seed=seed)
        t0, c0 = time.perf_counter(), time.process_time()
        t_ep, n_ep = t0, 0
        for a in actions:
            n_ep += 1
            if env.step(a)[3]:
                env.reset()
                now = time.perf_counter()
                episodes.append(n_ep / (now - t_ep))
                t_ep, n_ep = now, 0
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best_wall = max(best_wall, steps / wall)
        best_cpu = max(best_cpu, steps / max(cpu, 1e-9))
    out = {"steps_per_second": best_wall, "cpu_steps_per_second": best_cpu}
    if len(episodes) >= 10:  # a shared machine's slow spells spread these; the upper decile is the code uncontended
        out["episode_median_steps_per_second"] = float(np.median(episodes))
        out["episode_p90_steps_per_second"] = float(np.percentile(episodes, 90))
    return out


def time_vector(venv, vector_steps: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Best-of-``repeats`` env steps per second (sub-env steps: ``num_envs`` per call) of a vector env
    stepped with random actions (autoreset inside)."""
    venv.action_space.seed(seed)
    actions = [venv.action_space.sample() for _ in range(vector_steps)]
    venv.reset(seed=seed)
    for a in actions[: min(vector_steps, 300)]:
        venv.step(a)
    best_wall, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        venv.reset(seed=seed)
        t0, c0 = time.perf_counter(), time.process_time()
        for a in actions:
            venv.step(a)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best_wall = max(best_wall, vector_steps * venv.num_envs / wall)
        best_cpu = max(best_cpu, vector_steps * venv.num_envs / max(cpu, 1e-9))
    return {"steps_per_second": best_wall, "cpu_steps_per_second": best_cpu, "num_envs": venv.num_envs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pixels-steps", type=int, default=0, help="steps of InternetExplorer-v0 (SSL in the loop; minutes a reset on a CPU); 0 skips")
    args = p.parse_args(argv)
    lean = {"info_level": "minimal", "evaluate": False, "blas_threads": 1}
    rows: dict[str, dict] = {}
    noop = time_steps(gym.make("ie-bench/Noop-v0", disable_env_checker=True) if "ie-bench/Noop-v0" in gym.registry
                      else _register_noop(), args.steps * 5, args.repeats)
    rows["noop"] = noop
    for mode in ("vocab", "embedding", "slate"):
        env = gym.make("InternetExplorerLatent-v0", config={**lean, "action_mode": mode}, disable_env_checker=True)
        rows[f"latent_{mode}"] = time_steps(env, args.steps, args.repeats)
    # The native vector env (make_vec's default for these ids) and Gymnasium's SyncVectorEnv, 8 envs each.
    for name, mode in (("latent_vocab_vector8_native", "vector_entry_point"), ("latent_vocab_vector8_sync", "sync")):
        venv = gym.make_vec("InternetExplorerLatent-v0", num_envs=8, vectorization_mode=mode,
                            config={**lean, "action_mode": "vocab"})
        rows[name] = time_vector(venv, max(250, args.steps // 8), args.repeats)
        venv.close()
    env = gym.make("InternetExplorerLatent-v0", disable_env_checker=True)
    rows["latent_vocab_full_info"] = time_steps(env, max(1000, args.steps // 10), 1)
    env = gym.make("InternetExplorerLatentRL-v0", disable_env_checker=True)
    rows["latent_rl_slate_fresh_target"] = time_steps(env, max(2000, args.steps // 4), args.repeats)
    if args.pixels_steps:
        env = gym.make("InternetExplorer-v0", disable_env_checker=True)
        rows["pixels_vocab"] = time_steps(env, args.pixels_steps, 1)
    for name, row in rows.items():
        if name != "noop":
            row["ratio_to_noop"] = row["steps_per_second"] / noop["steps_per_second"]
    out = {
        "benchmark": "env_steps",
        "steps_per_second": rows["latent_vocab"]["steps_per_second"],
        "cpu_steps_per_second": rows["latent_vocab"]["cpu_steps_per_second"],
        "config": "InternetExplorerLatent-v0 as shipped, info_level=minimal, evaluate=false, blas_threads=1",
        "rows": rows,
        "numba": HAVE_NUMBA,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))
    return out


def _register_noop() -> gym.Env:
    gym.register("ie-bench/Noop-v0", entry_point=NoopEnv)
    return gym.make("ie-bench/Noop-v0", disable_env_checker=True)


if __name__ == "__main__":
    main()
