"""Run ``ie-compare`` / ``ie-benchmark`` runs as Ray tasks instead of local worker processes.

    ie-benchmark --suite latent --agents random,gp --seeds 5 --out /shared/bench --ray auto
    ie-compare --config experiments/configs/compare_latent.yaml --out /shared/cmp --ray 10.0.0.1:6379

One Ray task per run, the same function the process pool calls (``ie_experiments.compare.execute_run``),
so a run's files and figures are the same whichever backend ran it. The output folder must be on a
filesystem every node sees at the same path (the runs write there, and ``--resume`` reads it back).

A task whose worker process or node dies is retried (``max_retries``) on any node with a free CPU;
the retried run opens its folder with ``resume=True``, so it continues from its last checkpoint
(or starts clean when it had none: a run without a checkpoint truncates its query log). A run that
fails with an error of its own (a crashing agent) is reported, never retried: that would fail again.

The backend is an executor: ``submit(fn, *args)`` returns a ``concurrent.futures.Future`` (Ray's
``ObjectRef.future()``), so ``ie_experiments.compare.execute_all`` schedules on it exactly as on the
process pool.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from ie_env.config import ConfigError

MIN_RAY = (2, 10)  # ObjectRef.future(), task max_retries and ray.init(address=...) as used here
CONNECT_TIMEOUT_S = 5.0

__all__ = ["MIN_RAY", "RayExecutor", "add_ray_arguments", "check_reachable", "executor_from_args", "require_ray"]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming what is missing (not installed, too old)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray: pip install 'ie-env[ray]' ({exc})") from exc
    version = getattr(ray, "__version__", "0")
    if _version_tuple(version) < MIN_RAY:
        raise ConfigError(f"--ray needs Ray >= {'.'.join(map(str, MIN_RAY))}; this is Ray {version}")
    from ray import ObjectRef

    if not hasattr(ObjectRef, "future"):
        raise ConfigError(f"--ray needs ObjectRef.future(), missing in Ray {version}")
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:port`` too), or None for ``auto``."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--ray {address!r}: give 'auto' or the head node's HOST:PORT (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing listens on, within ``timeout`` seconds (``ray.init`` itself would
    retry for a minute or more)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc}; start it with "
            "'ray start --head' or give its head node's address"
        ) from exc


def _run_task(cwd: str, threads: int, fn: Callable[..., Any], args: tuple) -> Any:
    """The body of one Ray task: the pool worker's thread caps, the driver's working folder (so
    relative paths in a config mean the same on every node), then ``fn(*args)``."""
    from ie_experiments.compare import _init_worker

    if os.path.isdir(cwd):
        os.chdir(cwd)
    _init_worker(threads)
    return fn(*args)


def _absolute(arg: Any) -> Any:
    """Run specs and folders with absolute paths: a Ray worker's working folder is its own."""
    from ie_experiments.compare import RunSpec

    if isinstance(arg, RunSpec):
        return replace(arg, run_dir=arg.run_dir.absolute())
    if isinstance(arg, Path):
        return arg.absolute()
    return arg


class RayExecutor:
    """An executor whose every ``submit`` is one Ray task (``threads`` CPUs, ``max_retries``
    retries on a worker's or node's death)."""

    def __init__(self, address: str, threads: int = 1, max_retries: int = 3) -> None:
        if threads < 1 or max_retries < 0:
            raise ConfigError("--threads must be >= 1 and --ray-retries >= 0")
        ray = require_ray()
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
        self._ray = ray
        self.threads = threads
        self.cpus = int(ray.cluster_resources().get("CPU", 0))
        if self.cpus < threads:
            ray.shutdown()
            raise ConfigError(
                f"the Ray cluster at {address} has {self.cpus} CPUs; a run asks for {threads} (--threads)"
            )
        self._task = ray.remote(_run_task).options(num_cpus=threads, max_retries=max_retries, retry_exceptions=False)
        self._cwd = os.getcwd()

    @property
    def slots(self) -> int:
        """How many runs to keep in flight: Ray queues the rest by their CPUs."""
        return max(1, self.cpus // self.threads)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._task.remote(self._cwd, self.threads, fn, tuple(_absolute(a) for a in args)).future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|HOST:PORT",
        help="run each run as a Ray task on this cluster (default: local worker processes); "
        "--out must be on a filesystem all nodes share",
    )
    p.add_argument(
        "--ray-retries",
        type=int,
        default=3,
        help="retries of a run whose worker or node dies (it resumes from its last checkpoint)",
    )


def executor_from_args(args: argparse.Namespace) -> RayExecutor | None:
    """A connected RayExecutor when ``--ray`` was given, else None; ConfigError on bad input."""
    if not getattr(args, "ray", None):
        return None
    if getattr(args, "workers", None) is not None:
        raise ConfigError("--workers is for local worker processes; with --ray the cluster's CPUs set the parallelism")
    return RayExecutor(args.ray, threads=args.threads or 1, max_retries=args.ray_retries)
