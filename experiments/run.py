"""``ie-explore``: run one agent through one exploration episode and keep everything it did.

The run directory holds ``config.yaml`` (resolved), ``queries.jsonl`` (append-only, one line per
query, fsynced), ``downloads/`` (every query's images, content-addressed), ``checkpoints/`` (env,
learner, replay, agent and RNG state after every iteration as plain data, each with a sha256
digest, the resolved config and its digest), ``tb/`` (TensorBoard), ``summary.json`` (with
``final_weights_sha256``) and ``run.lock`` (held by the one process writing the directory).
``--resume`` continues a killed run: from the last good checkpoint, replaying the logged queries of
the unfinished iteration from disk (no download, no scoring), then onwards; in deterministic mode
the result is bit-identical to an uninterrupted run. What survives what: ``docs/guarantees.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ie_agents.base import Agent, AgentContext
from ie_agents.registry import make_agent
from ie_experiments.rundir import (
    CHECKPOINT_FORMAT,
    Checkpoints,
    QueryLog,
    RunDirError,
    RunLock,
    config_digest,
    start_over_hint,
)
from ie_env.bounds import out_of_memory_message
from ie_env.config import ConfigError, atomic_write_text, resolve, to_dict
from ie_env.env import EnvConfig, InternetExplorerEnv
from ie_env.extras import require
from ie_env.web_search import check_engine

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


@dataclass
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: str = "gp"
    agent_config: dict[str, Any] = field(default_factory=dict)  # for ``agent``; wins over agent_defaults
    agent_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per agent name (world-tied)
    seed: int = 0
    log_images: bool = True
    keep_checkpoints: int = 2
    threads: int = 0  # torch threads; 0 = torch's default
    task: str = ""  # a suite task id (ie_env.suite) this run evaluates: kept in summary.json and hparams
    # Reward-quality figures (ie_env.evaluation.reward_quality) after reset and every iteration, on a panel
    # of the relevant concepts plus this many others (-1: the whole vocabulary; 0: off).
    reward_quality: int = 0


def agent_kwargs(cfg: RunConfig, name: str) -> dict[str, Any]:
    """The config agent ``name`` gets from ``cfg``: ``agent_defaults[name]`` updated by
    ``agent_config`` when ``name`` is the run's agent."""
    defaults = cfg.agent_defaults.get(name, {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"agent_defaults.{name} must be a mapping, got {defaults!r}")
    out = dict(defaults)
    if name == cfg.agent:
        out.update(cfg.agent_config)
    return out


__all__ = ["CHECKPOINT_FORMAT", "Checkpoints", "QueryLog", "RunConfig", "RunDirError", "Runner", "main",
           "read_checkpoint", "weights_sha256"]


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """One ``iter_XXXX.pt`` of a run, verified against its digest and read without unpickling."""
    p = Path(path)
    return Checkpoints(p.parent, keep=0, trust_pickle=trust_pickle).load(p)


def _hash_update(h: Any, obj: Any) -> None:
    """Feed ``obj`` (nested dicts / lists of tensors, arrays and scalars) to ``h`` in a canonical order."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"<{k}>".encode())
            _hash_update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)}".encode())
        for v in obj:
            _hash_update(h, v)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    else:
        h.update(repr(obj).encode())


def weights_sha256(learner_state: dict[str, Any]) -> str:
    """sha256 of a learner's weights: the SSL model's tensors (online and momentum encoders, heads)
    by sorted name, or the whole state of a learner without a ``model`` entry (the latent surrogate)."""
    h = hashlib.sha256()
    _hash_update(h, learner_state.get("model", learner_state))
    return h.hexdigest()


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg_dict))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    p = path.absolute()
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def fit_env_to_agent(cfg: RunConfig, agent: Agent) -> RunConfig:
    """``cfg`` with an env whose spaces are those of an agent that acts on the env itself
    (``acts_on == "env"``): unchanged when they already match, else with the env settings the agent
    names (an ``ie-train`` model's action mode and observation settings). ``ConfigError`` naming both
    spaces when they cannot match."""
    if getattr(agent, "acts_on", "concept") != "env":
        return cfg
    from ie_env.env import env_spaces

    want = agent.spaces()
    got = env_spaces(cfg.env)
    if want is None or (got[0] == want[0] and got[1] == want[1]):
        return cfg
    settings = agent.env_settings()
    if settings:
        from ie_env.config import merge

        fitted = replace(cfg, env=merge(cfg.env, settings))
        got2 = env_spaces(fitted.env)
        if got2[0] == want[0] and got2[1] == want[1]:
            return fitted
    raise ConfigError(f"agent {cfg.agent!r} has observation space {want[0]} and action space {want[1]}, but this env has "
                      f"observation space {got[0]} and action space {got[1]}")


def _note_model_fidelity(agent: Agent, cfg: RunConfig) -> None:
    """A note on stderr when a trained model (``sb3:PATH``) learnt in another fidelity than this run's."""
    meta = getattr(agent, "meta", None)
    trained = ((meta or {}).get("env") or {}).get("world", {}).get("fidelity") if isinstance(meta, dict) else None
    if trained and trained != cfg.env.world.fidelity:
        print(f"[ie-explore] note: the model was trained with env.world.fidelity={trained}; this run uses "
              f"{cfg.env.world.fidelity} (--set env.world.fidelity={trained} to match)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
class Runner:
    """Drives ``agent`` through ``env`` and writes the run directory."""

    def __init__(self, cfg: RunConfig, logdir: str | os.PathLike, resume: bool = False, agent: Agent | None = None,
                 progress: bool = True, trust_pickle: bool = False) -> None:
        self.cfg = cfg
        self.dir = Path(logdir)
        self.progress = progress
        self._resume = resume
        self._resume_state: dict[str, Any] | None = None
        self.writer = None
        self.lock: RunLock | None = None
        check_engine(cfg.env.engine)  # a missing API key or snapshot fails here, before the run dir is written
        # An unknown agent or unreadable model fails here too, before the run dir is written.
        kwargs = agent_kwargs(cfg, cfg.agent)
        if trust_pickle and cfg.agent.startswith("sb3:"):  # a model file the user wrote: SB3 may unpickle it
            kwargs["trust_pickle"] = True
        self.agent = agent if agent is not None else make_agent(cfg.agent, **kwargs)
        self.cfg = cfg = fit_env_to_agent(cfg, self.agent)
        _note_model_fidelity(self.agent, cfg)
        self.resolved = _comparable(to_dict(cfg))
        self.config_sha256 = config_digest(self.resolved)
        self.log = QueryLog(self.dir / "queries.jsonl")
        self.ckpt = Checkpoints(self.dir / "checkpoints", cfg.keep_checkpoints, trust_pickle=trust_pickle)
        created = _missing_dirs(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.dir).acquire()  # one writer: from here on the directory is ours
            self._resume_state = self._check_dir(resume)
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            # The target, engine and world load here: a failure leaves the directory as it was.
            self.env = InternetExplorerEnv(cfg.env, store_dir=str(self.dir / "downloads"))
            self.env.target_class_names  # noqa: B018 - loads an image-folder / torchvision target now
            ctx = AgentContext.from_env(self.env, seed=cfg.seed, with_ground_truth=self.agent.needs_ground_truth)
            self.agent.setup(ctx)
            self.ckpt.clean()
            self.lock.write_meta({"pid": os.getpid(), "config_sha256": self.config_sha256})
            if self._resume_state is not None:  # a fresh run writes it with its first checkpoint
                self._write_config()
        except BaseException:
            self._undo_start(created)
            raise
        self.history: dict[str, list] = {"mean_reward": [], "mean_true_relevance": [], "expected_true_relevance": [],
                                         "iteration_stats": []}
        self.coverage = {"relevant_concepts": set(), "new_relevant_images": 0, "classes_hit": set()}
        self.writer = None
        self.rq = None
        if cfg.reward_quality:
            from ie_env.evaluation.reward_quality import RewardQualityProbe

            self.rq = RewardQualityProbe(self.env, sample=cfg.reward_quality)

    def _write_config(self) -> None:
        atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(self.resolved, sort_keys=False))

    def _undo_start(self, created: list[Path]) -> None:
        """After a failed start: release the lock and remove what this start created (the lock file
        and empty folders in a directory that did not exist before), so nothing blocks a retry."""
        lock, self.lock = self.lock, None
        if created:
            if lock is not None:
                lock.path.unlink(missing_ok=True)
            for sub in sorted((p for p in self.dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_if_empty(sub)
            for d in created:
                _rmdir_if_empty(d)
        if lock is not None:
            lock.release()

    def close(self) -> None:
        """Release the run directory (its lock); the OS does the same when the process dies."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    def __del__(self) -> None:  # a Runner dropped without run(): its lock goes with it
        self.close()

    def holds_run(self) -> bool:
        """Whether the directory holds (part of) a run: its config, log, checkpoints or summary."""
        d = self.dir
        return (any((d / n).exists() for n in ("config.yaml", "queries.jsonl", "summary.json"))
                or bool(self.ckpt.files()))

    def _check_dir(self, resume: bool) -> dict[str, Any] | None:
        """Refuse to overwrite a run, or to resume one under another config; the checkpoint to
        resume from (None: start afresh)."""
        if not resume:
            if self.holds_run():
                raise FileExistsError(
                    f"{self.dir} already holds a run; pass --resume to continue it or choose another --logdir")
            return None
        cfg_path = self.dir / "config.yaml"
        if cfg_path.exists():
            self._refuse_other_config(yaml.safe_load(cfg_path.read_text()), "config.yaml")
        state = self.ckpt.load_latest()
        if state is not None and "config" in state:
            self._refuse_other_config(state["config"], "its checkpoint")
        # A checkpoint from before configs were kept in them (trusted by the user): the lock file's digest.
        saved_digest = self.lock.read_meta().get("config_sha256") if state is not None and "config" not in state else None
        if saved_digest not in (None, self.config_sha256):
            raise ConfigError(f"refusing to resume {self.dir}: its config (sha256 {str(saved_digest)[:12]}... in "
                              f"{self.lock.path.name}) differs from this one ({self.config_sha256[:12]}...); "
                              "resume with the same config or start a new --logdir")
        if state is None and self.log.path.exists() and self.log.read():
            raise RunDirError(
                f"refusing to resume {self.dir}: queries.jsonl holds {len(self.log.read())} records but there is "
                f"no checkpoint to resume from; queries.jsonl is kept as it is; {start_over_hint(self.dir)}")
        return state

    def _refuse_other_config(self, saved: Any, where: str) -> None:
        diff = _diff_keys(saved, self.resolved)
        if diff:
            raise ConfigError(
                f"refusing to resume {self.dir}: its config ({where}) differs in {', '.join(diff)}; "
                "resume with the same config or start a new --logdir"
            )

    # --- logging --------------------------------------------------------------------------
    def _tb(self, purge_step: int | None):
        if self.writer is None:
            require("tensorboard", "TensorBoard logs of a run")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tb"), purge_step=purge_step)
        return self.writer

    def _note_query(self, info: dict[str, Any]) -> None:
        if info["true_relevance"] >= 0.5:
            self.coverage["relevant_concepts"].add(info["action"])
        self.coverage["new_relevant_images"] += info["new_relevant_images"]
        self.coverage["classes_hit"].update(info["target_classes_hit"])

    def _expected_relevance(self, p: np.ndarray | None) -> float | None:
        """``p . g``: the expected ground-truth relevance of a query drawn from ``p`` (None where the
        agent states no distribution or the world has no ground truth)."""
        if p is None or self.env.config.engine.name != "embedded":
            return None
        g = self.env.world.relevance
        p = np.asarray(p, dtype=np.float64)
        if p.shape != g.shape:
            raise ValueError(f"{type(self.agent).__name__}.action_distribution() has shape {p.shape}, expected {g.shape}")
        return float(p @ g)

    def _log_iteration(self, stats: dict[str, Any], records: list[dict[str, Any]]) -> None:
        it = stats["iteration"]
        w = self._tb(None)
        rewards = [r["query_reward"] for r in records]
        rel = [r["true_relevance"] for r in records]
        self.history["mean_reward"].append(float(np.mean(rewards)))
        self.history["mean_true_relevance"].append(float(np.mean(rel)))
        expected = [r.get("expected_true_relevance") for r in records]
        exp_mean = None if any(e is None for e in expected) else float(np.mean(expected))
        self.history.setdefault("expected_true_relevance", []).append(exp_mean)
        if exp_mean is not None:
            w.add_scalar("iteration/expected_true_relevance", exp_mean, it)
        slim = {k: v for k, v in stats.items() if k not in ("gains", "rescored_rewards")}  # per-query lists
        slim["mean_gain"] = float(np.mean(stats["gains"]))
        slim["distinct_relevant_concepts"] = len(self.coverage["relevant_concepts"])
        slim["new_relevant_images"] = self.coverage["new_relevant_images"]
        slim["target_classes_hit_share"] = len(self.coverage["classes_hit"]) / len(self.env.world.target_ids)
        self.history["iteration_stats"].append(slim)
        w.add_scalar("iteration/mean_query_reward", self.history["mean_reward"][-1], it)
        w.add_scalar("iteration/mean_true_relevance", self.history["mean_true_relevance"][-1], it)
        w.add_scalar("iteration/mean_gain", slim["mean_gain"], it)
        w.add_scalar("coverage/distinct_relevant_concepts", slim["distinct_relevant_concepts"], it)
        w.add_scalar("coverage/new_relevant_images", slim["new_relevant_images"], it)
        w.add_scalar("coverage/target_classes_hit_share", slim["target_classes_hit_share"], it)
        for k, v in (stats.get("knn_accuracy") or {}).items():
            w.add_scalar(f"eval/knn_accuracy_k{k}", v, it)
        for k in ("ssl_loss", "ssl_steps", "ssl_images_per_second", "replay_size", "new_images"):
            if k in stats:
                w.add_scalar(f"ssl/{k.removeprefix('ssl_')}", float(stats[k]), it)
        for k, v in self.agent.stats().items():
            if np.isscalar(v):
                w.add_scalar(f"agent/{k}", float(v), it)
        w.add_histogram("iteration/query_rewards", np.asarray(rewards), it)
        best = sorted(records, key=lambda r: -r["query_reward"])[:5]
        w.add_text("best_queries", "\n".join(f"{r['query_reward']:.4f}  {r['query']}  (g={r['true_relevance']:.2f})" for r in best), it)
        if self.cfg.log_images and self.cfg.env.world.fidelity == "pixels" and best and len(self.env.cache[best[0]["key"]]["images"]):
            w.add_image("best_downloads_vs_nearest_targets", self._best_grid(best[0]["key"]), it)
        w.flush()

    def _best_grid(self, key: str) -> torch.Tensor:
        """Top-8 images of the best query (top row) above each one's nearest target image."""
        import torchvision.utils as vutils

        env = self.env
        imgs = env.cache[key]["images"]
        feats = env.learner.features(imgs)
        sims = feats @ env.target_feats.T
        order = sims.max(dim=1).values.argsort(descending=True)[:8]
        nearest = sims[order].argmax(dim=1)
        rows = np.concatenate([imgs[order.numpy()], env.train_images[nearest.numpy()]])
        t = torch.from_numpy(rows).permute(0, 3, 1, 2).float() / 255.0
        return vutils.make_grid(t, nrow=len(order), padding=1)

    def _log_reward_quality(self) -> None:
        """Measure the reward-quality figures now; TensorBoard ``reward_quality/*`` and the history."""
        m = self.rq.measure()
        self.history.setdefault("reward_quality", []).append(m)
        w = self._tb(None)
        for k, v in m.items():
            if k != "iteration" and v is not None and np.isfinite(v):
                w.add_scalar(f"reward_quality/{k}", float(v), m["iteration"])
        w.flush()

    def _start_reward_quality(self, records: list[dict[str, Any]]) -> None:
        """Fix the panel and reset the latent twin; after a resume, replay the done queries into it."""
        self.rq.start(self.cfg.seed)
        for r in records:
            self.rq.follow(r["action"])

    # --- main loop ------------------------------------------------------------------------
    def _checkpoint(self, info_steps: int) -> None:
        state = {
            "env": self.env.state_dict(),
            "agent": self.agent.state_dict(),
            "history": self.history,
            "coverage": {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.coverage.items()},
            "steps": info_steps,
            "config": self.resolved,
            "config_sha256": self.config_sha256,
        }
        self.ckpt.save(self.env.iteration, state)

    def _setup_ground_truth(self) -> None:
        """An agent that reads ground truth (the oracle) is set up again once the episode's target is
        drawn: with ``targets.mode`` train / heldout, ``reset`` replaces the world's initial target."""
        if self.agent.needs_ground_truth:
            self.agent.setup(AgentContext.from_env(self.env, seed=self.cfg.seed, with_ground_truth=True))

    def _restore(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        state, self._resume_state = self._resume_state, None
        if state is None:
            return None
        store = self.env.store
        keys = state["env"].get("cache_keys") or []
        missing = [k for k in keys if store is not None and state["env"].get("cache") is None and k not in store]
        if missing:
            raise RunDirError(
                f"refusing to resume {self.dir}: downloads/ lacks the images of {len(missing)} of the {len(keys)} "
                "queries the checkpoint refers to (was it deleted or moved?); put it back to resume. queries.jsonl "
                f"and checkpoints/ are kept as they are; {start_over_hint(self.dir)}")
        self.env.load_state_dict(state["env"])
        self._setup_ground_truth()
        self.agent.load_state_dict(state["agent"])
        self.history = state["history"]
        cov = state["coverage"]
        self.coverage = {"relevant_concepts": set(cov["relevant_concepts"]), "new_relevant_images": cov["new_relevant_images"], "classes_hit": set(cov["classes_hit"])}
        return self.env._obs(), {"iteration_closed": True}

    def _replayable(self, records: list[dict[str, Any]], done_steps: int) -> list[dict[str, Any]]:
        """The logged queries after the checkpoint (steps ``done_steps + 1``, ``+ 2``, ...) to replay.
        Records after a gap in the steps (a damaged line of the unfinished iteration) cannot be
        replayed in order: they are moved to the quarantine file, and those steps run again."""
        replay = []
        for i, r in enumerate(records):
            if r["step"] <= done_steps:
                continue
            if r["step"] != done_steps + len(replay) + 1:
                rest = [x for x in records[i:] if x["step"] > done_steps]
                self.log.quarantine([{"after_step": done_steps + len(replay), "record": x} for x in rest],
                                    "unreplayable (after a gap in the steps)")
                self.log.rewrite([x for x in records if x["step"] <= done_steps] + replay)
                break
            replay.append(r)
        return replay

    def run(self, resume: bool | None = None) -> dict[str, Any]:
        """The episode, from the checkpoint when resuming (default: as the Runner was made)."""
        try:
            return self._run(self._resume if resume is None else resume)
        finally:
            self.close()

    def _run(self, resume: bool) -> dict[str, Any]:
        env, agent, cfg = self.env, self.agent, self.cfg
        restored = self._restore() if resume else None
        if restored is None:
            if self.log.read():  # never reached through _check_dir; a last guard against losing records
                raise RunDirError(f"refusing to start {self.dir} afresh: queries.jsonl holds records")
            obs, info = env.reset(seed=cfg.seed)
            self._setup_ground_truth()
            if self.rq is not None:
                self._start_reward_quality([])
                self._tb(purge_step=None)
                self._log_reward_quality()
            self._checkpoint(0)
            self._write_config()  # from here on the directory holds a run
        else:
            obs, info = restored
        done_steps = env.steps
        records = self.log.read()
        if self.rq is not None and restored is not None:
            self._start_reward_quality([r for r in records if r["step"] <= done_steps])
        replay = self._replayable(records, done_steps)
        self._tb(purge_step=None if restored is None else env.iteration + 1)
        iteration_records = []
        budget = cfg.env.query_budget
        pbar = None
        if self.progress:
            from tqdm import tqdm

            pbar = tqdm(total=budget, initial=env.steps, desc=f"{cfg.agent} queries", unit="q", file=sys.stderr)
        t0 = time.time()
        on_env = getattr(agent, "acts_on", "concept") == "env"
        while env.steps < budget:
            env_action = agent.act(obs, info)
            # The concept the action picks now (an agent acting on the env answers in its action space).
            action = int(env.action_mode.to_concept(env_action, env.history)) if on_env else int(env_action)
            expected_g = self._expected_relevance(agent.action_distribution())
            if replay:
                record = replay.pop(0)
                record.setdefault("expected_true_relevance", expected_g)  # logs from before the field
                if record["action"] != action:
                    raise RuntimeError(
                        f"resume diverged at step {env.steps}: agent chose {action}, log has {record['action']}"
                    )
                obs, reward, _, _, info = env.restore_step(record)
            else:
                obs, reward, _, _, info = env.step(env_action if on_env else action)
                record = {
                    "step": env.steps,
                    "iteration": info["iteration"],
                    "action": action,
                    "concept": info["concept"],
                    "query": info["query"],
                    "descriptor": info["descriptor"],
                    "key": info["key"],
                    "cached": info["cached"],
                    "reward": reward,
                    "query_reward": info["query_reward"],
                    "true_relevance": info["true_relevance"],
                    "expected_true_relevance": expected_g,
                    "image_true_relevance": info["image_true_relevance"],
                    "new_relevant_images": info["new_relevant_images"],
                    "hits": info["hits"],
                    "image_rewards": info["image_rewards"],
                }
                self.log.append(record)
            agent.observe(env_action if on_env else action, reward, obs, info)
            if self.rq is not None:
                self.rq.follow(info["action"])
            self._note_query(info)
            iteration_records.append(record)
            if pbar is not None:
                pbar.update(1)
            if info["iteration_closed"]:
                self._log_iteration(info["iteration_stats"], iteration_records)
                if self.rq is not None:
                    self._log_reward_quality()
                iteration_records = []
                self._checkpoint(env.steps)
                if pbar is not None and env.knn_history:
                    pbar.set_postfix(knn=f"{env.knn_history[-1].get(20, 0):.3f}", g=f"{self.history['mean_true_relevance'][-1]:.3f}")
        if pbar is not None:
            pbar.close()
        summary = self.summary(time.time() - t0)
        summary.update(self._final_probe())
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2))
        w = self._tb(None)
        if summary["linear_probe_accuracy"] is not None:
            w.add_scalar("eval/linear_probe_accuracy", summary["linear_probe_accuracy"], env.iteration)
        metrics = {"hparam/final_knn_accuracy": summary["knn_accuracy"][-1] if summary["knn_accuracy"] else 0.0,
                   "hparam/mean_true_relevance": float(np.mean([g for g in summary["mean_true_relevance_per_iteration"]
                                                                if g is not None] or [float("nan")]))}
        episode = summary.get("episode") or {}
        if episode.get("gap_closed") is not None and np.isfinite(episode["gap_closed"]):  # the one score
            w.add_scalar("episode/gap_closed", episode["gap_closed"], env.iteration)
            metrics["hparam/gap_closed"] = float(episode["gap_closed"])
        hp = {"agent": cfg.agent, "seed": cfg.seed, "fidelity": cfg.env.world.fidelity,
              "alignment": cfg.env.world.alignment, "queries_per_iteration": cfg.env.queries_per_iteration,
              "iterations": cfg.env.iterations, "world_hash": summary["world_hash"] or ""}
        hp.update({k: ("" if v is None else v) for k, v in task_record(cfg.task).items()})
        w.add_hparams(hp, metrics, run_name="hparams")
        w.close()
        return summary

    def _final_probe(self) -> dict[str, Any]:
        """Linear-probe accuracy of the final encoder on the target train / test split (the
        target-only baseline's probe is the same function)."""
        from ie_experiments.target_only import final_probe

        return final_probe(self.env, self.cfg.seed)

    def summary(self, seconds: float) -> dict[str, Any]:
        env = self.env
        knn = env.knn_history
        stats = self.history["iteration_stats"]
        out: dict[str, Any] = {
            "agent": self.cfg.agent,
            "seed": self.cfg.seed,
            "iterations": env.iteration,
            "queries": env.steps,
            "knn_accuracy": [h[20] for h in knn if 20 in h],
            "mean_reward_per_iteration": self.history["mean_reward"],
            "mean_true_relevance_per_iteration": self.history["mean_true_relevance"],
            "expected_true_relevance_per_iteration": self.history.get("expected_true_relevance", []),
            "distinct_relevant_concepts_per_iteration": [s["distinct_relevant_concepts"] for s in stats],
            "new_relevant_images_per_iteration": [s["new_relevant_images"] for s in stats],
            "target_classes_hit_share_per_iteration": [s["target_classes_hit_share"] for s in stats],
            "distinct_relevant_concepts": len(self.coverage["relevant_concepts"]),
            "new_relevant_images": self.coverage["new_relevant_images"],
            "target_classes_hit_share": len(self.coverage["classes_hit"]) / len(env.world.target_ids),
            "ssl_loss_per_iteration": [s.get("ssl_loss") for s in stats],
            "random_policy_expected_relevance": float(env.world.relevance.mean()),
            # info["ie_episode"] of the last step: the episode's score as every user's loop reads it
            "episode": env.episode_summary() if env.steps >= env.config.query_budget else None,
            "target_concepts": env.target_class_names,
            "world_hash": env.world.fingerprint(),
            **task_record(self.cfg.task),
            "final_weights_sha256": weights_sha256(env.learner.state_dict()),
            "ssl_init": dict(getattr(env.learner, "init_record", None) or {}) or None,
            "reward_quality_per_iteration": self.history.get("reward_quality", []),
            "seconds_this_process": seconds,
            "counters_this_process": dict(env.counters),
            "replay_misses": env.replay_misses(),  # null unless engine.name=replay
            "quarantined_log_lines": self.log.quarantined(),
        }
        for k in (10, 200):
            out[f"knn_accuracy_k{k}"] = [h[k] for h in knn if k in h]
        if not has_ground_truth(env.config):
            out.update(unknown_ground_truth(out, env.config.engine.name))
        return out


def has_ground_truth(env_cfg: EnvConfig) -> bool:
    """Whether ground-truth relevance g means anything for runs of ``env_cfg``: only in the embedded
    world searched for its own hidden targets. A search engine's images have no g, and with a user's
    target set (``target.kind`` imagefolder / torchvision) the world's g measures closeness to the
    world's targets, not to that set."""
    return env_cfg.engine.name == "embedded" and env_cfg.target.kind == "embedded"


def unknown_ground_truth(summary: dict[str, Any], engine: str) -> dict[str, Any]:
    """What a run without ground truth (:func:`has_ground_truth`) reports instead of its figures: None
    (unknown, not 0) for every figure computed from ``g``, and no embedded-world identity (its hash
    covers the world's own target theme, which is not this run's target)."""
    per_iter = len(summary.get("mean_reward_per_iteration", []))
    out: dict[str, Any] = {"engine": engine, "ground_truth": False, "world_hash": None,
                           "random_policy_expected_relevance": None, "distinct_relevant_concepts": None,
                           "new_relevant_images": None, "target_classes_hit_share": None}
    for k in ("mean_true_relevance_per_iteration", "expected_true_relevance_per_iteration",
              "distinct_relevant_concepts_per_iteration", "new_relevant_images_per_iteration",
              "target_classes_hit_share_per_iteration"):
        out[k] = [None] * per_iter
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-explore", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name} shipped with the package)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set env.iterations=4")
    p.add_argument("--task", default=None, help="a suite task id (ie_env.suite): its held-out evaluation config")
    p.add_argument("--agent", default=None, help="agent name (gp, random, uniform, greedy, gp_ucb, oracle, ...)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--logdir", default=None, help="run directory (default runs/<agent>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --logdir where it stopped")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load checkpoints that hold pickled objects or lack a .sha256 digest (e.g. from older "
                        "versions), and sb3:PATH models SB3 must unpickle; unpickling can run code: only for files "
                        "you wrote yourself")
    return p.parse_args(argv)


def task_record(task_id: str) -> dict[str, Any]:
    """``task``, ``task_version`` and ``task_world_hash`` of a suite task id (all None without one)."""
    if not task_id:
        return {"task": None, "task_version": None, "task_world_hash": None}
    from ie_env import suite

    return {"task": task_id, "task_version": suite.get_task(task_id).version, "task_world_hash": suite.world_hash(task_id)}


def build_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "task", None):  # the task's held-out evaluation config, then --config and --set
        from ie_env.config import apply_overrides, load_yaml, merge
        from ie_env.suite import eval_config

        from ie_env.suite import get_task

        cfg = RunConfig(env=eval_config(args.task), task=args.task, seed=get_task(args.task).eval_seed0)
        cfg = merge(cfg, load_yaml(args.config)) if args.config else cfg
        extra = ([f"agent={args.agent}"] if args.agent is not None else []) + ([f"seed={args.seed}"] if args.seed is not None else [])
        return apply_overrides(cfg, overrides + extra)
    if args.agent is not None:
        overrides.append(f"agent={args.agent}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return resolve(RunConfig, args.config or DEFAULT_CONFIG, overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        logdir = args.logdir or f"runs/{cfg.agent}-seed{cfg.seed}"
        runner = Runner(cfg, logdir, resume=args.resume, progress=not args.no_progress, trust_pickle=args.trust_pickle)
        summary = runner.run(resume=args.resume)
    except (ConfigError, FileExistsError, ValueError) as exc:  # RunDirError included
        print(f"ie-explore: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(out_of_memory_message("ie-explore"), file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable directory, disk full, ...: what was written before stays
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"ie-explore: error: {exc.strerror or exc}{where}. Nothing written before is lost; fix the cause "
              "and run the same command again (with --resume if the run had started)", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("agent", "iterations", "queries", "knn_accuracy", "mean_true_relevance_per_iteration")}))
    print(f"run directory: {logdir}  (tensorboard --logdir {logdir}/tb)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
