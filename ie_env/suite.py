"""The task suite: registered, versioned ids of the embedded world, each pinned completely.

A task is a name, a version and a pinned :class:`~ie_env.env.EnvConfig` (world seed, vocabulary and
its hash, text-visual alignment, targets per episode, target images per class, fidelity, the target
distribution with disjoint train and held-out themes, query budget, reward kind, action interface).
``gymnasium.make(task_id)`` builds it with targets from the *train* themes (for training); the
benchmark evaluates on the *held-out* themes at the fixed episode seeds ``eval_seed0 + s``.

Family: difficulty (``Easy``, ``Standard``, ``Hard``) x fidelity (``IELatent-*``, ``IEPixels-*``), and
``*-Gain`` twins of the Standard ids whose reward is the design's target-similarity gain from SSL
training instead of the query reward (same world, targets and dynamics; ``docs/rewards.md`` says how the
gain, known only when an iteration closes, is credited to the steps).
Suites (``--suite NAME`` of ``ie-benchmark``) name lists of ids.

Golden values (``tests/golden/suite.json``, written by ``scripts/make_suite_golden.py``) hold each
id's resolved config, world hash and random-policy score; ``check_golden`` reports every id whose
figures moved beyond :data:`TOLERANCE`. A change that moves them needs a new version of the id and a
line in ``CHANGELOG.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "TaskSpec", "TASKS", "SUITES", "TOLERANCE", "GOLDEN_EPISODES", "get_task", "suite_tasks", "task_config",
    "eval_config", "make_task_env", "task_spaces", "world_hash", "golden_record", "check_golden", "register_suite",
]

VOCABULARY_HASH = "d22b06a72b9faef2"  # fingerprint of the shipped embedded vocabulary (2,518 senses)
GOLDEN_EPISODES = 5  # held-out episodes (seeds eval_seed0 ...) of the random-policy golden score
#: How far golden figures may move (float differences between platforms stay far inside these).
TOLERANCE = {"digest_abs": 1e-4, "random_gap_closed_abs": 1e-3, "random_return_rel": 1e-3}


@dataclass(frozen=True)
class TaskSpec:
    """One versioned task: ``id = f"{name}-v{version}"``."""

    name: str
    version: int
    difficulty: str
    fidelity: str
    config: dict[str, Any]  # the pinned EnvConfig values (what gym.make(id) uses)
    description: str = ""
    vocabulary_hash: str = VOCABULARY_HASH
    eval_seed0: int = 10_000  # benchmark seed s = the held-out episode reset(seed=eval_seed0 + s)

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def budget(self) -> int:
        """Queries per episode (the id's ``max_episode_steps``)."""
        return int(self.config["iterations"]) * int(self.config["queries_per_iteration"])

    @property
    def nondeterministic(self) -> bool:
        """Pixels + SSL is not bit-exact across thread counts and devices."""
        return self.fidelity == "pixels"


def _world(fidelity: str, alignment: float, num_targets: int, per_class: int) -> dict[str, Any]:
    return {
        "vocabulary": "embedded", "seed": 0, "latent_dim": 16, "alignment": alignment, "image_noise": 0.5,
        "relevance_radius": 1.6, "fidelity": fidelity, "image_size": 32, "target_theme": "bird",
        "num_targets": num_targets, "target_train_per_class": per_class, "target_test_per_class": 30,
        "junk_fraction": 0.1, "neighbor_fraction": 0.15, "num_neighbors": 5, "target_concepts": [],
    }


def _pinned(fidelity: str, alignment: float, num_targets: int, per_class: int, iterations: int = 8,
            **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "world": _world(fidelity, alignment, num_targets, per_class),
        "surrogate": {"shrinkage": 0.1, "prior_count": 64.0, "bias": 4.0},
        "descriptors": {"kind": "none"},
        "images_per_query": 50, "min_images": 10, "queries_per_iteration": 16, "iterations": iterations,
        "reward": "query", "k": 15, "top_images": 10, "pcr": 2.0, "replay_fraction": 0.5, "replay_capacity": 0,
        "warmup_images": 2560, "history": 4, "mask_queried": False,
        "action_mode": "slate",
        "actions": {"embed_dim": 32, "summary": True, "slate_size": 16, "slate_neighbor_share": 0.5,
                    "slate_seeds": 4, "slate_neighbors": 16, "kernel_width": 0.1, "embedding_unqueried": True},
        "targets": {"mode": "train", "heldout_fraction": 0.25, "heldout_themes": [], "split_seed": 0},
        "target": {"kind": "embedded"},
        "info_level": "minimal", "evaluate": False, "blas_threads": 1,
    }
    cfg.update(extra)
    return cfg


_PIXELS_SSL = {"backbone": "resnet18", "batch_size": 128, "epochs_per_iteration": 1.0, "min_steps": 10,
               "max_steps": 24, "lr": 1e-3, "optimizer": "adamw", "objective": "mocov3"}

_SPECS = [
    TaskSpec("IELatent-Easy", 1, "easy", "latent", _pinned("latent", 1.0, 20, 20),
             "text predicts looks exactly (alignment 1.0), 20 targets x 20 images"),
    TaskSpec("IELatent-Standard", 1, "standard", "latent", _pinned("latent", 0.95, 20, 10),
             "the default world: alignment 0.95, 20 targets x 10 images (few-shot, DESIGN 3a)"),
    TaskSpec("IELatent-Hard", 1, "hard", "latent", _pinned("latent", 0.7, 10, 5),
             "weaker text prior (alignment 0.7), 10 targets x 5 images"),
    TaskSpec("IEPixels-Standard", 1, "standard", "pixels",
             _pinned("pixels", 0.95, 20, 10, iterations=4, ssl=_PIXELS_SSL, warmup_images=1280,
                     info_level="full", evaluate=True, knn_k=[20, 10, 200]),
             "the Standard world rendered at 32 px, MoCo-v3 resnet18 in the loop, 4 x 16 queries"),
    TaskSpec("IELatent-Standard-Gain", 1, "standard", "latent", _pinned("latent", 0.95, 20, 10, reward="gain"),
             "IELatent-Standard-v1 with reward = gain: the sum of the iteration's per-query gains, paid at its close step"),
    TaskSpec("IEPixels-Standard-Gain", 1, "standard", "pixels",
             _pinned("pixels", 0.95, 20, 10, iterations=4, ssl=_PIXELS_SSL, warmup_images=1280,
                     info_level="full", evaluate=True, knn_k=[20, 10, 200], reward="gain"),
             "IEPixels-Standard-v1 with reward = gain: the sum of the iteration's per-query gains, paid at its close step"),
]

#: id -> spec of every registered task.
TASKS: dict[str, TaskSpec] = {s.id: s for s in _SPECS}
#: suite name -> task ids.
SUITES: dict[str, list[str]] = {
    "latent": ["IELatent-Easy-v1", "IELatent-Standard-v1", "IELatent-Hard-v1"],
    "pixels": ["IEPixels-Standard-v1"],
    "gain": ["IELatent-Standard-Gain-v1", "IEPixels-Standard-Gain-v1"],
    "all": [s.id for s in _SPECS],
}


def get_task(task_id: str) -> TaskSpec:
    if task_id not in TASKS:
        raise ValueError(f"unknown task {task_id!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[task_id]


def suite_tasks(name: str) -> list[str]:
    """The ids of suite ``name``, or of one task id given in its place."""
    if name in SUITES:
        return list(SUITES[name])
    if name in TASKS:
        return [name]
    raise ValueError(f"unknown suite {name!r}; registered suites: {', '.join(f'{k} ({len(v)} tasks)' for k, v in SUITES.items())}; "
                     f"registered tasks: {', '.join(TASKS)}")


def task_config(task_id: str, overrides: dict[str, Any] | None = None) -> Any:
    """The task's EnvConfig (training split), with optional nested ``overrides``."""
    from ie_env.config import merge
    from ie_env.env import make_config

    cfg = make_config(get_task(task_id).config)
    return merge(cfg, overrides) if overrides else cfg


def eval_config(task_id: str, fidelity: str | None = None) -> Any:
    """The held-out evaluation config of a task: targets from held-out themes, concept-index actions
    (every agent of the runner picks concepts; SB3 policies rebuild their own observation), full info.
    ``fidelity`` gives the task's twin in the other fidelity (same world seed and targets)."""
    spec = get_task(task_id)
    fid = fidelity or spec.fidelity
    return task_config(task_id, {"targets": {"mode": "heldout"}, "action_mode": "vocab", "info_level": "full",
                                 "evaluate": fid == "pixels", "world": {"fidelity": fid}})


def make_task_env(task_id: str, config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Gymnasium entry point of the suite ids: the pinned config, then ``config`` overrides."""
    from ie_env.env import InternetExplorerEnv

    spec = get_task(task_id)
    cfg = task_config(task_id, config)
    env = InternetExplorerEnv(cfg, **kwargs)
    from ie_env.registration import warn_time_limit

    warn_time_limit(env, spec.budget)
    if cfg.world.vocabulary == spec.config["world"]["vocabulary"]:
        got = env.vocabulary.fingerprint()
        if got != spec.vocabulary_hash:
            raise RuntimeError(f"{task_id} is pinned to vocabulary {spec.vocabulary_hash}, this install has {got}: "
                               "the shipped vocabulary changed; give the task a new version")
    env.task_id, env.task_version = spec.id, spec.version
    return env


def make_task_vector_env(task_id: str, num_envs: int = 1, config: dict[str, Any] | None = None, copy: bool = True,
                         device: str | None = None, **kwargs: Any) -> Any:
    """``gymnasium.make_vec``'s builder for the suite ids: a native vector env of ``num_envs`` tasks, or with
    ``device`` (``"cpu"``, ``"cuda"``) the batched torch backend of a latent task
    (:class:`~ie_env.batched.BatchedLatentVectorEnv`)."""
    if device is not None:
        from ie_env.batched import BatchedLatentVectorEnv

        return BatchedLatentVectorEnv(task_config(task_id, config), num_envs, device=device, task_id=task_id)
    from ie_env.registration import vector_kwargs
    from ie_env.vector import InternetExplorerVectorEnv

    copy, kwargs = vector_kwargs({**kwargs, "copy": copy})
    envs = [make_task_env(task_id, config, **kwargs) for _ in range(int(num_envs))]
    return InternetExplorerVectorEnv(envs, copy=copy)


def register_suite() -> None:
    import gymnasium as gym

    for spec in TASKS.values():
        if spec.id not in gym.registry:
            gym.register(id=spec.id, entry_point="ie_env.suite:make_task_env",
                         vector_entry_point="ie_env.suite:make_task_vector_env", kwargs={"task_id": spec.id},
                         max_episode_steps=spec.budget,
                         nondeterministic=spec.nondeterministic, disable_env_checker=False)


# ---------------------------------------------------------------------------------------------
# World hash and golden values
# ---------------------------------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode()


def _world_parts(task_id: str) -> dict[str, Any]:
    """What the world hash covers: the pinned world and target distribution, the vocabulary hash, the
    concept latents, the theme split's concepts and (pixels) a rendered sample of the targets."""
    from ie_env.config import to_dict
    from ie_env.target_sampling import TargetSampler
    from ie_env.worlds.embedded import EmbeddedWorld, NS_TRAIN, load_vocabulary
    from ie_env.worlds.shared import shared_concept_embeddings

    cfg = task_config(task_id)
    vocab = load_vocabulary(cfg.world.vocabulary)
    world = EmbeddedWorld(cfg.world, vocab, shared_concept_embeddings(vocab))
    sampler = TargetSampler(vocab, cfg.world.num_targets, cfg.targets)
    split = {s: [int(i) for i in sampler.split_concepts(s)] for s in ("train", "heldout")}
    parts: dict[str, Any] = {
        "config": {"world": to_dict(cfg.world), "targets": to_dict(cfg.targets)},
        "vocabulary_hash": vocab.fingerprint(),
        "themes": {"train": sampler.train_themes, "heldout": sampler.heldout_themes},
        "split": split,
        "latents": world.latents,
    }
    if cfg.world.fidelity == "pixels":
        ids = world.target_ids
        parts["pixels"] = world.images(ids, np.zeros(len(ids), dtype=np.int64), NS_TRAIN)
    return parts


def _digests(parts: dict[str, Any]) -> dict[str, float]:
    """Float summaries of the world's arrays, compared with a tolerance across platforms."""
    lat = parts["latents"].astype(np.float64)
    proj = np.random.default_rng(0).standard_normal((lat.shape[1], 8))
    out = {"latents_mean": float(lat.mean()), "latents_std": float(lat.std())}
    out.update({f"latents_proj{j}": float(v) for j, v in enumerate(np.tanh(lat @ proj / 4.0).mean(axis=0))})
    if "pixels" in parts:
        px = parts["pixels"].astype(np.float64) / 255.0
        out.update({f"pixels_mean_c{c}": float(px[..., c].mean()) for c in range(px.shape[-1])})
        out["pixels_std"] = float(px.std())
    return out


@lru_cache(maxsize=None)
def world_hash(task_id: str) -> str:
    """sha256 (16 hex digits) of the task's world: config, vocabulary hash, latents, target split, pixels
    (memoised per process)."""
    return _hashes(_world_parts(task_id))[0]


def _hashes(parts: dict[str, Any]) -> tuple[str, str]:
    """(world hash over every part's bytes, structure hash over the parts without floats)."""
    structure = hashlib.sha256(_canonical({k: parts[k] for k in ("config", "vocabulary_hash", "themes", "split")}))
    full = structure.copy()
    for k in ("latents", "pixels"):
        if k in parts:
            full.update(np.ascontiguousarray(parts[k]).tobytes())
    return full.hexdigest()[:16], structure.hexdigest()[:16]


def random_policy_score(task_id: str, episodes: int = GOLDEN_EPISODES) -> dict[str, Any]:
    """The uniformly random policy on the task's first ``episodes`` held-out episodes: mean gap closed
    (from ground-truth relevance) and, for latent tasks, mean return; the held-out target ids too.

    Pixels tasks are measured on their latent twin (same world, targets and relevance; the return
    under SSL is not bit-exact, so it is left out)."""
    from ie_env.env import InternetExplorerEnv

    spec = get_task(task_id)
    cfg = task_config(task_id, {"targets": {"mode": "heldout"}, "action_mode": "vocab", "info_level": "minimal",
                                "evaluate": False, "world": {"fidelity": "latent"}})
    env = InternetExplorerEnv(cfg)
    n, budget = len(env.vocabulary), cfg.query_budget
    gaps, returns, targets = [], [], []
    for e in range(episodes):
        seed = spec.eval_seed0 + e
        env.reset(seed=seed)
        actions = np.random.default_rng(seed).integers(n, size=budget)
        rel = env.world.relevance.astype(np.float64)
        r = float(rel.mean())
        gaps.append((float(rel[actions].mean()) - r) / (float(rel.max()) - r))
        targets.append([int(i) for i in env.world.target_ids])
        if spec.fidelity == "latent":
            returns.append(float(sum(env.step(int(a))[1] for a in actions)))
    out: dict[str, Any] = {"episodes": episodes, "random_gap_closed": float(np.mean(gaps)), "heldout_targets": targets}
    if returns:
        out["random_return"] = float(np.mean(returns))
    return out


def golden_record(task_id: str) -> dict[str, Any]:
    """Everything the golden test pins for one id."""
    from ie_env.config import to_dict

    spec = get_task(task_id)
    parts = _world_parts(task_id)
    full, structure = _hashes(parts)
    return {
        "version": spec.version,
        "world_hash": full,
        "structure_hash": structure,
        "vocabulary_hash": parts["vocabulary_hash"],
        "digests": _digests(parts),
        **random_policy_score(task_id),
        "config": json.loads(json.dumps(to_dict(task_config(task_id)), default=str)),
    }


def _config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Keys whose value changed or that disappeared (keys added with a default are allowed)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in old for c in (_config_changes(old[k], new[k], f"{prefix}{k}.") if k in new else [f"{prefix}{k} (removed)"])]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_golden(golden: dict[str, Any], ids: list[str] | None = None) -> dict[str, list[str]]:
    """``{id: [problems]}`` for every registered id (or ``ids``) whose current figures differ from
    ``golden`` beyond :data:`TOLERANCE`; an empty dict means everything matches."""
    problems: dict[str, list[str]] = {}
    for tid in ids or list(TASKS):
        g = golden.get("tasks", {}).get(tid)
        if g is None:
            problems[tid] = ["no golden record: run `python scripts/make_suite_golden.py` and add a CHANGELOG.md line"]
            continue
        cur = golden_record(tid)
        bad = [f"config {c}" for c in _config_changes(g["config"], cur["config"])]
        if cur["vocabulary_hash"] != g["vocabulary_hash"]:
            bad.append(f"vocabulary hash {g['vocabulary_hash']} -> {cur['vocabulary_hash']}")
        if cur["world_hash"] != g["world_hash"]:
            if cur["structure_hash"] != g["structure_hash"]:
                bad.append(f"world hash {g['world_hash']} -> {cur['world_hash']} (structure {g['structure_hash']} -> {cur['structure_hash']})")
            for k, v in g["digests"].items():
                if abs(cur["digests"].get(k, np.inf) - v) > TOLERANCE["digest_abs"]:
                    bad.append(f"world hash {g['world_hash']} -> {cur['world_hash']}: {k} {v:.6f} -> {cur['digests'].get(k)}")
        if cur["heldout_targets"] != g["heldout_targets"]:
            bad.append("held-out targets of the evaluation episodes changed")
        if abs(cur["random_gap_closed"] - g["random_gap_closed"]) > TOLERANCE["random_gap_closed_abs"]:
            bad.append(f"random-policy gap closed {g['random_gap_closed']:.5f} -> {cur['random_gap_closed']:.5f}")
        if "random_return" in g:
            rr = cur.get("random_return", np.inf)
            if abs(rr - g["random_return"]) > TOLERANCE["random_return_rel"] * max(1.0, abs(g["random_return"])):
                bad.append(f"random-policy return {g['random_return']:.5f} -> {rr:.5f}")
        if bad:
            problems[tid] = bad + [f"bump the version of {get_task(tid).name} and add a CHANGELOG.md line saying why, "
                                   "then run `python scripts/make_suite_golden.py`"]
    return problems


def task_spaces(task_id: str) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of ``gymnasium.make(task_id)`` (built without an env)."""
    from ie_env.actions import make_action_mode
    from ie_env.worlds.embedded import load_vocabulary
    from ie_env.worlds.shared import shared_concept_embeddings

    cfg = task_config(task_id)
    emb = shared_concept_embeddings(load_vocabulary(cfg.world.vocabulary))
    mode = make_action_mode(cfg.action_mode, cfg.actions, emb, cfg.history, cfg.query_budget, cfg.mask_queried)
    return mode.observation_space, mode.action_space
