"""``ie-compare``: run several agents x seeds on one config and compare them.

    ie-compare --agents gp,random,uniform,oracle --seeds 3 --config experiments/configs/compare_latent.yaml --out cmp/

Every agent x seed is one ``ie-explore`` run in ``OUT/runs/<agent>/seed<k>`` (TensorBoard shows them
side by side with ``tensorboard --logdir OUT/runs``), run in parallel worker processes. The
target-only baseline (SSL on the target train set alone, compute-matched to one exploring agent's
run of the same seed, DESIGN §7) is one more row, in ``OUT/runs/target_only/seed<k>``. Then
``OUT/results.json`` (per agent: mean and std over seeds of every curve and figure; ``paired``: every
agent minus every baseline present, per seed, of final k-NN and linear-probe accuracy, with a
bootstrap 95% interval over seeds, :mod:`ie_experiments.paired`), ``OUT/results.md`` (the tables) and
PNG figures. Runs of one seed share the target and the initial weights (``reset(seed)`` fixes both),
which is what makes the per-seed differences paired. With ``--retrieval`` (pixels fidelity, the
embedded world) the retrieval baseline (:mod:`ie_experiments.retrieval_baseline`: as many new images per
iteration as the same exploring run downloaded, retrieved by image embedding from the world's
uncaptioned pool, with the same SSL in the loop) is one more row, in ``OUT/runs/retrieval/seed<k>``.

On a search engine (``env.engine.name`` other than ``embedded``, e.g. ``local_corpus``) ground truth
is unknown: g-based figures (gap closed, regret, coverage) are None and their plots absent, while
rewards, k-NN, the probe and the paired differences are reported (:func:`world_reference`).

Definitions (DESIGN §7). ``g`` is the ground-truth relevance of a query's concept. The random
policy's expected value ``r`` is the mean of ``g`` over the vocabulary; the oracle value ``o`` is the
best achievable mean ``g``, ``max g``: every query counts its concept's ``g``, so querying a best
concept every time achieves it, and it is 1 (the targets are in the vocabulary). ``gap_closed =
(mean g - r) / (o - r)``: random sits at 0 in expectation, a policy that queries only target
concepts at 1 (the ``oracle`` agent with ``top_k`` = number of targets; with its default
``top_k=100`` it spreads over near-target concepts and closes less). Regret is
``cumsum(o - g)`` over the queries. Std is over seeds, with ``ddof=1``.

A config file is an ``ie-explore`` config with an optional ``compare:`` section
(:class:`CompareSettings`); command-line flags override it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ie_env.config import ConfigError, apply_overrides, atomic_write_text, from_dict, load_yaml, merge, to_dict
from ie_experiments.paired import DEFAULT_REPS, paired_comparisons, paired_markdown

TARGET_ONLY = "target_only"
RETRIEVAL = "retrieval"
BASELINE_ROWS = (TARGET_ONLY, RETRIEVAL)  # rows run by ie-compare itself, matched to an exploring agent
RESULT_FILES = ("results.json", "results.md", "compare.yaml")
FIGURE_FILES = ("reward.png", "knn.png", "regret.png")


@dataclass
class CompareSettings:
    """The ``compare:`` section of a config file."""

    agents: list[str] = field(default_factory=lambda: ["gp", "random", "uniform", "oracle"])
    seeds: int = 3  # seeds first_seed .. first_seed + seeds - 1
    first_seed: int = 0
    target_only: bool = True  # add the compute-matched target-only baseline as a row
    retrieval: bool = False  # add the retrieval baseline (pixels only) as a row, matched like target-only
    retrieval_per_concept: int = 8  # pool images per vocabulary concept of the retrieval baseline
    match: str = ""  # agent whose runs the baselines match ("" = gp when compared, else the first agent)
    agent_configs: dict[str, Any] = field(default_factory=dict)  # per agent label: make_agent kwargs
    base: str = ""  # another config file, relative to this one; this file's values override it

    def validate(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"compare.seeds must be at least 1, got {self.seeds}")
        if self.first_seed < 0:
            raise ConfigError(f"compare.first_seed must be >= 0, got {self.first_seed}")
        if self.retrieval_per_concept < 1:
            raise ConfigError(f"compare.retrieval_per_concept must be at least 1, got {self.retrieval_per_concept}")
        for label, cfg in self.agent_configs.items():
            if not isinstance(cfg, dict):
                raise ConfigError(f"compare.agent_configs.{label} must be a mapping, got {cfg!r}")


@dataclass
class AgentSpec:
    label: str  # folder name and table row
    name: str  # registry name given to make_agent


@dataclass
class RunSpec:
    label: str
    seed: int
    run_dir: Path
    cfg: Any  # ie_experiments.run.RunConfig
    match_key: str | None = None  # target-only and retrieval: the exploring run it is matched to

    @property
    def key(self) -> str:
        return f"{self.label}/seed{self.seed}"

    @property
    def is_target_only(self) -> bool:
        return self.label == TARGET_ONLY

    @property
    def is_retrieval(self) -> bool:
        return self.label == RETRIEVAL


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_compare_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> tuple[Any, CompareSettings]:
    """(RunConfig, CompareSettings) from a config file (default: ie-explore's) and ``--set`` overrides."""
    from ie_experiments.run import DEFAULT_CONFIG, RunConfig

    path = Path(path) if path is not None else DEFAULT_CONFIG
    data = load_yaml(path)
    section = data.pop("compare", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: the compare section must be a mapping")
    settings = from_dict(CompareSettings, section, prefix="compare.")
    if settings.base:
        base_path = (path.parent / settings.base).resolve()
        if not base_path.is_relative_to(path.parent.resolve()):
            raise ConfigError(f"{path}: compare.base {settings.base!r} resolves to {base_path}, outside the config's "
                              f"folder {path.parent}; refused (a base config lives beside the config or below it)")
        base = load_yaml(base_path)
        base.pop("compare", None)
        data = _deep_merge(base, data)
    cfg = merge(RunConfig(), data)
    return apply_overrides(cfg, list(overrides)), settings


def parse_agents(items: list[str]) -> list[AgentSpec]:
    """``["gp", "ppo=sb3:runs/ppo.zip"]`` -> specs; labels are folder-safe and unique."""
    specs, seen = [], set()
    for item in items:
        item = item.strip()
        if not item:
            continue
        label, name = item.split("=", 1) if "=" in item and ":" not in item.split("=", 1)[0] else ("", item)
        name = name.strip()
        label = label.strip() or re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "agent"
        if not re.fullmatch(r"[A-Za-z0-9._-]+", label):
            raise ConfigError(f"agent label {label!r} may hold only letters, digits, '.', '_' and '-'")
        if label in BASELINE_ROWS and name != label:
            raise ConfigError(f"the label {label!r} is reserved for the {label.replace('_', '-')} baseline")
        if label in seen:
            raise ConfigError(f"agent {label!r} is listed twice; give one of them a label (LABEL=NAME)")
        seen.add(label)
        specs.append(AgentSpec(label, name))
    return specs


def agent_config_for(spec: AgentSpec, cfg: Any, settings: CompareSettings) -> dict[str, Any]:
    """Per-agent kwargs: the base config's (``agent_defaults[name]``, then ``agent_config`` when the
    base config's ``agent`` is this agent; see ``ie_experiments.run.agent_kwargs``) updated by
    ``compare.agent_configs[label]`` (or ``[name]``)."""
    from ie_experiments.run import agent_kwargs

    out = agent_kwargs(cfg, spec.name)
    for key in (spec.label, spec.name):
        if key in settings.agent_configs:
            out.update(settings.agent_configs[key])
            break
    return out


def check_agents(agents: list[AgentSpec], cfg: Any, settings: CompareSettings) -> None:
    """Build each agent once so that an unknown name or option fails before anything runs."""
    from ie_agents.registry import make_agent

    for spec in agents:
        try:
            make_agent(spec.name, **agent_config_for(spec, cfg, settings))
        except Exception as exc:  # unknown name, bad option, unreadable model file ...
            raise ConfigError(f"agent {spec.name!r}: {exc}") from exc


def match_label(agents: list[AgentSpec], settings: CompareSettings) -> str:
    labels = [a.label for a in agents]
    if settings.match:
        if settings.match not in labels:
            raise ConfigError(f"--match {settings.match!r} is not among the compared agents ({', '.join(labels)})")
        return settings.match
    if not labels:
        raise ConfigError("the target-only baseline needs an exploring agent to match")
    return "gp" if "gp" in labels else labels[0]


def plan_runs(out: Path, cfg: Any, agents: list[AgentSpec], settings: CompareSettings) -> list[RunSpec]:
    seeds = range(settings.first_seed, settings.first_seed + settings.seeds)
    specs = []
    for a in agents:
        for s in seeds:
            run_cfg = replace(cfg, agent=a.name, agent_config=agent_config_for(a, cfg, settings), seed=s)
            specs.append(RunSpec(a.label, s, out / "runs" / a.label / f"seed{s}", run_cfg))
    if settings.target_only:
        m = match_label(agents, settings)
        for s in seeds:
            run_cfg = replace(cfg, agent=TARGET_ONLY, agent_config={}, seed=s)
            specs.append(RunSpec(TARGET_ONLY, s, out / "runs" / TARGET_ONLY / f"seed{s}", run_cfg, match_key=f"{m}/seed{s}"))
    if settings.retrieval:
        m = match_label(agents, settings)
        for s in seeds:
            run_cfg = replace(cfg, agent=RETRIEVAL, agent_config={"per_concept": settings.retrieval_per_concept},
                              seed=s)
            specs.append(RunSpec(RETRIEVAL, s, out / "runs" / RETRIEVAL / f"seed{s}", run_cfg,
                                 match_key=f"{m}/seed{s}"))
    return specs


def is_finished(run_dir: Path) -> bool:
    try:
        return isinstance(json.loads((run_dir / "summary.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _plain(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(to_dict(cfg)))


def prepare_out(out: Path, cfg: Any, overwrite: bool, resume: bool) -> None:
    """Refuse an output folder with earlier results unless ``overwrite`` (delete them) or ``resume``
    (same run config: keep the finished runs, run the missing ones)."""
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other")
    earlier = [n for n in (*RESULT_FILES, "runs") if (out / n).exists()]
    if earlier and not (overwrite or resume):
        done = sum(1 for p in (out / "runs").glob("*/seed*") if is_finished(p)) if (out / "runs").is_dir() else 0
        raise FileExistsError(
            f"{out} already holds an earlier comparison ({', '.join(earlier)}; {done} finished runs); pass --resume "
            "to run only the missing or unfinished runs, or --overwrite to delete them and start over"
        )
    if overwrite:
        if (out / "runs").is_dir():
            shutil.rmtree(out / "runs")
        for name in (*RESULT_FILES, *FIGURE_FILES):
            (out / name).unlink(missing_ok=True)
    saved_path = out / "compare.yaml"
    if resume and saved_path.is_file():
        saved = (yaml.safe_load(saved_path.read_text()) or {}).get("run_config", {})
        diff = _diff_keys({k: v for k, v in saved.items() if k not in ("agent", "agent_config", "seed")},
                          {k: v for k, v in _plain(cfg).items() if k not in ("agent", "agent_config", "seed")})
        if diff:
            raise ConfigError(
                f"refusing to resume {out}: the config differs from the saved one in {', '.join(diff)}; "
                "use the same config or a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # ie-compare was killed: stop too (runs resume from checkpoints)
            os._exit(3)


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Cap a worker's torch and BLAS threads (workers x threads <= CPUs: oversubscribed BLAS
    threads slow numpy's SVDs and matmuls by an order of magnitude), and end it with its parent."""
    if parent is not None:
        import threading

        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass


def execute_run(spec: RunSpec, match_dir: Path | None = None) -> dict[str, Any]:
    """One run, in whatever process calls it; never raises (a failure is returned, and kept in
    ``error.txt`` in the run folder)."""
    t0 = time.time()
    try:
        if spec.is_target_only:
            from ie_experiments.target_only import target_only_from_run

            if match_dir is None:
                raise ValueError("a target-only run needs the run it is matched to")
            target_only_from_run(match_dir, spec.run_dir, run_cfg=spec.cfg)
        elif spec.is_retrieval:
            from ie_experiments.retrieval_baseline import retrieval_from_run

            if match_dir is None:
                raise ValueError("a retrieval run needs the run it is matched to")
            retrieval_from_run(match_dir, spec.run_dir, run_cfg=spec.cfg,
                               per_concept=int(spec.cfg.agent_config.get("per_concept", 8)))
        else:
            from ie_experiments.run import Runner

            runner = Runner(spec.cfg, spec.run_dir, resume=True, progress=False)
            runner.run(resume=True)
        (spec.run_dir / "error.txt").unlink(missing_ok=True)
        return {"status": "ok", "seconds": time.time() - t0}
    except Exception as exc:  # a crashing seed is reported, never takes the others down
        tb = traceback.format_exc()
        try:
            atomic_write_text(spec.run_dir / "error.txt", tb)
        except OSError:
            pass
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:], "seconds": time.time() - t0}


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[ie-compare] {msg}", file=sys.stderr, flush=True)


def execute_all(specs: list[RunSpec], workers: int, threads: int, quiet: bool = False,
                executor: Any = None) -> dict[str, dict[str, Any]]:
    """Run ``specs``: ``workers`` >= 1 worker processes, or 0 for in-process, one after another; or,
    given an ``executor`` (``submit(fn, *args) -> Future``, ``slots``, ``shutdown()``; e.g.
    :class:`ie_experiments.ray_backend.RayExecutor`), on it, ``executor.slots`` runs in flight.

    A target-only or retrieval run starts once the run it is matched to has finished; if that run
    failed, it is reported failed too. A worker process that dies fails the runs it held.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    by_key = {s.key: s for s in specs}
    ready: deque[RunSpec] = deque()
    blocked: dict[str, list[RunSpec]] = {}
    for s in specs:
        dep = by_key.get(s.match_key) if s.match_key else None
        if s.match_key and dep is None and not is_finished(s.run_dir.parent.parent / s.match_key.replace("/", os.sep)):
            outcomes[s.key] = {"status": "failed", "error": f"its compute-matched run {s.match_key} is missing", "seconds": 0.0}
        elif dep is not None:
            blocked.setdefault(dep.key, []).append(s)
        else:
            ready.append(s)
    total = len(specs)

    def match_dir(s: RunSpec) -> Path | None:
        return s.run_dir.parent.parent / s.match_key.replace("/", os.sep) if s.match_key else None

    def finish(s: RunSpec, out: dict[str, Any]) -> None:
        outcomes[s.key] = out
        extra = f" ({out['error']})" if out["status"] != "ok" else ""
        _log(f"{len(outcomes)}/{total} {s.key}: {out['status']} in {out['seconds']:.0f} s{extra}", quiet)
        for d in blocked.pop(s.key, []):
            if out["status"] == "ok":
                ready.appendleft(d)
            else:
                finish(d, {"status": "failed", "error": f"its compute-matched run {s.key} failed", "seconds": 0.0})

    if not ready:
        if executor is not None:
            executor.shutdown()
        return outcomes
    if workers <= 0 and executor is None:
        while ready:
            s = ready.popleft()
            finish(s, execute_run(s, match_dir(s)))
        return outcomes

    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")

    def new_pool() -> Any:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid()))

    pool = executor if executor is not None else new_pool()
    workers = executor.slots if executor is not None else workers
    in_flight: dict[Any, RunSpec] = {}
    try:
        while ready or in_flight:
            while ready and len(in_flight) < workers:
                s = ready.popleft()
                in_flight[pool.submit(execute_run, s, match_dir(s))] = s
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                s = in_flight.pop(fut)
                try:
                    out = fut.result()
                except BrokenProcessPool:
                    broken = True
                    out = {"status": "failed", "seconds": 0.0,
                           "error": "its worker process died (killed, out of memory or a native crash); rerun with --resume"}
                except Exception as exc:  # pragma: no cover - execute_run catches its own errors
                    out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
                finish(s, out)
            if broken:
                for fut, s in list(in_flight.items()):
                    try:
                        finish(s, fut.result())
                    except Exception:
                        finish(s, {"status": "failed", "seconds": 0.0,
                                   "error": "a worker process died while this run was in flight; rerun with --resume"})
                in_flight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions: tested on synthetic inputs)
# ---------------------------------------------------------------------------------------------
def gap_closed(mean_g: float | np.ndarray, random_value: float, oracle_value: float) -> Any:
    """``(mean g - r) / (o - r)``: 0 for the random policy in expectation, 1 for the oracle."""
    if not oracle_value > random_value:
        raise ValueError(f"the oracle value ({oracle_value}) must exceed the random policy's ({random_value})")
    return (np.asarray(mean_g, dtype=np.float64) - random_value) / (oracle_value - random_value)


GROUND_TRUTH_FIGURES = ("cumulative_relevance", "regret", "mean_relevance_per_iteration", "gap_closed_per_iteration",
                        "gap_closed_cumulative", "gap_closed", "gap_closed_second_half",
                        "expected_gap_closed_per_iteration", "expected_gap_closed_second_half", "expected_gap_closed",
                        "total_relevance", "final_regret", "distinct_relevant_concepts", "new_relevant_images",
                        "target_classes_hit_share")


def run_metrics(summary: dict[str, Any], g: list[float] | np.ndarray, rewards: list[float] | np.ndarray,
                queries_per_iteration: int, random_value: float | None, oracle_value: float | None,
                expected_g: list[float | None] | None = None) -> dict[str, Any]:
    """Curves and figures of one exploring run from its summary and its per-query ``g`` and rewards.
    ``expected_g`` (per query, ``p . g`` of the distribution the agent drew from) adds the expected
    gap closed, the same measure without the noise of the draws, when every query has it. Where
    ground truth is unknown (a search engine: ``random_value``/``oracle_value`` None or ``g`` NaN)
    every figure of :data:`GROUND_TRUTH_FIGURES` is None; rewards, k-NN and the probe remain."""
    g = np.asarray(g, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if g.size == 0 or g.shape != rewards.shape:
        raise ValueError("a run needs one g and one reward per query")
    Q = int(queries_per_iteration)
    n_it = int(np.ceil(g.size / Q))
    it_r = np.array([rewards[i * Q:(i + 1) * Q].mean() for i in range(n_it)])
    knn = [float(x) for x in summary.get("knn_accuracy", [])]
    out: dict[str, Any] = {
        "cumulative_reward": np.cumsum(rewards).tolist(),
        "mean_reward_per_iteration": it_r.tolist(),
        "total_reward": float(rewards.sum()),
        "knn_accuracy": knn,
        "final_knn_accuracy": knn[-1] if knn else None,
        "delta_knn_accuracy": knn[-1] - knn[0] if knn else None,
        "initial_knn_accuracy": knn[0] if knn else None,
        "linear_probe_accuracy": summary.get("linear_probe_accuracy"),
    }
    if random_value is None or oracle_value is None or not np.isfinite(g).all():
        return {**out, **{k: None for k in GROUND_TRUTH_FIGURES}}
    it_g = np.array([g[i * Q:(i + 1) * Q].mean() for i in range(n_it)])
    ends = np.minimum(np.arange(1, n_it + 1) * Q, g.size)
    cum_g = np.cumsum(g)
    gc = lambda x: gap_closed(x, random_value, oracle_value)  # noqa: E731
    eg = None
    if expected_g is not None and len(expected_g) == g.size and all(e is not None for e in expected_g):
        eg = np.asarray(expected_g, dtype=np.float64)
    out.update({
        "cumulative_relevance": cum_g.tolist(),
        "regret": np.cumsum(oracle_value - g).tolist(),
        "mean_relevance_per_iteration": it_g.tolist(),
        "gap_closed_per_iteration": gc(it_g).tolist(),
        "gap_closed_cumulative": gc(cum_g[ends - 1] / ends).tolist(),
        "gap_closed": float(gc(g.mean())),
        "gap_closed_second_half": float(gc(g[g.size // 2:].mean())),
        "expected_gap_closed_per_iteration": None if eg is None else gc(
            np.array([eg[i * Q:(i + 1) * Q].mean() for i in range(n_it)])).tolist(),
        "expected_gap_closed_second_half": None if eg is None else float(gc(eg[eg.size // 2:].mean())),
        "expected_gap_closed": None if eg is None else float(gc(eg.mean())),
        "total_relevance": float(g.sum()),
        "final_regret": float(np.sum(oracle_value - g)),
        "distinct_relevant_concepts": summary.get("distinct_relevant_concepts"),
        "new_relevant_images": summary.get("new_relevant_images"),
        "target_classes_hit_share": summary.get("target_classes_hit_share"),
    })
    return out


def target_only_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    knn = [float(x) for x in summary.get("knn_accuracy", [])]
    return {
        "knn_accuracy": knn,
        "final_knn_accuracy": knn[-1] if knn else None,
        "delta_knn_accuracy": knn[-1] - knn[0] if knn else None,
        "initial_knn_accuracy": knn[0] if knn else None,
        "linear_probe_accuracy": summary.get("linear_probe_accuracy"),
        "ssl_images_total": int(sum(summary.get("ssl_images_per_iteration", []))),
        "ssl_steps_total": float(sum(summary.get("ssl_steps_per_iteration", []))),
    }


def retrieval_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The retrieval baseline's figures: k-NN and probe as target-only's, its image budget and its
    coverage of ground truth (relevant new images, concepts, target classes, share per iteration)."""
    new = [int(n) for n in summary.get("new_images_per_iteration", [])]
    relevant = summary.get("new_relevant_images")
    return {
        **target_only_metrics(summary),
        "new_images_total": int(sum(new)),
        "new_relevant_images": relevant,
        "relevant_share": relevant / sum(new) if relevant is not None and sum(new) else None,
        "distinct_relevant_concepts": summary.get("distinct_relevant_concepts"),
        "target_classes_hit_share": summary.get("target_classes_hit_share"),
        "retrieved_relevant_share_per_iteration": summary.get("retrieved_relevant_share_per_iteration"),
    }


def mean_std(values: list[Any]) -> dict[str, Any] | None:
    """Mean and sample std (ddof=1; 0 for one seed) over seeds, of scalars or equal-length curves
    (longer curves are cut to the shortest). ``None`` values are skipped."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if isinstance(vals[0], (list, tuple, np.ndarray)):
        n = min(len(v) for v in vals)
        arr = np.array([np.asarray(v, dtype=np.float64)[:n] for v in vals])
        std = arr.std(axis=0, ddof=1) if len(vals) > 1 else np.zeros(n)
        return {"mean": arr.mean(axis=0).tolist(), "std": std.tolist(), "n": len(vals)}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over seeds of every metric in ``per_seed[seed]`` (as made by :func:`run_metrics`)."""
    keys = list(next(iter(per_seed.values())).keys()) if per_seed else []
    return {k: mean_std([m.get(k) for m in per_seed.values()]) for k in keys}


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
def world_reference(cfg: Any) -> dict[str, Any]:
    """The random policy's expected g (mean over the vocabulary) and the oracle value (max g).

    On a search engine (``env.engine.name`` other than ``embedded``), or with a user's target set
    (``env.target.kind`` other than ``embedded``), ground truth is unknown: the reference says so
    (``ground_truth`` False, values None) and every g-based figure is None, while rewards, k-NN, the
    linear probe and their paired differences are still defined."""
    from threadpoolctl import threadpool_limits

    from ie_experiments.run import has_ground_truth

    if not has_ground_truth(cfg.env):
        return {"ground_truth": False, "engine": cfg.env.engine.name, "target": cfg.env.target.kind,
                "random_expected_relevance": None, "oracle_value": None,
                "oracle_definition": "undefined: g is unknown (a search engine or a user's target set)",
                "concepts": None, "concepts_with_g_at_least_half": None, "world_hash": None}

    from ie_env.env import InternetExplorerEnv

    with threadpool_limits(1):  # one small SVD: threads only add contention
        env = InternetExplorerEnv(cfg.env)
    g = env.ground_truth_relevance().astype(np.float64)
    return {
        "ground_truth": True,
        "random_expected_relevance": float(g.mean()),
        "oracle_value": float(g.max()),
        "oracle_definition": "max over concepts of g: the mean g of querying a best concept every time",
        "concepts": int(g.size),
        "concepts_with_g_at_least_half": int((g >= 0.5).sum()),
        "world_hash": env.world.fingerprint(),
    }


def _read_queries(run_dir: Path) -> tuple[list[float], list[float], list[float | None]]:
    """Per query: ground-truth relevance, reward and expected relevance (None where not logged)."""
    from ie_experiments.target_only import _read_jsonl

    records = _read_jsonl(run_dir / "queries.jsonl")
    return ([float(r["true_relevance"]) for r in records], [float(r["reward"]) for r in records],
            [r.get("expected_true_relevance") for r in records])


def collect(out: Path, cfg: Any, agents: list[AgentSpec], settings: CompareSettings,
            outcomes: dict[str, dict[str, Any]], reference: dict[str, Any],
            reps: int = DEFAULT_REPS, boot_seed: int = 0) -> dict[str, Any]:
    """Read every run folder and build ``results.json``'s content (with the paired differences of
    :mod:`ie_experiments.paired`: ``reps`` bootstrap resamples from seed ``boot_seed``)."""
    from ie_experiments.target_only import trained_images_per_iteration

    seeds = list(range(settings.first_seed, settings.first_seed + settings.seeds))
    r, o = reference["random_expected_relevance"], reference["oracle_value"]
    Q = cfg.env.queries_per_iteration
    runs: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    labels = ([a.label for a in agents] + ([TARGET_ONLY] if settings.target_only else [])
              + ([RETRIEVAL] if settings.retrieval else []))
    for label in labels:
        per_seed: dict[int, dict[str, Any]] = {}
        for s in seeds:
            key, run_dir = f"{label}/seed{s}", out / "runs" / label / f"seed{s}"
            info = dict(outcomes.get(key, {"status": "ok", "seconds": None, "resumed": "finished earlier"}))
            info["dir"] = str(run_dir.relative_to(out))
            if info["status"] == "ok":
                try:
                    summary = json.loads((run_dir / "summary.json").read_text())
                    if summary.get("world_hash") not in (None, reference["world_hash"]):
                        raise ValueError(f"world {summary['world_hash']} differs from the compared world {reference['world_hash']}")
                    if label in BASELINE_ROWS:
                        m = (target_only_metrics if label == TARGET_ONLY else retrieval_metrics)(summary)
                        m["matched_to"] = summary.get("matched_to")
                    else:
                        g, rew, exp_g = _read_queries(run_dir)
                        m = run_metrics(summary, g, rew, Q, r, o, exp_g)
                        m["ssl_images_total"] = int(sum(trained_images_per_iteration(run_dir)))
                    per_seed[s] = m
                except Exception as exc:
                    info = {**info, "status": "failed", "error": f"unreadable results: {type(exc).__name__}: {exc}"}
            runs[key] = info
        agg = aggregate({s: {k: v for k, v in m.items() if k != "matched_to"} for s, m in per_seed.items()})
        results[label] = {
            "seeds_ok": sorted(per_seed),
            "seeds_failed": [s for s in seeds if s not in per_seed],
            **agg,
            "per_seed": {str(s): {k: v for k, v in m.items() if not isinstance(v, list)} for s, m in per_seed.items()},
        }
    return {
        "agents": [a.label for a in agents],
        "agent_names": {a.label: a.name for a in agents},
        "seeds": seeds,
        "target_only_matched_to": match_label(agents, settings) if settings.target_only else None,
        "retrieval_matched_to": match_label(agents, settings) if settings.retrieval else None,
        "retrieval_per_concept": settings.retrieval_per_concept if settings.retrieval else None,
        "queries_per_iteration": Q,
        "iterations": cfg.env.iterations,
        "query_budget": cfg.env.query_budget,
        "reference": reference,
        "std": "sample standard deviation over seeds (ddof=1)",
        "results": results,
        "paired": paired_comparisons({lab: r["per_seed"] for lab, r in results.items()}, labels,
                                     {**{a.label: a.name for a in agents}, TARGET_ONLY: TARGET_ONLY,
                                      RETRIEVAL: RETRIEVAL},
                                     reps=reps, seed=boot_seed),
        "runs": runs,
        "failed_runs": sorted(k for k, v in runs.items() if v["status"] != "ok"),
        "run_config": _plain(cfg),
    }


def _pm(stat: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not stat:
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    mean = round(stat["mean"], digits) + 0.0  # no "-0.000" for a mean that rounds to zero
    return f"{f.format(mean)} ± {stat['std']:.{digits}f}"


def results_table(res: dict[str, Any]) -> str:
    """``results.md``: one row per agent."""
    ref = res["reference"]
    lines = [
        "| agent | seeds | gap closed, 2nd half | expected gap, 2nd half | gap closed, all | cumulative g | distinct relevant concepts | final k-NN | Δ k-NN vs start | linear probe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in res["results"].items():
        n_ok, n_all = len(r["seeds_ok"]), len(r["seeds_ok"]) + len(r["seeds_failed"])
        seeds = f"{n_ok}/{n_all}"
        lines.append(
            f"| {label} | {seeds} | {_pm(r.get('gap_closed_second_half'))} | {_pm(r.get('expected_gap_closed_second_half'))} | "
            f"{_pm(r.get('gap_closed'))} | "
            f"{_pm(r.get('total_relevance'), 1)} | {_pm(r.get('distinct_relevant_concepts'), 1)} | "
            f"{_pm(r.get('final_knn_accuracy'))} | {_pm(r.get('delta_knn_accuracy'), signed=True)} | "
            f"{_pm(r.get('linear_probe_accuracy'))} |"
        )
    if ref.get("ground_truth", True):
        notes = [
            "",
            f"{res['query_budget']} queries ({res['iterations']} iterations x {res['queries_per_iteration']}), "
            f"seeds {res['seeds'][0]}–{res['seeds'][-1]}, mean ± std over seeds; world {ref['world_hash']}.",
            f"gap closed = (mean g − {ref['random_expected_relevance']:.4f}) / ({ref['oracle_value']:.4f} − "
            f"{ref['random_expected_relevance']:.4f}): random policy's expected g → 0, max g → 1. "
            "k-NN: weighted, k = 20, T = 0.07, target test split.",
            "expected gap: the same with each query's g replaced by p · g, p the distribution the agent drew it "
            "from (free of the draws' noise; — where an agent states none).",
        ]
    else:
        notes = [
            "",
            (f"{res['query_budget']} queries ({res['iterations']} iterations x {res['queries_per_iteration']}), "
             f"seeds {res['seeds'][0]}–{res['seeds'][-1]}, mean ± std over seeds; engine {ref.get('engine')}."),
            ("Ground-truth relevance g is unknown (a search engine or a user's target set): gap closed, "
             "cumulative g and coverage are undefined (—). k-NN (weighted, k = 20, T = 0.07) and the linear "
             "probe on the target test split are defined."),
        ]
    if res.get("target_only_matched_to"):
        notes.append(f"target_only: SSL on the target train split alone, as many SSL images and steps as {res['target_only_matched_to']}'s run of the same seed.")
    if res.get("retrieval_matched_to"):
        share = _pm(res["results"].get(RETRIEVAL, {}).get("relevant_share"))
        notes.append(f"retrieval: as many new images per iteration as {res['retrieval_matched_to']}'s run of the "
                     "same seed, the nearest to the target train images in the world's uncaptioned pool "
                     f"({res['retrieval_per_concept']} per concept), same SSL; share of them with g ≥ 0.5: {share}.")
    if res["failed_runs"]:
        notes.append("Failed runs: " + "; ".join(f"{k}: {res['runs'][k].get('error', '?')}" for k in res["failed_runs"]))
    return "\n".join(lines + notes) + "\n" + paired_markdown(res.get("paired"))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-compare", description=__doc__.splitlines()[0])
    p.add_argument("--agents", default=None, help="comma-separated agent names, optionally LABEL=NAME (default: the config's compare.agents)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, from --first-seed (default 3)")
    p.add_argument("--first-seed", type=int, default=None)
    p.add_argument("--config", default=None, help="ie-explore config, optionally with a compare: section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a run config value")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default min(#runs, CPUs)); 0 = in this process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default CPUs // workers)")
    p.add_argument("--no-target-only", action="store_true", help="leave out the target-only baseline")
    p.add_argument("--retrieval", action="store_true",
                   help="add the retrieval baseline (pixels fidelity only) at the matched agent's image budget")
    p.add_argument("--retrieval-per-concept", type=int, default=None,
                   help="pool images per vocabulary concept of the retrieval baseline (default 8)")
    p.add_argument("--match", default=None, help="agent whose runs the target-only and retrieval baselines match")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="keep finished runs in --out, run the missing or unfinished ones")
    g.add_argument("--overwrite", action="store_true", help="delete earlier results in --out first")
    p.add_argument("--bootstrap-reps", type=int, default=DEFAULT_REPS,
                   help="resamples of the paired differences' interval")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--trust-pickle", action="store_true",
                   help="let sb3:PATH models hold pickled objects SB3 unpickles (can run code): only models you wrote")
    p.add_argument("--quiet", action="store_true")
    from ie_experiments.ray_backend import add_ray_arguments

    add_ray_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0: all runs finished; 1: some runs failed (reported in results.json); 2: bad input."""
    args = parse_args(argv)
    out = Path(args.out)
    executor = None
    try:
        cfg, settings = load_compare_config(args.config, args.overrides)
        if args.agents is not None:
            settings.agents = args.agents.split(",")
        if args.seeds is not None:
            settings.seeds = args.seeds
        if args.first_seed is not None:
            settings.first_seed = args.first_seed
        if args.no_target_only:
            settings.target_only = False
        if args.match is not None:
            settings.match = args.match
        if args.retrieval:
            settings.retrieval = True
        if args.retrieval_per_concept is not None:
            settings.retrieval_per_concept = args.retrieval_per_concept
        settings.validate()
        agents = parse_agents(settings.agents)
        if any(a.name == TARGET_ONLY for a in agents):  # listing it explicitly just asks for the baseline
            agents = [a for a in agents if a.name != TARGET_ONLY]
            settings.target_only = True
        if any(a.name == RETRIEVAL for a in agents):
            agents = [a for a in agents if a.name != RETRIEVAL]
            settings.retrieval = True
        if not agents:
            raise ConfigError("no agents to compare")
        if args.trust_pickle:  # model files the user wrote: SB3 may unpickle their data
            for a in agents:
                if a.name.startswith("sb3:"):
                    own = settings.agent_configs.get(a.label, settings.agent_configs.get(a.name, {}))
                    settings.agent_configs[a.label] = {**own, "trust_pickle": True}
        check_agents(agents, cfg, settings)
        specs = plan_runs(out, cfg, agents, settings)
        if settings.target_only or settings.retrieval:
            match_label(agents, settings)
        if settings.retrieval:
            from ie_experiments.retrieval_baseline import check_retrieval_config

            check_retrieval_config(cfg)  # a latent world fails here, before any run
        if args.workers is not None and args.workers < 0 or args.threads is not None and args.threads < 1:
            raise ConfigError("--workers must be >= 0 and --threads >= 1")
        if args.bootstrap_reps < 1:
            raise ConfigError("--bootstrap-reps must be >= 1")
        from ie_env.web_search import check_engine

        check_engine(cfg.env.engine)  # a missing corpus or API key fails here, before any run
        reference = world_reference(cfg)  # before anything runs: a world that cannot be built fails here
        from ie_experiments.ray_backend import executor_from_args

        executor = executor_from_args(args)  # before any file is written: a bad --ray leaves nothing
        prepare_out(out, cfg, args.overwrite, args.resume)
    except (ConfigError, FileExistsError, ValueError) as exc:
        if executor is not None:
            executor.shutdown()
        print(f"ie-compare: error: {exc}", file=sys.stderr)
        return 2

    todo = [s for s in specs if not is_finished(s.run_dir)]
    record = {"run_config": _plain(cfg), "compare": {**to_dict(settings), "agents": [f"{a.label}={a.name}" for a in agents]}}
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(record, sort_keys=False))
    cpus = cpu_count()
    workers = args.workers if args.workers is not None else max(1, min(len(todo), cpus))
    threads = args.threads or max(1, cpus // max(workers, 1))
    where = f"Ray ({executor.cpus} CPUs)" if executor else f"{workers} workers x {threads} threads"
    _log(f"{len(specs) - len(todo)} runs finished earlier, {len(todo)} to run on {where}", args.quiet)
    outcomes = execute_all(todo, workers, threads, quiet=args.quiet, executor=executor)
    res = collect(out, cfg, agents, settings, outcomes, reference, args.bootstrap_reps, args.bootstrap_seed)
    atomic_write_text(out / "results.json", json.dumps(res, indent=2))
    table = results_table(res)
    atomic_write_text(out / "results.md", table)
    try:
        from ie_experiments.plots import plot_comparison

        figures = plot_comparison(res, out)
    except Exception as exc:  # figures are a convenience: never lose the results over them
        print(f"ie-compare: warning: figures failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        figures = []
    print(table)
    print(f"results: {out / 'results.json'}  figures: {', '.join(str(f) for f in figures) or 'none'}")
    print(f"tensorboard --logdir {out / 'runs'}")
    return 1 if res["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
