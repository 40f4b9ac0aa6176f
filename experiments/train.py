"""``ie-train``: train a Stable-Baselines3 agent on the environment, then compare it on held-out targets.

    ie-train --algo ppo --action-mode slate --config experiments/configs/rl_slate.yaml \\
             --logdir runs/ppo-slate --total-timesteps 50000

The run directory holds ``config.yaml`` (resolved), ``tb/`` (SB3 TensorBoard scalars plus the
environment's own: ``ie/gap_closed``, ``ie/mean_true_relevance``, ``ie/oracle_fraction``,
``ie/mean_query_reward``, by :func:`metrics_callback`),
``checkpoints/``, ``eval/`` (``EvalCallback`` on held-out targets, best model), ``model.zip`` (the
model, with the environment settings inside, runnable by ``ie-explore --agent sb3:PATH``) and
``heldout.json``: mean ground-truth relevance per query of the trained policy, random queries, a
random slot of the same slate and (``--compare gp``) the GP sampler, all on the same held-out targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ie_agents.base import Agent, AgentContext
from ie_agents.sb3_agent import ALGO_MODES, SB3Agent, SlateRandomAgent, algo_classes, check_algo_mode, policy_for, save_model
from ie_env.config import ConfigError, atomic_write_text, merge, resolve, to_dict
from ie_env.env import EnvConfig, InternetExplorerEnv
from ie_env.extras import require

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rl_slate.yaml"


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: str = "ppo"
    total_timesteps: int = 50_000
    seed: int = 0
    n_envs: int = 8
    vec_env: str = "dummy"  # dummy | subproc
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_freq: int = 10_000  # steps (all envs together) between EvalCallback runs; 0 = off
    eval_episodes: int = 4
    checkpoint_freq: int = 25_000  # steps between checkpoints; 0 = off
    heldout_episodes: int = 20  # final comparison on held-out targets; 0 = off
    heldout_seed: int = 10_000  # episode seeds heldout_seed, heldout_seed + 1, ...
    compare: list[str] = field(default_factory=lambda: ["random", "slate_random"])  # + "gp"
    agent_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per compared agent name
    threads: int = 1
    device: str = "cpu"

    def validate(self) -> None:
        if self.total_timesteps < 1 or self.n_envs < 1:
            raise ConfigError("total_timesteps and n_envs must be at least 1")
        if self.vec_env not in ("dummy", "subproc"):
            raise ConfigError(f"vec_env must be 'dummy' or 'subproc', got {self.vec_env!r}")


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------
def env_factory(cfg: EnvConfig, seed: int, monitor: bool = True) -> Callable[[], Any]:
    def make():
        from stable_baselines3.common.monitor import Monitor

        env = InternetExplorerEnv(cfg)
        env.reset(seed=seed)
        return Monitor(env) if monitor else env

    return make


def make_vec_env(cfg: EnvConfig, n: int, seed: int, kind: str = "dummy"):
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [env_factory(cfg, seed + i) for i in range(n)]
    # Fork is fast and safe while workers never touch torch's thread pools (lean info, no k-NN);
    # otherwise spawn, as forked OpenMP pools can hang.
    lean = cfg.info_level == "minimal" and not cfg.evaluate and cfg.world.fidelity == "latent"
    start = "fork" if lean else "spawn"
    vec = SubprocVecEnv(fns, start_method=start) if kind == "subproc" and n > 1 else DummyVecEnv(fns)
    vec.seed(seed)
    return vec


def heldout_config(cfg: EnvConfig) -> EnvConfig:
    """``cfg`` with targets drawn from the held-out themes."""
    return merge(cfg, {"targets": {"mode": "heldout"}})


# ---------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------
def metrics_callback():
    from stable_baselines3.common.callbacks import BaseCallback

    class IEMetricsCallback(BaseCallback):
        """Logs the environment's own figures at episode ends (``info["ie_episode"]``) to SB3's logger
        (TensorBoard): ``ie/gap_closed`` (the score every tool reports), ground-truth relevance per
        query, the fraction of the oracle's relevance reached, and the paper's query reward.
        ``model.learn(..., callback=metrics_callback())`` in any SB3 script."""

        KEYS = ("gap_closed", "mean_true_relevance", "oracle_fraction", "mean_query_reward")

        def __init__(self) -> None:
            super().__init__()
            self._eps: list[dict[str, float]] = []

        def _on_step(self) -> bool:
            self._eps += [info["ie_episode"] for info in self.locals.get("infos", []) if info.get("ie_episode")]
            if self._eps and len(self._eps) >= self.training_env.num_envs:
                for k in self.KEYS:
                    vals = [ep[k] for ep in self._eps if k in ep]
                    if vals:
                        self.logger.record(f"ie/{k}", float(np.mean(vals)))
                self._eps = []
            return True

    return IEMetricsCallback()


# ---------------------------------------------------------------------------------------------
# Held-out comparison through the Agent interface (the runner's loop, in memory)
# ---------------------------------------------------------------------------------------------
def run_episode(agent: Agent, env: InternetExplorerEnv, seed: int) -> dict[str, float]:
    """One episode of ``agent`` as ``ie-explore`` drives it; returns relevance figures."""
    obs, info = env.reset(seed=seed)
    agent.setup(AgentContext.from_env(env, seed=seed, with_ground_truth=agent.needs_ground_truth))
    g, q = [], []
    done = False
    while not done:
        action = agent.act(obs, info)
        obs, reward, term, trunc, info = env.step(action)
        agent.observe(action, reward, obs, info)
        g.append(info["true_relevance"])
        q.append(info["query_reward"])
        done = term or trunc
    rel = env.ground_truth_relevance()
    oracle = float(np.sort(rel)[::-1][: len(g)].mean())
    return {"gap_closed": float(info["ie_episode"]["gap_closed"]),
            "mean_true_relevance": float(np.mean(g)), "oracle_fraction": float(np.mean(g)) / oracle,
            "mean_query_reward": float(np.mean(q)), "theme": getattr(env, "target_theme", "")}


def compare_heldout(model_path: str | None, env_cfg: EnvConfig, agents: list[str], episodes: int, seed0: int,
                    progress: bool = False, agent_defaults: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Mean ground-truth relevance per query of each agent on the same held-out targets
    (``agent_defaults[name]``: that agent's config, e.g. the GP's tier sizes)."""
    from ie_agents.registry import make_agent

    lean = {"info_level": "minimal", "evaluate": False}
    cfg = merge(heldout_config(env_cfg), {"action_mode": "vocab", **lean})
    envs: dict[str, InternetExplorerEnv] = {"vocab": InternetExplorerEnv(cfg)}

    def env_for(agent: Agent) -> InternetExplorerEnv:
        """Concept-picking agents: the vocab env; a policy: the env it was trained on (held-out
        targets), as a user's ``model.predict`` loop steps it; the random slot: its slate twin."""
        if getattr(agent, "acts_on", "concept") != "env":
            return envs["vocab"]
        mode = (agent.env_settings() or {}).get("action_mode", env_cfg.action_mode)
        if mode not in envs:
            envs[mode] = InternetExplorerEnv(merge(heldout_config(env_cfg), {"action_mode": mode, **lean}))
        return envs[mode]

    out: dict[str, Any] = {"episodes": episodes, "seed0": seed0, "budget": cfg.query_budget, "agents": {},
                           "score": "gap_closed: info['ie_episode']['gap_closed'] per episode (ie_env.score)"}
    names = (["policy"] if model_path else []) + list(agents)
    for name in names:
        t0 = time.time()
        if name == "policy":
            agent: Agent = SB3Agent(model_path)
        elif name == "slate_random":
            if model_path is None:
                continue
            agent = SlateRandomAgent(SB3Agent(model_path).meta)
        else:
            agent = make_agent(name, **(agent_defaults or {}).get(name, {}))
        env = env_for(agent)
        rows = [run_episode(agent, env, seed0 + e) for e in range(episodes)]
        g = [r["mean_true_relevance"] for r in rows]
        out["agents"][name] = {
            "gap_closed": float(np.mean([r["gap_closed"] for r in rows])),
            "gap_closed_per_episode": [r["gap_closed"] for r in rows],
            "mean_true_relevance": float(np.mean(g)),
            "std_over_episodes": float(np.std(g)),
            "oracle_fraction": float(np.mean([r["oracle_fraction"] for r in rows])),
            "mean_query_reward": float(np.mean([r["mean_query_reward"] for r in rows])),
            "per_episode": g,
            "seconds": time.time() - t0,
        }
        if progress:
            print(f"[ie-train] held-out {name}: gap closed = {out['agents'][name]['gap_closed']:.4f}, "
                  f"g = {np.mean(g):.4f}", file=sys.stderr)
    out["themes"] = sorted({r["theme"] for r in rows})
    if "policy" in out["agents"] and "random" in out["agents"]:
        out["policy_over_random"] = out["agents"]["policy"]["mean_true_relevance"] / max(
            out["agents"]["random"]["mean_true_relevance"], 1e-12
        )
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, vec, logdir: Path | None):
    algo = cfg.algo
    mode = cfg.env.action_mode
    cls = algo_classes()[algo]
    kwargs = dict(cfg.algo_kwargs)
    policy_kwargs = dict(cfg.policy_kwargs)
    return cls(
        policy_for(algo, mode), vec, seed=cfg.seed, device=cfg.device, verbose=0,
        tensorboard_log=str(logdir / "tb") if logdir is not None else None,
        policy_kwargs=policy_kwargs or None, **kwargs,
    )


def train(cfg: TrainConfig, logdir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train, save ``model.zip`` and (``heldout_episodes``) compare on held-out targets."""
    check_algo_mode(cfg.algo, cfg.env.action_mode)  # before anything is built
    require("sb3", "ie-train")
    import torch
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(logdir / "config.yaml", yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
    vec = make_vec_env(cfg.env, cfg.n_envs, cfg.seed, cfg.vec_env)
    model = build_model(cfg, vec, logdir)
    callbacks = [metrics_callback()]
    per_env = max(1, cfg.n_envs)
    if cfg.checkpoint_freq:
        callbacks.append(CheckpointCallback(max(1, cfg.checkpoint_freq // per_env), str(logdir / "checkpoints"), name_prefix="model"))
    if cfg.eval_freq:
        eval_env = make_vec_env(heldout_config(cfg.env), 1, cfg.seed + 10_000)
        if cfg.algo == "maskable_ppo":
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as EvalCB
        else:
            from stable_baselines3.common.callbacks import EvalCallback as EvalCB
        callbacks.append(EvalCB(eval_env, n_eval_episodes=cfg.eval_episodes, eval_freq=max(1, cfg.eval_freq // per_env),
                                best_model_save_path=str(logdir / "eval"), log_path=str(logdir / "eval"), deterministic=True))
    t0 = time.time()
    model.learn(total_timesteps=cfg.total_timesteps, callback=CallbackList(callbacks), progress_bar=False,
                tb_log_name=f"{cfg.algo}_{cfg.env.action_mode}")
    seconds = time.time() - t0
    policy = policy_for(cfg.algo, cfg.env.action_mode)
    meta = {"algo": cfg.algo, "action_mode": cfg.env.action_mode, "policy": policy if isinstance(policy, str) else policy.__name__,
            "env": json.loads(json.dumps(to_dict(cfg.env))), "total_timesteps": cfg.total_timesteps, "seed": cfg.seed}
    path = save_model(model, logdir / "model.zip", meta)
    vec.close()
    summary: dict[str, Any] = {"model": str(path), "train_seconds": seconds, "timesteps": cfg.total_timesteps,
                               "steps_per_second": cfg.total_timesteps / max(seconds, 1e-9)}
    if cfg.heldout_episodes:
        summary["heldout"] = compare_heldout(str(path), cfg.env, cfg.compare, cfg.heldout_episodes, cfg.heldout_seed, progress,
                                             cfg.agent_defaults)
    atomic_write_text(logdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-train", description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=sorted(ALGO_MODES) + ["ppo-batched"], default=None,
                   help="ppo-batched: experiments/ppo_batched.py over the batched latent env (its own flags)")
    p.add_argument("--action-mode", choices=["vocab", "embedding", "slate"], default=None)
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--task", default=None, help="train on a suite task id (ie_env.suite): its pinned env, training themes")
    p.add_argument("--logdir", required=True)
    p.add_argument("--total-timesteps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set env.iterations=4")
    return p.parse_args(argv)


def _batched_algo(argv: list[str]) -> list[str] | None:
    """``argv`` without ``--algo ppo-batched`` when it asks for that algorithm, else None."""
    for i, a in enumerate(argv):
        if a == "--algo=ppo-batched":
            return argv[:i] + argv[i + 1 :]
        if a == "--algo" and i + 1 < len(argv) and argv[i + 1] == "ppo-batched":
            return argv[:i] + argv[i + 2 :]
    return None


def build_config(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    if args.algo is not None:
        overrides.append(f"algo={args.algo}")
    if args.action_mode is not None:
        overrides.append(f"env.action_mode={args.action_mode}")
    if args.total_timesteps is not None:
        overrides.append(f"total_timesteps={args.total_timesteps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if getattr(args, "task", None):  # the suite task's pinned env (training split); the file's other settings
        from ie_env.config import apply_overrides, load_yaml
        from ie_env.suite import task_config

        data = load_yaml(args.config or DEFAULT_CONFIG)
        data.pop("env", None)
        return apply_overrides(merge(TrainConfig(env=task_config(args.task)), data), overrides)
    return resolve(TrainConfig, args.config or DEFAULT_CONFIG, overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _batched_algo(argv):  # the single-file PPO over the batched latent env: its own flags
        from ie_experiments.ppo_batched import main as ppo_batched_main

        return ppo_batched_main(_batched_algo(argv))
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        check_algo_mode(cfg.algo, cfg.env.action_mode)
    except (ConfigError, ValueError) as exc:
        print(f"ie-train: error: {exc}", file=sys.stderr)
        return 2
    summary = train(cfg, args.logdir)
    print(json.dumps({k: v for k, v in summary.items() if k != "heldout"}))
    if "heldout" in summary:
        print(json.dumps({"heldout_gap_closed": {k: v["gap_closed"] for k, v in summary["heldout"]["agents"].items()}}))
    print(f"model: {summary['model']}  (ie-explore --agent sb3:{summary['model']}; tensorboard --logdir {args.logdir}/tb)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
