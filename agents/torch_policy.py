"""A slate policy in plain torch (trained by ``experiments/ppo_batched.py``), saved without pickles, and
the runner agent that plays it (``make_agent("torch:PATH")``, ``ie-benchmark --agents ppo=torch:PATH``).

A saved policy is two files: ``PATH`` (``torch.save`` of the network's ``state_dict``, loaded with
``weights_only=True``) and ``PATH`` + ``.json`` (what the network and its observation need: the task id,
the environment settings, the observation and action shapes, the hidden width). The agent rebuilds the
observation its policy was trained on from what the episode revealed (the slate action mode of the saved
settings, seeded as the environment seeds it) and answers with a concept index, as ``SB3Agent`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ie_agents.base import Agent, AgentContext, uniform_over
from ie_env.actions import ActionConfig, EpisodeHistory, make_action_mode
from ie_env.config import from_dict

__all__ = ["FORMAT", "SlateActorCritic", "TorchPolicyAgent", "load_policy", "policy_space_problem", "save_policy"]

FORMAT = "ie-env/torch-slate-policy/1"


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class SlateActorCritic(nn.Module):
    """Logits of the K candidates (each candidate's embedding dotted with an intent vector computed from
    the context; parameters independent of K) and a state value from the intent and the mean candidate."""

    def __init__(self, context_dim: int, cand_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.context_dim, self.cand_dim, self.hidden = int(context_dim), int(cand_dim), int(hidden)
        self.intent = _mlp(self.context_dim, self.hidden, self.hidden)
        self.cand = _mlp(self.cand_dim, self.hidden, self.hidden)
        self.value_head = nn.Sequential(nn.Linear(2 * self.hidden, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
        self._scale = float(self.hidden) ** -0.5

    def forward(self, context: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.intent(context)  # (B, h)
        c = self.cand(candidates)  # (B, K, h)
        logits = torch.einsum("bkh,bh->bk", c, u) * self._scale
        value = self.value_head(torch.cat([u, c.mean(1)], dim=1))[:, 0]
        return logits, value


def save_policy(path: str | os.PathLike, net: SlateActorCritic, meta: dict[str, Any]) -> Path:
    """Write ``path`` (the state_dict) and ``path.json`` (``meta`` plus the network's shapes), each
    atomically (a temporary file renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    full = {**meta, "format": FORMAT, "context_dim": net.context_dim, "cand_dim": net.cand_dim, "hidden": net.hidden}
    tmp = p.with_name(p.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, p)
    tmpj = p.with_name(p.name + ".json.tmp")
    tmpj.write_text(json.dumps(full, indent=2, default=str))
    os.replace(tmpj, p.with_name(p.name + ".json"))
    return p


def read_policy_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata saved beside a policy (``ValueError`` naming the file when missing or not ours)."""
    p = Path(path)
    side = p.with_name(p.name + ".json")
    if not p.is_file() or not side.is_file():
        raise ValueError(f"policy not found: {p} and {side} are both needed (saved by experiments/ppo_batched.py)")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{side} is not a policy's metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{side} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_policy(path: str | os.PathLike, device: str = "cpu") -> tuple[SlateActorCritic, dict[str, Any]]:
    """The network and metadata saved by :func:`save_policy` (tensors only: ``weights_only=True``)."""
    meta = read_policy_meta(path)
    net = SlateActorCritic(meta["context_dim"], meta["cand_dim"], meta["hidden"])
    state = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(state)
    return net.to(device).eval(), meta


def policy_space_problem(path: str, task_id: str) -> str | None:
    """Why the saved policy cannot act on ``task_id`` (its spaces differ), else None."""
    from ie_env.suite import task_spaces

    meta = read_policy_meta(path)
    obs, act = task_spaces(task_id)
    want = {"context": (meta["context_dim"],), "candidates": (meta.get("K"), meta["cand_dim"])}
    got = (
        {k: tuple(obs[k].shape) for k in ("context", "candidates")}
        if hasattr(obs, "spaces") and "candidates" in obs.spaces
        else {"observation": tuple(getattr(obs, "shape", ()) or ())}
    )
    if got == want and getattr(act, "n", None) == meta.get("K"):
        return None
    return (
        f"policy {path} was saved for task {meta.get('task_id')!r} with observation shapes {want} and "
        f"Discrete({meta.get('K')}) actions, but task {task_id} has observation shapes {got} and actions {act}"
    )


class TorchPolicyAgent(Agent):
    """A saved slate policy behind the :class:`Agent` interface (``make_agent("torch:PATH")``)."""

    name = "torch"

    def __init__(self, path: str, deterministic: bool = True, device: str = "cpu") -> None:
        self.path = str(path)
        self.deterministic = bool(deterministic)
        self.device = device
        self.net, self.meta = load_policy(self.path, device)  # fails early on a wrong file
        self._gen = torch.Generator().manual_seed(0)

    def setup(self, ctx: AgentContext) -> None:
        env = self.meta["env"]
        budget = int(env["iterations"]) * int(env["queries_per_iteration"])
        self._n = ctx.num_actions
        self.mode = make_action_mode(
            "slate",
            from_dict(ActionConfig, env.get("actions", {})),
            ctx.concept_embeddings,
            int(env["history"]),
            budget,
            bool(env.get("mask_queried", False)),
        )
        if self.mode.context_dim != self.meta["context_dim"] or self.mode.cand_dim != self.meta["cand_dim"]:
            raise ValueError(
                f"policy {self.path} expects context {self.meta['context_dim']} and candidates "
                f"{self.meta['cand_dim']}, this vocabulary gives {self.mode.context_dim} and {self.mode.cand_dim}"
            )
        self.history = EpisodeHistory(self._n, budget)
        self.mode.reset(np.random.default_rng([int(ctx.seed), 7]))
        self._gen.manual_seed(int(ctx.seed))
        self._obs = self.mode.observation(self.history)
        self._last: int | None = None

    @torch.no_grad()
    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        o = self._obs
        ctx = torch.as_tensor(o["context"], device=self.device)[None]
        cand = torch.as_tensor(o["candidates"], device=self.device)[None]
        logits, _ = self.net(ctx, cand)
        if self.deterministic:
            slot = int(logits[0].argmax())
        else:
            slot = int(torch.multinomial(torch.softmax(logits[0].cpu(), 0), 1, generator=self._gen))
        self._last = int(self.mode.to_concept(slot, self.history))
        return self._last

    def action_distribution(self) -> np.ndarray | None:
        """A point mass on the latest concept when acting deterministically; None for a sampled action."""
        if not self.deterministic or self._last is None:
            return None
        return uniform_over([self._last], self._n)

    def observe(self, action: int, reward: float, obs: Any, info: dict[str, Any] | None = None) -> None:
        info = info or {}
        self.history.record(int(info.get("action", action)), float(info.get("query_reward", reward)))
        self._obs = self.mode.observation(self.history)
