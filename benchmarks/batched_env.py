"""Steps per second of the batched latent env (:mod:`ie_env.batched`) beside the scalar env and a no-op env.

Prints one JSON object. Rows, all measured in this one run on the same machine:

* ``batched``: ``BatchedLatentVectorEnv`` of ``--task`` (slate actions, as registered) with ``--num-envs``
  episodes on ``--device``, random slate actions, autoresets included; steps/s counts every episode's step.
* ``scalar``: one ``gymnasium.make(task)`` env (the same task, its numba-compiled lean step), random
  actions, resets included.
* ``noop``: a Gymnasium env that does nothing, stepped as the scalar one.

``ratio_to_scalar`` and ``ratio_to_noop`` divide the batched figure by theirs. CPU time per step is given
beside wall time: on a shared machine the two differ. ``--gpu`` is the prepared GPU variant
(``--device cuda --num-envs 4096``), refused where CUDA is not available.

    nice -n 10 python benchmarks/batched_env.py [--num-envs 256] [--device cpu] [--batched-steps 256]
    python benchmarks/batched_env.py --gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ie_env  # noqa: F401  (registers the ids)
from benchmarks.env_steps import NoopEnv  # the same no-op peer as env_steps.py
from ie_env.batched import BatchedLatentVectorEnv
from ie_env.suite import task_config


def _timed(fn, steps_per_call: int, calls: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = steps_per_call * calls
    return {"steps": n, "wall_s": wall, "steps_per_second": n / wall, "cpu_steps_per_second": n / max(cpu, 1e-9)}


def time_scalar(env: gym.Env, steps: int, seed: int = 0) -> dict[str, float]:
    env.reset(seed=seed)
    acts = np.random.default_rng(seed).integers(0, env.action_space.n, size=steps).tolist()
    it = iter(acts)

    def one():
        _, _, term, trunc, _ = env.step(next(it))
        if term or trunc:
            env.reset()

    for _ in range(min(64, steps // 4)):  # warm-up (compiled kernels, caches)
        one()
    it = iter(acts)
    env.reset(seed=seed)
    return _timed(one, 1, steps)


def time_batched(venv: BatchedLatentVectorEnv, batches: int, seed: int = 0) -> dict[str, float]:
    venv.reset_tensors(seed=seed)
    gen = torch.Generator(device=venv.device).manual_seed(seed)
    n = venv.single_action_space.n

    def one():
        venv.step_tensors(torch.randint(0, n, (venv.num_envs,), generator=gen, device=venv.device))
        if venv.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(8):
        one()
    return _timed(one, venv.num_envs, batches)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="IELatent-Standard-v1")
    p.add_argument("--num-envs", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batched-steps", type=int, default=256, help="batched steps (each steps every episode)")
    p.add_argument("--scalar-steps", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the task's blas_threads)")
    p.add_argument("--gpu", action="store_true", help="the GPU variant: --device cuda --num-envs 4096")
    args = p.parse_args(argv)
    if args.gpu:
        args.device, args.num_envs = "cuda", max(args.num_envs, 4096)
    try:
        venv = BatchedLatentVectorEnv(task_config(args.task), args.num_envs, device=args.device, task_id=args.task)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, float]] = {}
    rows["batched"] = time_batched(venv, args.batched_steps)
    rows["scalar"] = time_scalar(gym.make(args.task, disable_env_checker=True).unwrapped, args.scalar_steps)
    rows["noop"] = time_scalar(NoopEnv(), args.scalar_steps * 5)
    b = rows["batched"]
    b["ratio_to_scalar"] = b["steps_per_second"] / rows["scalar"]["steps_per_second"]
    b["ratio_to_noop"] = b["steps_per_second"] / rows["noop"]["steps_per_second"]
    b["cpu_ratio_to_scalar"] = b["cpu_steps_per_second"] / rows["scalar"]["cpu_steps_per_second"]
    out = {
        "benchmark": "batched_env", "task": args.task, "action_mode": venv.mode_name, "num_envs": args.num_envs,
        "device": str(venv.device), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(venv.device) if venv.device.type == "cuda" else None,
        "commit": _commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
