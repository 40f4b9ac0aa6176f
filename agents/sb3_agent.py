"""Stable-Baselines3 policies for the environment, and trained models as runner agents.

* :class:`SlateScorer` is the features extractor of the ``slate`` mode: a context encoder gives an
  *intent* vector, a shared candidate encoder embeds each of the K candidates, and a candidate's score
  is its embedding's dot product with the intent. Its parameters do not depend on K.
* :class:`SlatePolicy` / :class:`MaskableSlatePolicy` / :class:`SlateDQNPolicy` use those scores as the
  logits (Q-values for DQN) directly, so the whole policy is independent of K; the value head reads the
  intent and pooled candidate embeddings.
* :class:`SB3Agent` runs a saved model (``ie-train``'s ``model.zip``) through the :class:`Agent`
  interface, so ``ie-explore --agent sb3:PATH`` uses the same runner and logs as the GP sampler. The
  environment the runner drives is in ``vocab`` mode: the agent rebuilds the observation its policy
  was trained on (its action mode, from the environment settings stored in the model file) from what
  the episode revealed, and answers with a concept index.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.base import Agent, AgentContext, uniform_over
from ie_env.actions import ActionConfig, EpisodeHistory, make_action_mode
from ie_env.config import from_dict
from ie_env.extras import require

__all__ = [
    "algo_classes",
    "policy_for",
    "SlateRandomAgent",
    "ALGO_MODES",
    "check_algo_mode",
    "SlateScorer",
    "SlatePolicy",
    "MaskableSlatePolicy",
    "SlateDQNPolicy",
    "save_model",
    "read_model_meta",
    "load_model",
    "SB3Agent",
]

SIDE_FILE = "ie_env.json"  # the environment settings, stored inside the model zip

#: algorithm -> the action modes it supports
ALGO_MODES: dict[str, tuple[str, ...]] = {
    "ppo": ("vocab", "embedding", "slate"),
    "a2c": ("vocab", "embedding", "slate"),
    "dqn": ("vocab", "slate"),
    "maskable_ppo": ("vocab", "slate"),
    "sac": ("embedding",),
}


def algo_classes() -> dict[str, type]:
    """Algorithm name -> SB3 class (imported on use)."""
    require("sb3", "Stable-Baselines3 agents")
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO, SAC

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN, "maskable_ppo": MaskablePPO, "sac": SAC}


def check_algo_mode(algo: str, mode: str) -> None:
    """Raise ``ValueError`` naming the compatible modes when ``algo`` cannot act in ``mode``."""
    if algo not in ALGO_MODES:
        raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGO_MODES)}")
    if mode not in ALGO_MODES[algo]:
        raise ValueError(
            f"algorithm {algo!r} does not support action mode {mode!r}; compatible modes: {', '.join(ALGO_MODES[algo])}"
        )


# ---------------------------------------------------------------------------------------------
# Slate networks
# ---------------------------------------------------------------------------------------------
def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class SlateScorer(nn.Module):
    """Scores K candidates by dot product with an intent vector computed from the context.

    Output: ``[scores (K) | intent (h) | mean candidate embedding (h)]``; parameters are independent
    of K. Works as an SB3 features extractor (``features_dim``).
    """

    def __init__(self, observation_space: gym.spaces.Dict, hidden: int = 64) -> None:
        super().__init__()
        ctx_dim = int(observation_space["context"].shape[0])
        self.K, cand_dim = (int(x) for x in observation_space["candidates"].shape)
        self.hidden = int(hidden)
        self.intent = _mlp(ctx_dim, hidden, hidden)
        self.cand = _mlp(cand_dim, hidden, hidden)
        self.features_dim = self.K + 2 * self.hidden
        self._scale = float(hidden) ** -0.5

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.intent(obs["context"])  # (B, h)
        c = self.cand(obs["candidates"])  # (B, K, h)
        scores = torch.einsum("bkh,bh->bk", c, u) * self._scale
        return torch.cat([scores, u, c.mean(dim=1)], dim=1)


def _sb3_extractor():
    require("sb3", "Stable-Baselines3 policies")
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class SlateExtractor(BaseFeaturesExtractor):
        """:class:`SlateScorer` as an SB3 ``BaseFeaturesExtractor``."""

        def __init__(self, observation_space: gym.spaces.Dict, hidden: int = 64) -> None:
            scorer = SlateScorer(observation_space, hidden)
            super().__init__(observation_space, scorer.features_dim)
            self.scorer = scorer

        def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.scorer(observations)

    return SlateExtractor


class _SlateHeads(nn.Module):
    """``mlp_extractor`` of the slate policies: actor latent = the K scores, critic = MLP(rest)."""

    def __init__(self, K: int, rest: int, hidden: int = 64) -> None:
        super().__init__()
        self.K = K
        self.latent_dim_pi = K
        self.latent_dim_vf = hidden
        self.vf = nn.Sequential(nn.Linear(rest, hidden), nn.Tanh())

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, : self.K]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.vf(features[:, self.K :])


class _Logits(nn.Module):
    """The scores are the logits (first ``K`` features, all when ``K`` is None): no layer whose size
    depends on K."""

    def __init__(self, K: int | None = None) -> None:
        super().__init__()
        self.K = K

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.K is None else x[:, : self.K]


def _slate_policy(base: type) -> type:
    class _Policy(base):
        def __init__(self, observation_space, action_space, lr_schedule, **kwargs):
            kwargs.setdefault("features_extractor_class", _sb3_extractor())
            kwargs.setdefault("features_extractor_kwargs", {"hidden": 64})
            super().__init__(observation_space, action_space, lr_schedule, **kwargs)

        def _build_mlp_extractor(self) -> None:
            K = int(self.action_space.n)
            self.mlp_extractor = _SlateHeads(K, self.features_dim - K, self.features_extractor_kwargs.get("hidden", 64))

        def _build(self, lr_schedule) -> None:
            super()._build(lr_schedule)
            self.action_net = _Logits()
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    return _Policy


def _policies() -> dict[str, type]:
    require("sb3", "Stable-Baselines3 policies")
    from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy
    from stable_baselines3.dqn.policies import MultiInputPolicy as DQNMultiInputPolicy

    slate = _slate_policy(MultiInputActorCriticPolicy)
    slate.__name__ = slate.__qualname__ = "SlatePolicy"
    masked = _slate_policy(MaskableMultiInputActorCriticPolicy)
    masked.__name__ = masked.__qualname__ = "MaskableSlatePolicy"

    class SlateDQNPolicy(DQNMultiInputPolicy):
        """Q-values are the candidates' scores."""

        def __init__(self, observation_space, action_space, lr_schedule, **kwargs):
            kwargs.setdefault("features_extractor_class", _sb3_extractor())
            kwargs.setdefault("features_extractor_kwargs", {"hidden": 64})
            super().__init__(observation_space, action_space, lr_schedule, **kwargs)

        def make_q_net(self):
            net = super().make_q_net()
            net.q_net = _Logits(int(self.action_space.n))
            return net

    return {"SlatePolicy": slate, "MaskableSlatePolicy": masked, "SlateDQNPolicy": SlateDQNPolicy}


_POLICY_CACHE: dict[str, type] = {}


def __getattr__(name: str) -> Any:  # lazy: SB3 imports only when a policy class is asked for
    if name in ("SlatePolicy", "MaskableSlatePolicy", "SlateDQNPolicy", "SlateExtractor"):
        if not _POLICY_CACHE:
            _POLICY_CACHE.update(_policies())
            _POLICY_CACHE["SlateExtractor"] = _sb3_extractor()
        return _POLICY_CACHE[name]
    raise AttributeError(name)


def policy_for(algo: str, mode: str) -> Any:
    """The policy (class or SB3 name) ``algo`` uses in ``mode``."""
    if mode == "slate":
        return {"dqn": __getattr__("SlateDQNPolicy"), "maskable_ppo": __getattr__("MaskableSlatePolicy")}.get(
            algo, __getattr__("SlatePolicy")
        )
    return "MlpPolicy"


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------
def save_model(model: Any, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """``model.save`` plus the environment settings ``meta`` inside the same zip, written atomically."""
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_suffix(".zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".zip")
    os.close(fd)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(SIDE_FILE, json.dumps(meta))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The environment settings stored by :func:`save_model` (``ValueError`` if absent)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            return json.loads(zf.read(SIDE_FILE))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p} is not a model saved by ie-train ({exc})") from None


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    meta = read_model_meta(path)
    cls = algo_classes()[meta["algo"]]
    custom = dict(_policies()) if meta.get("action_mode") == "slate" else {}
    model = cls.load(str(path), device=device, custom_objects={"policy_class": custom.get(meta.get("policy", ""))} if custom else None)
    return model, meta


# ---------------------------------------------------------------------------------------------
# A trained model as a runner agent
# ---------------------------------------------------------------------------------------------
class SB3Agent(Agent):
    """A saved ``ie-train`` model behind the :class:`Agent` interface (``make_agent("sb3:PATH")``)."""

    name = "sb3"

    def __init__(self, path: str, deterministic: bool = True, device: str = "cpu") -> None:
        self.path = str(path)
        self.deterministic = bool(deterministic)
        self.device = device
        self.meta = read_model_meta(self.path)  # fail early on a wrong file
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model, _ = load_model(self.path, self.device)
        return self._model

    def setup(self, ctx: AgentContext) -> None:
        env = self.meta["env"]
        acfg = from_dict(ActionConfig, env.get("actions", {}))
        budget = int(env["iterations"]) * int(env["queries_per_iteration"])
        self._n = ctx.num_actions
        self.mode = make_action_mode(
            env["action_mode"], acfg, ctx.concept_embeddings, int(env["history"]), budget, bool(env.get("mask_queried", False))
        )
        self.history = EpisodeHistory(self._n, budget)
        self.mode.reset(np.random.default_rng([int(ctx.seed), 7]))
        self._obs = self.mode.observation(self.history)
        self._left: float | None = None
        self._last: int | None = None

    def _policy_obs(self) -> Any:
        obs = self._obs
        if self._left is not None:  # the runner's own budget, when its observation carries it
            if isinstance(obs, dict):
                obs = {**obs, "context": obs["context"].copy()}
                obs["context"][-1] = self._left
            else:
                obs = obs.copy()
                obs[-1] = self._left
        return obs

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        if isinstance(obs, np.ndarray) and obs.ndim == 1 and obs.size:
            self._left = float(obs[-1])
        kwargs = {}
        if self.meta["algo"] == "maskable_ppo":
            kwargs["action_masks"] = self.mode.action_masks(self.history)
        action, _ = self.model.predict(self._policy_obs(), deterministic=self.deterministic, **kwargs)
        concept = self.mode.to_concept(action, self.history)
        if not 0 <= concept < self._n:
            raise ValueError(f"policy chose concept {concept} outside the vocabulary")
        self._last = int(concept)
        return int(concept)

    def action_distribution(self) -> np.ndarray | None:
        """A point mass on the latest concept when the policy acts deterministically (given what the
        episode revealed and, in ``slate`` mode, the slate); None for a sampled action."""
        if not self.deterministic or getattr(self, "_last", None) is None:
            return None
        return uniform_over([self._last], self._n)  # a point mass

    def observe(self, action: int, reward: float, obs: Any, info: dict[str, Any] | None = None) -> None:
        info = info or {}
        concept = int(info.get("action", action))
        self.history.record(concept, float(info.get("query_reward", reward)))
        self._obs = self.mode.observation(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.state_dict(),
            "rng": self.mode.rng.bit_generator.state,
            "candidates": getattr(self.mode, "candidates", None),
            "from_neighbors": getattr(self.mode, "from_neighbors", None),
            "left": self._left,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = EpisodeHistory.from_state(self._n, state["history"])
        self.mode.rng.bit_generator.state = state["rng"]
        self._left = state.get("left")
        if state.get("candidates") is not None:
            self.mode.candidates = np.asarray(state["candidates"])
            self.mode.from_neighbors = np.asarray(state["from_neighbors"])
            self._obs = {"context": self.mode.context(self.history), "candidates": self.mode.candidate_features(self.history)}
        else:
            self._obs = self.mode.context(self.history)


class SlateRandomAgent(Agent):
    """A uniformly random slot of the slate a model's action mode proposes (the proposal's own value)."""

    name = "slate_random"

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta

    def setup(self, ctx: AgentContext) -> None:
        env = self.meta["env"]
        budget = int(env["iterations"]) * int(env["queries_per_iteration"])
        self._n = ctx.num_actions
        self.mode = make_action_mode("slate", from_dict(ActionConfig, env.get("actions", {})), ctx.concept_embeddings,
                                     int(env["history"]), budget)
        self.history = EpisodeHistory(self._n, budget)
        self.mode.reset(np.random.default_rng([int(ctx.seed), 7]))
        self.rng = np.random.default_rng([int(ctx.seed), 8])
        self.mode.propose(self.history)

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        return int(self.mode.candidates[int(self.rng.integers(self.mode.K))])

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.state_dict(),
            "mode_rng": self.mode.rng.bit_generator.state,
            "rng": self.rng.bit_generator.state,
            "candidates": self.mode.candidates,
            "from_neighbors": getattr(self.mode, "from_neighbors", None),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = EpisodeHistory.from_state(self._n, state["history"])
        self.mode.rng.bit_generator.state = state["mode_rng"]
        self.rng.bit_generator.state = state["rng"]
        self.mode.candidates = np.asarray(state["candidates"])
        if state.get("from_neighbors") is not None:
            self.mode.from_neighbors = np.asarray(state["from_neighbors"])

    def action_distribution(self) -> np.ndarray | None:
        """Uniform over the current slate's slots."""
        return uniform_over(self.mode.candidates, self._n)

    def observe(self, action: int, reward: float, obs: Any, info: dict[str, Any] | None = None) -> None:
        info = info or {}
        self.history.record(int(info.get("action", action)), float(info.get("query_reward", reward)))
        self.mode.propose(self.history)


def _handler(rest: str, **config: Any) -> Agent:
    return SB3Agent(rest, **config)


try:  # make "sb3:PATH" known to agents.registry.make_agent
    from agents.registry import register_prefix

    register_prefix("sb3", _handler)
except ImportError:  # pragma: no cover - registry not present
    pass
