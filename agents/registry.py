"""Agents by name: ``make_agent("gp", smr=3.0)``.

Where a name is looked up, in order:

* ``"PREFIX:REST"`` with a registered prefix (e.g. ``"sb3:runs/ppo.zip"``, any SB3 / sb3-contrib
  model file) goes to the handler registered with ``register_prefix(prefix, handler)``, where
  ``handler(rest, **config) -> Agent``;
* ``"package.module:Name"`` imports ``package.module`` (the user's own code, on ``sys.path``) and
  calls ``Name(**config)``: an :class:`~ie_agents.base.Agent` subclass or a factory returning one;
* plain names: the built-in classes in ``AGENTS``, then the entry points of the group
  :data:`ENTRY_POINT_GROUP` that installed packages declare, e.g. in their ``pyproject.toml``::

      [project.entry-points."ie_env.agents"]
      mine = "my_package.agents:MyAgent"
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from ie_agents.base import Agent
from ie_agents.baselines import (
    GPUCBAgent,
    GreedyGPMeanAgent,
    OracleAgent,
    RandomAgent,
    UniformNoReplacementAgent,
)
from ie_agents.gp_sampler import GPSamplerAgent

__all__ = ["AGENTS", "ENTRY_POINT_GROUP", "PREFIX_HANDLERS", "agent_names", "entry_point_agents", "load_object",
           "make_agent", "register_prefix"]

#: The entry-point group through which installed packages add agents by name.
ENTRY_POINT_GROUP = "ie_env.agents"
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

AGENTS: dict[str, type[Agent]] = {
    "gp": GPSamplerAgent,
    "random": RandomAgent,
    "uniform": UniformNoReplacementAgent,
    "greedy": GreedyGPMeanAgent,
    "gp_ucb": GPUCBAgent,
    "oracle": OracleAgent,
}

PREFIX_HANDLERS: dict[str, Callable[..., Agent]] = {}


def register_prefix(prefix: str, handler: Callable[..., Agent]) -> None:
    """Route names ``"{prefix}:..."`` to ``handler(rest, **config)`` (e.g. ``sb3`` model files)."""
    if not prefix or ":" in prefix:
        raise ValueError(f"invalid agent prefix {prefix!r}")
    PREFIX_HANDLERS[prefix] = handler


def entry_point_agents() -> dict[str, Any]:
    """Name -> entry point of every agent that an installed package declares in
    :data:`ENTRY_POINT_GROUP` (not loaded yet)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def agent_names() -> list[str]:
    plugins = sorted(set(entry_point_agents()) - set(AGENTS))
    return sorted(AGENTS) + plugins + [f"{p}:..." for p in sorted(PREFIX_HANDLERS)] + ["module.path:ClassOrFactory"]


def load_object(spec: str) -> Any:
    """The object ``"package.module:Attr.Path"`` names. ``ValueError`` naming ``spec`` and the import
    error when its module fails to import or lacks the attribute."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may fail in any way while it imports
        raise ValueError(
            f"agent {spec!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise ValueError(f"agent {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _build(obj: Any, source: str, config: dict[str, Any]) -> Agent:
    """``obj(**config)`` (an Agent class or a factory), checked to be an agent."""
    if not callable(obj):
        raise ValueError(f"agent {source!r} is a {type(obj).__name__}, not an Agent class or factory")  # noqa: TRY004
    agent = obj(**config)
    if not all(callable(getattr(agent, m, None)) for m in ("setup", "act")):
        raise ValueError(f"agent {source!r} built a {type(agent).__name__}, which lacks setup() and act() "
                         "(subclass ie_agents.base.Agent)")
    return agent


def make_agent(name: str, **config: Any) -> Agent:
    """Build the agent registered as ``name`` with config overrides ``config``.

    Unknown names raise ``ValueError`` listing the registered ones; unknown config keys raise
    ``ie_env.config.ConfigError`` (a ``ValueError``) listing the valid keys.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"agent name must be a non-empty string; registered: {', '.join(agent_names())}")
    if ":" in name:
        prefix, rest = name.split(":", 1)
        handler = PREFIX_HANDLERS.get(prefix)
        if handler is not None:
            return handler(rest, **config)
        if _MODULE_PATH.fullmatch(prefix) and _MODULE_PATH.fullmatch(rest) and importlib.util.find_spec(
                prefix.split(".")[0]) is not None:
            return _build(load_object(name), name, config)
        raise ValueError(f"unknown agent prefix {prefix!r} in {name!r} (no registered prefix, no importable module); "
                         f"registered: {', '.join(agent_names())}")
    cls = AGENTS.get(name)
    if cls is not None:
        return cls(**config)
    ep = entry_point_agents().get(name)
    if ep is None:
        raise ValueError(f"unknown agent {name!r}; registered: {', '.join(agent_names())}")
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin may fail in any way while it imports
        raise ValueError(f"agent {name!r} (entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r}) failed to import: "
                         f"{type(exc).__name__}: {exc}") from exc
    return _build(obj, f"{name} = {ep.value}", config)


def _sb3(rest: str, **cfg):
    """``sb3:PATH``: a trained Stable-Baselines3 model run through the agent interface."""
    from ie_agents.sb3_agent import SB3Agent

    return SB3Agent(rest, **cfg)


PREFIX_HANDLERS.setdefault("sb3", _sb3)


def _slate_random(rest: str, **cfg):
    """``slate_random:PATH``: a uniformly random slot of the slate that the model at PATH is shown
    (the proposal's own value, DESIGN §7)."""
    from ie_agents.sb3_agent import SlateRandomAgent, read_model_meta

    return SlateRandomAgent(read_model_meta(rest), **cfg)


PREFIX_HANDLERS.setdefault("slate_random", _slate_random)


def _torch_policy(rest: str, **cfg):
    """``torch:PATH``: a slate policy saved by ``experiments/ppo_batched.py`` (state_dict + JSON)."""
    from ie_agents.torch_policy import TorchPolicyAgent

    return TorchPolicyAgent(rest, **cfg)


PREFIX_HANDLERS.setdefault("torch", _torch_policy)
