"""Agents by name: ``make_agent("gp", smr=3.0)``.

Plain names map to classes in ``AGENTS``; a name of the form ``"PREFIX:REST"`` (e.g.
``"sb3:runs/ppo.zip"``) goes to the handler registered for ``PREFIX`` with
``register_prefix(prefix, handler)``, where ``handler(rest, **config) -> Agent``.
"""

from __future__ import annotations

from typing import Any, Callable

from agents.base import Agent
from agents.baselines import GPUCBAgent, GreedyGPMeanAgent, OracleAgent, RandomAgent, UniformNoReplacementAgent
from agents.gp_sampler import GPSamplerAgent

__all__ = ["AGENTS", "PREFIX_HANDLERS", "make_agent", "register_prefix", "agent_names"]

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


def agent_names() -> list[str]:
    return sorted(AGENTS) + [f"{p}:..." for p in sorted(PREFIX_HANDLERS)]


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
        if handler is None:
            raise ValueError(
                f"unknown agent prefix {prefix!r} in {name!r}; registered: {', '.join(agent_names())}"
            )
        return handler(rest, **config)
    cls = AGENTS.get(name)
    if cls is None:
        raise ValueError(f"unknown agent {name!r}; registered: {', '.join(agent_names())}")
    return cls(**config)


def _sb3(rest: str, **cfg):
    """``sb3:PATH``: a trained Stable-Baselines3 model run through the agent interface."""
    from agents.sb3_agent import SB3Agent

    return SB3Agent(rest, **cfg)


PREFIX_HANDLERS.setdefault("sb3", _sb3)


def _slate_random(rest: str, **cfg):
    """``slate_random:PATH``: a uniformly random slot of the slate that the model at PATH is shown
    (the proposal's own value, DESIGN §7)."""
    from agents.sb3_agent import SlateRandomAgent, read_model_meta

    return SlateRandomAgent(read_model_meta(rest), **cfg)


PREFIX_HANDLERS.setdefault("slate_random", _slate_random)


def _torch_policy(rest: str, **cfg):
    """``torch:PATH``: a slate policy saved by ``experiments/ppo_batched.py`` (state_dict + JSON)."""
    from agents.torch_policy import TorchPolicyAgent

    return TorchPolicyAgent(rest, **cfg)


PREFIX_HANDLERS.setdefault("torch", _torch_policy)
