"""Gymnasium ids of the environment; ``import ie_env`` registers them."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import gymnasium as gym

ENTRY_POINT = "ie_env.env:InternetExplorerEnv"

#: id -> default kwargs. ``gymnasium.make(id, config={...})`` overrides any config field.
ENV_IDS: dict[str, dict[str, Any]] = {
    # The paper's loop on the embedded offline web: pixels with SSL in the loop, sized for a CPU.
    "InternetExplorer-v0": {},
    # The same world without pixels: a whitening surrogate learner over image latents (fast RL).
    "InternetExplorerLatent-v0": {"world": {"fidelity": "latent"}},
    # Learning to explore: a fresh hidden target per reset from the training themes, slate actions,
    # lean info (ground-truth relevance kept), no k-NN. Evaluate on the held-out twin below.
    "InternetExplorerLatentRL-v0": {
        "world": {"fidelity": "latent"},
        "targets": {"mode": "train"},
        "action_mode": "slate",
        "actions": {"embed_dim": 32, "summary": True},
        "info_level": "minimal",
        "evaluate": False,
        "blas_threads": 1,
    },
    # The same, with targets from held-out themes that no training target uses.
    "InternetExplorerLatentRLHeldout-v0": {
        "world": {"fidelity": "latent"},
        "targets": {"mode": "heldout"},
        "action_mode": "slate",
        "actions": {"embed_dim": 32, "summary": True},
        "info_level": "minimal",
        "evaluate": False,
        "blas_threads": 1,
    },
}


#: EnvConfig's own budget (``iterations`` x ``queries_per_iteration``) where an id's defaults leave it.
DEFAULT_ITERATIONS, DEFAULT_QUERIES_PER_ITERATION = 8, 16


def default_budget(defaults: dict[str, Any]) -> int:
    """The query budget of an id's defaults: its ``max_episode_steps`` (a test checks it against the
    built env's ``config.query_budget``)."""
    return int(defaults.get("iterations", DEFAULT_ITERATIONS)) * int(
        defaults.get("queries_per_iteration", DEFAULT_QUERIES_PER_ITERATION))


def warn_time_limit(env: Any, spec_steps: int) -> None:
    """A warning when a config raises the budget above the spec's ``max_episode_steps``:
    ``gymnasium.make``'s ``TimeLimit`` would cut episodes at ``spec_steps`` unless the caller passed
    ``max_episode_steps`` (which the env cannot see)."""
    budget = env.config.query_budget
    if budget > spec_steps:
        import warnings

        warnings.warn(f"this config's query budget is {budget} queries but the id's max_episode_steps is {spec_steps}: "
                      f"gymnasium.make(..., max_episode_steps={budget}) lets episodes run to their budget",
                      stacklevel=3)


def _entry(**kwargs: Any):
    from ie_env.env import InternetExplorerEnv, make_config

    defaults = kwargs.pop("_defaults")
    cfg = make_config(defaults)
    extra = kwargs.pop("config", None)
    if extra:
        from ie_env.config import merge

        cfg = merge(cfg, extra)
    env = InternetExplorerEnv(cfg, **kwargs)
    warn_time_limit(env, default_budget(defaults))
    return env


def vector_kwargs(kwargs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """``(copy, env kwargs)`` of a vector entry point's kwargs. ``max_episode_steps`` (which
    ``gymnasium.make_vec`` passes from the spec) is dropped: every episode ends at its query budget."""
    kwargs = dict(kwargs)
    kwargs.pop("max_episode_steps", None)
    return bool(kwargs.pop("copy", True)), kwargs


def _vector_entry(num_envs: int = 1, **kwargs: Any):
    """``gymnasium.make_vec``'s builder for these ids: :class:`~ie_env.vector.InternetExplorerVectorEnv`
    of ``num_envs`` envs made as ``gymnasium.make`` makes one (without its wrappers); with ``device`` the
    batched torch backend of the latent fidelity (:class:`~ie_env.batched.BatchedLatentVectorEnv`)."""
    if kwargs.get("device") is not None:
        return _batched_entry(num_envs, **kwargs)
    from ie_env.vector import InternetExplorerVectorEnv

    copy, kwargs = vector_kwargs(kwargs)
    return InternetExplorerVectorEnv([_entry(**deepcopy(kwargs)) for _ in range(int(num_envs))], copy=copy)


def _batched_entry(num_envs: int, device: str, _defaults: dict[str, Any], config: dict | None = None, **_: Any):
    from ie_env.batched import BatchedLatentVectorEnv
    from ie_env.config import merge
    from ie_env.env import make_config

    cfg = make_config(deepcopy(_defaults))
    return BatchedLatentVectorEnv(merge(cfg, config) if config else cfg, num_envs, device=device)


def register_envs() -> None:
    """Register :data:`ENV_IDS` and the versioned task suite (:mod:`ie_env.suite`)."""
    for env_id, defaults in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="ie_env.registration:_entry",
                vector_entry_point="ie_env.registration:_vector_entry",
                kwargs={"_defaults": defaults},
                max_episode_steps=default_budget(defaults),
                disable_env_checker=False,
                # pixels + SSL is not bit-exact across thread counts and devices
                nondeterministic=defaults.get("world", {}).get("fidelity", "pixels") == "pixels",
            )
    from ie_env.suite import register_suite

    register_suite()
