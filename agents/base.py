"""One small interface for every query policy: act / observe / save / load.

The runner drives an agent against an :class:`ie_env.env.InternetExplorerEnv`::

    agent.setup(AgentContext.from_env(env, seed))
    obs, info = env.reset(seed=seed)
    while not done:
        action = agent.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(action, reward, obs, info)

``info["iteration_closed"]`` is True on the step that ended an SSL iteration; batch samplers (the
paper's GP sampler) draw a new batch of queries then.

Two kinds of agent, by :attr:`Agent.acts_on`: ``"concept"`` agents pick a concept index (the env is
in ``vocab`` mode); ``"env"`` agents (a Stable-Baselines3 policy) act in the env's own action space
on its own observations, so every evaluator drives them exactly as a user's loop does (the same
slates, the same random streams); :meth:`Agent.env_settings` names the env settings their spaces
need. Either way the loop above is the whole protocol, and the score is ``info["ie_episode"]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EnvView:
    """What an agent acting in the env's own action space may ask of the env (never the target):
    the concept an action picks now, the allowed actions (MaskablePPO), the current slate's concepts
    (``slate`` mode; None otherwise)."""

    to_concept: Callable[[Any], int]
    action_masks: Callable[[], np.ndarray]
    slate: Callable[[], np.ndarray | None]

    @classmethod
    def of(cls, env: Any) -> EnvView:
        base = getattr(env, "unwrapped", env)

        def slate() -> np.ndarray | None:
            c = getattr(base.action_mode, "candidates", None)
            return None if c is None else np.array(c, copy=True)

        return cls(to_concept=lambda a: int(base.action_mode.to_concept(a, base.history)),
                   action_masks=base.action_masks, slate=slate)


@dataclass
class AgentContext:
    """What an agent may know of the environment before it starts (never the target's identity)."""

    concept_embeddings: np.ndarray  # (N, d) float32, L2-normalised text embeddings of the vocabulary
    queries_per_iteration: int
    seed: int = 0
    concept_names: list[str] = field(default_factory=list)
    # Only the oracle baseline reads this; other agents must ignore it.
    ground_truth_relevance: np.ndarray | None = None
    # Label-set-guided variant: embeddings of the target's class names (None = no labels).
    class_name_embeddings: np.ndarray | None = None
    class_name_actions: list[int] | None = None
    env: EnvView | None = None  # for agents that act in the env's own action space

    @property
    def num_actions(self) -> int:
        return int(self.concept_embeddings.shape[0])

    @classmethod
    def from_env(cls, env: Any, seed: int = 0, with_ground_truth: bool = False) -> "AgentContext":
        base = getattr(env, "unwrapped", env)
        return cls(
            concept_embeddings=base.concept_embeddings,
            queries_per_iteration=base.config.queries_per_iteration,
            seed=seed,
            concept_names=[c.name for c in base.vocabulary.concepts],
            ground_truth_relevance=base.ground_truth_relevance() if with_ground_truth else None,
            env=EnvView.of(base),
        )


def uniform_over(indices: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` probabilities of drawing uniformly from ``indices`` with replacement (repeats weigh more)."""
    p = np.bincount(np.asarray(indices, dtype=np.int64), minlength=n).astype(np.float64)
    return p / p.sum()


class Agent(ABC):
    """A query policy. Subclasses implement ``setup``, ``act`` and, if they learn, ``observe``."""

    name: str = "agent"
    needs_ground_truth: bool = False
    #: ``"concept"``: :meth:`act` returns a concept index (the env runs in ``vocab`` mode); ``"env"``:
    #: an action of the env's own action space, chosen from the env's own observation.
    acts_on: str = "concept"

    def env_settings(self) -> dict[str, Any] | None:
        """``"env"`` agents: the env config values (action mode, observation settings) their spaces
        were made for, or None where unknown (then the env must already have matching spaces)."""
        return None

    def spaces(self) -> tuple[Any, Any] | None:
        """``"env"`` agents: the ``(observation_space, action_space)`` they act in (None: any)."""
        return None

    @abstractmethod
    def setup(self, ctx: AgentContext) -> None:
        """Called once before the episode; resets all internal state."""

    @abstractmethod
    def act(self, obs: Any, info: dict[str, Any]) -> Any:
        """Return the next concept index to query (``acts_on == "env"``: the env's next action)."""

    def observe(self, action: int, reward: float, obs: Any, info: dict[str, Any]) -> None:
        """Learn from the outcome of ``action`` (default: nothing)."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging (e.g. sampler temperature and entropy)."""
        return {}

    def action_distribution(self) -> np.ndarray | None:
        """``(N,)`` probabilities over concepts that the latest ``act`` drew its action from, given
        everything before it (a point mass for a deterministic choice), or None where the agent
        cannot state it. The runner logs ``p . g`` per query: the expected ground-truth relevance of
        the policy, free of the noise of the draw itself."""
        return None

    # --- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the agent stopped (RNG included), as plain
        data: numbers, strings, lists, dicts, arrays and RNG state dicts (``bit_generator.state``),
        never objects (checkpoints are read without unpickling). The default keeps the instance's
        attributes, which suits agents whose attributes are plain data."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_ctx")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, path: str | Path) -> None:
        """``state_dict()`` as an ``.npz`` of its arrays plus a JSON entry (no pickle), written atomically."""
        from ie_env.config import atomic_write_bytes
        from ie_env.plain_state import dumps_npz

        atomic_write_bytes(path, dumps_npz({"class": type(self).__name__, "state": self.state_dict()}))

    def load(self, path: str | Path) -> Agent:
        """A state written by :meth:`save`; never unpickles (a pickle file is refused)."""
        from ie_env.plain_state import loads_npz

        blob = loads_npz(Path(path).read_bytes(), name=str(path))
        if not isinstance(blob, dict) or blob.get("class") != type(self).__name__:
            got = blob.get("class") if isinstance(blob, dict) else None
            raise ValueError(f"{path} holds a {got} agent, not a {type(self).__name__}")
        self.load_state_dict(blob["state"])
        return self
