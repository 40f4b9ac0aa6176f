"""``ie-benchmark``: every agent on a task suite's fixed held-out targets, with interval estimates.

    ie-benchmark --suite latent --agents random,uniform,gp,oracle,ppo=sb3:runs/ppo/model.zip --seeds 5 --out bench/

Seed ``s`` of a task is the held-out episode ``reset(seed=eval_seed0 + s)`` (its target comes from
the held-out themes; the agent is seeded with the same number), the same for every agent. Every
(task, agent, seed) is one ``ie-explore`` run in ``OUT/runs/<task>/<agent>/seed<s>`` (``summary.json``
and TensorBoard hparams carry the task id, version and world hash). Per episode: ``gap_closed`` =
(mean g - r) / (max g - r) from ground-truth relevance g (r = the vocabulary's mean g: random 0,
oracle 1), ``expected_gap_closed`` (the same from ``p . g``, p what the agent drew each query from;
None for agents that state no p), the coverage figures (DESIGN §7) and, where the fidelity trains
(pixels), k-NN accuracy.
Per task and over the suite: IQM and mean with stratified-bootstrap 95% intervals
(:mod:`ie_experiments.stats`). ``--transfer`` also runs each pixels task's latent twin (same world
seed and targets) and reports the Kendall tau of the agents' scores between the fidelities and the
correlation of per-query rewards (each pixels run's queries replayed through the latent twin).

Writes ``results.json``, ``leaderboard.md``, ``benchmark.png``. A crashing agent is reported (its
runs' errors, ``failed_runs``), never dropped; the command then exits 1. Exit 2: bad input, before
anything runs (unknown suite or agent, a saved policy whose spaces differ from a task's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ie_env.config import ConfigError, atomic_write_text, parse_overrides
from ie_experiments.compare import AgentSpec, RunSpec, cpu_count, execute_all, is_finished, parse_agents, run_metrics

__all__ = ["main", "plan", "collect", "check_agents", "policy_space_problem", "policy_env_config", "episode_metrics",
           "TWIN"]

TWIN = "@latent"  # suffix of a pixels task's latent twin in run labels
EPISODE_FIELDS = ("gap_closed", "gap_closed_second_half", "expected_gap_closed", "expected_gap_closed_second_half",
                  "total_relevance", "total_reward",
                  "distinct_relevant_concepts", "new_relevant_images", "target_classes_hit_share",
                  "final_knn_accuracy", "delta_knn_accuracy")


# ---------------------------------------------------------------------------------------------
# Input checks (all before any episode runs)
# ---------------------------------------------------------------------------------------------
def policy_env_config(task_id: str, fidelity: str | None = None) -> Any:
    """The held-out evaluation env of a task for a policy that acts on the env itself (an SB3 model):
    :func:`ie_env.suite.eval_config` in the task's own action mode, i.e. the documented plain loop's
    ``gym.make(task_id, config={"targets": {"mode": "heldout"}})`` (with full info for the run log)."""
    from ie_env.config import merge
    from ie_env.suite import eval_config, get_task

    return merge(eval_config(task_id, fidelity), {"action_mode": get_task(task_id).config["action_mode"]})


def policy_space_problem(agent: Any, task_id: str, label: str = "") -> str | None:
    """Why an agent acting on the env itself (``acts_on == "env"``) cannot act on ``task_id`` (its
    spaces differ from the task's), else None."""
    from ie_env.env import env_spaces

    if isinstance(agent, (str, Path)):  # a model file
        from ie_agents.sb3_agent import SB3Agent

        agent = SB3Agent(str(agent))
    want = agent.spaces()
    if want is None:
        return None
    obs, act = env_spaces(policy_env_config(task_id))
    if want[0] == obs and want[1] == act:
        return None
    name = getattr(agent, "path", None) or label or type(agent).__name__
    return (f"policy {name} has observation space {want[0]} and action space {want[1]}, "
            f"but task {task_id} has observation space {obs} and action space {act}")


def check_agents(agents: list[AgentSpec], tasks: list[str], agent_cfg: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Build every agent once (unknown names fail with the registered ones listed) and refuse
    policies whose observation or action space differs from a task's. Returns each label's
    ``acts_on`` (``"concept"`` or ``"env"``)."""
    from ie_agents.registry import make_agent

    kinds = {}
    for a in agents:
        try:
            agent = make_agent(a.name, **agent_cfg.get(a.label, {}))
        except Exception as exc:
            raise ConfigError(f"agent {a.name!r}: {exc}") from exc
        kinds[a.label] = getattr(agent, "acts_on", "concept")
        if kinds[a.label] == "env":
            for t in tasks:
                problem = policy_space_problem(agent, t, a.label)
                if problem:
                    raise ConfigError(f"refusing agent {a.label!r}: {problem}")
        if a.name.startswith("torch:"):
            from ie_agents.torch_policy import policy_space_problem as torch_space_problem

            for t in tasks:
                problem = torch_space_problem(a.name[6:], t)
                if problem:
                    raise ConfigError(f"refusing agent {a.label!r}: {problem}")
    return kinds


def agent_config(spec: AgentSpec, task_cfg: Any, user: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``--agent-config`` values; the oracle defaults to the task's target concepts (gap closed 1)."""
    cfg = {"top_k": task_cfg.world.num_targets} if spec.name == "oracle" else {}
    cfg.update(user.get(spec.label, {}))
    return cfg


# ---------------------------------------------------------------------------------------------
# Planning and reading runs
# ---------------------------------------------------------------------------------------------
def plan(out: Path, tasks: list[str], agents: list[AgentSpec], seeds: list[int], transfer: bool,
         user_cfg: dict[str, dict[str, Any]], acts_on: dict[str, str] | None = None) -> list[RunSpec]:
    """One run per (task, agent, seed). Agents that pick concepts run in the task's held-out env in
    ``vocab`` mode; agents that act on the env itself (``acts_on[label] == "env"``) in the task's
    own action mode (:func:`policy_env_config`)."""
    from ie_env.suite import eval_config, get_task
    from ie_experiments.run import RunConfig

    acts_on = acts_on or {}
    specs = []
    for tid in tasks:
        spec = get_task(tid)
        variants = [(tid, None)] + ([(tid + TWIN, "latent")] if transfer and spec.fidelity == "pixels" else [])
        for label, fidelity in variants:
            for a in agents:
                on_env = acts_on.get(a.label) == "env"
                env = policy_env_config(tid, fidelity) if on_env else eval_config(tid, fidelity)
                for s in seeds:
                    cfg = RunConfig(env=env, agent=a.name, agent_config=agent_config(a, env, user_cfg),
                                    seed=spec.eval_seed0 + s, log_images=False, keep_checkpoints=1, task=tid)
                    specs.append(RunSpec(f"{label}/{a.label}", s, out / "runs" / label / a.label / f"seed{s}", cfg))
    return specs


def episode_metrics(run_dir: Path, queries_per_iteration: int) -> dict[str, Any]:
    """The per-episode figures of one finished run."""
    from ie_experiments.target_only import _read_jsonl

    summary = json.loads((run_dir / "summary.json").read_text())
    records = _read_jsonl(run_dir / "queries.jsonl")
    g = [float(r["true_relevance"]) for r in records]
    rewards = [float(r["reward"]) for r in records]
    expected = [r.get("expected_true_relevance") for r in records]  # p . g where the agent states p
    r = float(summary["random_policy_expected_relevance"])
    m = run_metrics(summary, g, rewards, queries_per_iteration, r, 1.0, expected)  # max g = 1: the targets
    episode = summary.get("episode") or {}
    for k in ("gap_closed", "gap_closed_second_half"):  # the env's own info["ie_episode"]: the plain loop's score
        if episode.get(k) is not None:
            m[k] = float(episode[k])
    out = {k: m.get(k) for k in EPISODE_FIELDS}
    out.update({"random_expected_relevance": r, "mean_relevance": float(np.mean(g)), "target": summary.get("target_concepts"),
                "task_world_hash": summary.get("task_world_hash"), "knn_accuracy": m.get("knn_accuracy") or None,
                "linear_probe_accuracy": summary.get("linear_probe_accuracy")})
    return out


def _stat(values: list[float | None]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)} if v.size else None


def collect(out: Path, tasks: list[str], agents: list[AgentSpec], seeds: list[int], transfer: bool,
            outcomes: dict[str, dict[str, Any]], reps: int, boot_seed: int) -> dict[str, Any]:
    """Read every run and build ``results.json``'s content."""
    from ie_env.suite import eval_config, get_task, world_hash
    from ie_experiments.stats import interval_estimates

    labels = [t for t in tasks] + [t + TWIN for t in tasks if transfer and get_task(t).fidelity == "pixels"]
    runs: dict[str, Any] = {}
    per_task: dict[str, dict[str, Any]] = {}
    for label in labels:
        tid = label.removesuffix(TWIN)
        Q = eval_config(tid).queries_per_iteration
        per_task[label] = {}
        for a in agents:
            episodes: dict[str, Any] = {}
            for s in seeds:
                key = f"{label}/{a.label}/seed{s}"
                run_dir = out / "runs" / label / a.label / f"seed{s}"
                info = dict(outcomes.get(key, {"status": "ok", "seconds": None, "resumed": "finished earlier"}))
                info["dir"] = str(run_dir.relative_to(out))
                if info["status"] == "ok":
                    try:
                        episodes[str(s)] = episode_metrics(run_dir, Q)
                    except Exception as exc:
                        info.update(status="failed", error=f"unreadable results: {type(exc).__name__}: {exc}")
                runs[key] = info
            scores = [e["gap_closed"] for e in episodes.values()]
            entry: dict[str, Any] = {
                "seeds_ok": [int(s) for s in episodes], "seeds_failed": [s for s in seeds if str(s) not in episodes],
                "errors": sorted({runs[f"{label}/{a.label}/seed{s}"].get("error", "?") for s in seeds if str(s) not in episodes}),
                "episodes": episodes,
            }
            if scores:
                entry["gap_closed"] = interval_estimates([scores], reps=reps, seed=boot_seed)
                for f in EPISODE_FIELDS[1:]:
                    entry[f] = _stat([e[f] for e in episodes.values()])
            per_task[label][a.label] = entry
    suite_agg: dict[str, Any] = {}
    for a in agents:
        groups = [[e["gap_closed"] for e in per_task[t][a.label]["episodes"].values()] for t in tasks]
        complete = all(groups)
        suite_agg[a.label] = {"tasks_with_scores": sum(1 for g in groups if g), "complete": complete,
                              "gap_closed": interval_estimates(groups, reps=reps, seed=boot_seed) if any(groups) else None}
    return {
        "tasks": tasks,
        "task_info": {t: {"version": get_task(t).version, "world_hash": world_hash(t), "fidelity": get_task(t).fidelity,
                          "difficulty": get_task(t).difficulty, "eval_seed0": get_task(t).eval_seed0,
                          "query_budget": eval_config(t).query_budget, "description": get_task(t).description}
                      for t in tasks},
        "agents": [a.label for a in agents],
        "agent_names": {a.label: a.name for a in agents},
        "seeds": seeds,
        "score": "gap_closed = (mean g - r) / (max g - r) per episode; r = mean g over the vocabulary for that episode's target",
        "intervals": _intervals_note(per_task, suite_agg, reps),
        "per_task": per_task,
        "suite": suite_agg,
        "runs": runs,
        "failed_runs": sorted(k for k, v in runs.items() if v["status"] != "ok"),
    }


def _intervals_note(per_task: dict[str, Any], suite_agg: dict[str, Any], reps: int) -> str:
    """How the intervals were computed (rliable or the numpy fallback)."""
    ests = [(e.get("gap_closed") or {}).get("iqm") for t in per_task.values() for e in t.values()]
    ests += [(s.get("gap_closed") or {}).get("iqm") for s in suite_agg.values()]
    backends = sorted({e["backend"] for e in ests if e and e.get("backend")})
    names = {"rliable": "rliable's get_interval_estimates", "numpy": "ie_experiments.stats (rliable not installed)"}
    used = " and ".join(names[b] for b in backends) or "none (too few episodes)"
    return f"stratified bootstrap (runs resampled within each task), {reps} replicates, percentile 95%, by {used}"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True, help="suite name (latent, pixels, all) or one task id")
    p.add_argument("--agents", required=True, help="comma-separated agents, optionally LABEL=NAME (e.g. ppo=sb3:model.zip)")
    p.add_argument("--seeds", type=int, default=5, help="held-out episodes per task and agent (seeds first-seed ...)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--agent-config", action="append", default=[], metavar="LABEL.KEY=VALUE",
                   help="an agent option, e.g. gp50.tier_sizes=[50,150]")
    p.add_argument("--transfer", action="store_true", help="also run each pixels task's latent twin; report tau and reward correlation")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default min(#runs, CPUs)); 0 = in this process")
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads per worker (default CPUs // workers)")
    p.add_argument("--bootstrap-reps", type=int, default=2000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="keep finished runs in --out, run the others")
    g.add_argument("--overwrite", action="store_true", help="delete earlier results in --out first")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let sb3:PATH models hold pickled objects SB3 unpickles (can run code): only models you wrote")
    p.add_argument("--quiet", action="store_true")
    from ie_experiments.ray_backend import add_ray_arguments

    add_ray_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0: all runs finished; 1: some failed (reported); 2: bad input (nothing ran)."""
    args = parse_args(argv)
    out = Path(args.out)
    try:
        from ie_env.suite import suite_tasks

        tasks = suite_tasks(args.suite)
        agents = parse_agents(args.agents.split(","))
        if not agents:
            raise ConfigError("no agents given")
        user_cfg = parse_overrides(args.agent_config)
        unknown = sorted(set(user_cfg) - {a.label for a in agents})
        if unknown:
            raise ConfigError(f"--agent-config names {unknown}, not among the agents {[a.label for a in agents]}")
        if args.seeds < 1 or args.first_seed < 0:
            raise ConfigError("--seeds must be >= 1 and --first-seed >= 0")
        if args.trust_pickle:  # model files the user wrote: SB3 may unpickle their data
            for a in agents:
                if a.name.startswith("sb3:"):
                    user_cfg.setdefault(a.label, {})["trust_pickle"] = True
        acts_on = check_agents(agents, tasks, user_cfg)
        if (out / "runs").exists() and not (args.resume or args.overwrite):
            raise FileExistsError(f"{out} holds an earlier benchmark; pass --resume or --overwrite")
        from ie_experiments.ray_backend import executor_from_args

        executor = executor_from_args(args)  # last check: a bad --ray address leaves nothing started
    except (ConfigError, FileExistsError, ValueError) as exc:
        print(f"ie-benchmark: error: {exc}", file=sys.stderr)
        return 2
    if args.overwrite and (out / "runs").exists():
        shutil.rmtree(out / "runs")
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    specs = plan(out, tasks, agents, seeds, args.transfer, user_cfg, acts_on)
    todo = [s for s in specs if not is_finished(s.run_dir)]
    cpus = cpu_count()
    workers = args.workers if args.workers is not None else max(1, min(len(todo), cpus))
    threads = args.threads or max(1, cpus // max(workers, 1))
    t0 = time.time()
    outcomes = execute_all(todo, workers, threads, quiet=args.quiet, executor=executor)
    res = collect(out, tasks, agents, seeds, args.transfer, outcomes, args.bootstrap_reps, args.bootstrap_seed)
    res["seconds"] = time.time() - t0
    from ie_experiments.paired import benchmark_paired, benchmark_paired_markdown

    res["paired"] = benchmark_paired(res, args.bootstrap_reps, args.bootstrap_seed)
    res["command"] = "ie-benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.transfer:
        from ie_experiments.transfer import transfer_report

        res["transfer"] = transfer_report(out, res)
    atomic_write_text(out / "results.json", json.dumps(res, indent=1, default=float))
    from ie_experiments.benchmark_report import leaderboard, plot_benchmark

    table = leaderboard(res) + benchmark_paired_markdown(res["paired"])
    atomic_write_text(out / "leaderboard.md", table)
    from ie_experiments.benchmark_report import interval_notes

    for note in interval_notes(res):
        print(f"ie-benchmark: warning: {note}", file=sys.stderr)
    try:
        fig = plot_benchmark(res, out / "benchmark.png")
    except Exception as exc:  # a figure is a convenience: never lose the results over it
        print(f"ie-benchmark: warning: figure failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        fig = None
    print(table)
    print(f"results: {out / 'results.json'}  leaderboard: {out / 'leaderboard.md'}  figure: {fig}")
    return 1 if res["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
