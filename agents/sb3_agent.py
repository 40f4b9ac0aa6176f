"""Stable-Baselines3 policies for the environment, and trained models as runner agents.

* :class:`SlateScorer` is the features extractor of the ``slate`` mode: a context encoder gives an
  *intent* vector, a shared candidate encoder embeds each of the K candidates, and a candidate's score
  is its embedding's dot product with the intent. Its parameters do not depend on K.
* :class:`SlatePolicy` / :class:`MaskableSlatePolicy` / :class:`SlateDQNPolicy` use those scores as the
  logits (Q-values for DQN) directly, so the whole policy is independent of K; the value head reads the
  intent and pooled candidate embeddings.
* :class:`SB3Agent` runs a saved model (``ie-train``'s ``model.zip`` or any SB3 / sb3-contrib zip)
  through the :class:`Agent` interface, so ``ie-explore --agent sb3:PATH`` uses the same runner and
  logs as the GP sampler. It acts on the env itself, in the env's own action space: the runner builds
  the env in the model's action mode and the policy sees the env's own observations (slates and
  random streams included), exactly as in a user's ``model.predict`` loop.
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

from ie_agents.base import Agent, AgentContext, uniform_over
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
    "infer_algorithm",
    "load_model",
    "SB3Agent",
    "SPACE_SETTINGS",
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


def _zip_names(p: Path) -> list[str]:
    if not p.is_file():
        raise ValueError(f"model file not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            return zf.namelist()
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{p} is not a Stable-Baselines3 model file (a zip with 'data' inside): {exc}") from None


def read_model_meta(path: str | os.PathLike, required: bool = True) -> dict[str, Any] | None:
    """The environment settings stored by :func:`save_model`; for a model saved by plain SB3 (no
    settings inside) ``ValueError`` when ``required``, else None."""
    p = Path(path)
    names = _zip_names(p)
    if SIDE_FILE not in names:
        if required:
            raise ValueError(f"{p} is not a model saved by ie-train (no {SIDE_FILE} inside)")
        if "data" not in names:
            raise ValueError(f"{p} is not a Stable-Baselines3 model file (no 'data' inside)")
        return None
    try:
        with zipfile.ZipFile(p) as zf:
            return json.loads(zf.read(SIDE_FILE))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: unreadable {SIDE_FILE} ({exc})") from None


#: (module of the policy class, class name) -> algorithm, for policies only one algorithm uses.
_POLICY_MODULES = (
    ("sb3_contrib.common.maskable", "MaskablePPO"),
    ("sb3_contrib.common.recurrent", "RecurrentPPO"),
    ("sb3_contrib.qrdqn", "QRDQN"),
    ("sb3_contrib.tqc", "TQC"),
    ("sb3_contrib.ars", "ARS"),
    ("sb3_contrib.crossq", "CrossQ"),
    ("stable_baselines3.dqn", "DQN"),
    ("stable_baselines3.sac", "SAC"),
    ("stable_baselines3.td3", "TD3"),
)


def _known_algorithms() -> dict[str, type]:
    """Every algorithm class of SB3 and sb3-contrib, by class name (those installed)."""
    import sb3_contrib
    import stable_baselines3

    out: dict[str, type] = {}
    for pkg in (stable_baselines3, sb3_contrib):
        for name in getattr(pkg, "__all__", []):
            obj = getattr(pkg, name, None)
            if isinstance(obj, type) and hasattr(obj, "load") and hasattr(obj, "predict"):
                out[name] = obj
    return out


def infer_algorithm(path: str | os.PathLike) -> type:
    """The SB3 / sb3-contrib class that saved ``path``, read from its ``data``: the policy class's
    module for policies one algorithm owns (DQN, SAC, MaskablePPO ...), else (actor-critic
    policies, whatever their class) the saved hyperparameters (PPO: ``clip_range``, TRPO:
    ``cg_max_steps``, else A2C). ``ValueError`` when none fits."""
    p = Path(path)
    _zip_names(p)
    with zipfile.ZipFile(p) as zf:
        try:
            data = json.loads(zf.read("data"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p} is not a Stable-Baselines3 model file ({exc})") from None
    known = _known_algorithms()
    policy = data.get("policy_class") or {}
    module = str(policy.get("__module__", "")) if isinstance(policy, dict) else ""
    for prefix, algo in _POLICY_MODULES:
        if module.startswith(prefix) and algo in known:
            return known[algo]
    bases = _policy_bases(data, p)
    for prefix, algo in _POLICY_MODULES:
        if any(b.startswith(prefix) for b in bases) and algo in known:
            return known[algo]
    if "clip_range" in data:
        return known["PPO"]
    if "cg_max_steps" in data and "TRPO" in known:
        return known["TRPO"]
    if "vf_coef" in data:
        return known["A2C"]
    raise ValueError(f"{p}: cannot tell which Stable-Baselines3 algorithm saved it (policy class module {module!r}); "
                     f"known: {', '.join(sorted(known))}")


def _policy_bases(data: dict[str, Any], path: Path) -> list[str]:
    """Modules of the saved policy class and its bases (a subclass of, say, a MaskablePPO policy),
    resolved from the entry's plain text (nothing unpickled; None for a class outside SB3)."""
    from ie_agents.sb3_safe import resolve_policy_class

    entry = data.get("policy_class")
    cls = resolve_policy_class(entry) if isinstance(entry, dict) else None
    return [f"{c.__module__}.{c.__name__}" for c in getattr(cls, "__mro__", ())]


def load_model(path: str | os.PathLike, device: str = "cpu",
               trust_pickle: bool = False) -> tuple[Any, dict[str, Any] | None]:
    """``(model, settings)`` of an ``ie-train`` model, or of any SB3 / sb3-contrib model file
    (settings None; the algorithm read from the file by :func:`infer_algorithm`).

    Nothing in the file is unpickled: every entry of its ``data`` that SB3 would cloudpickle back is
    replaced from its plain text (:func:`ie_agents.sb3_safe.safe_custom_objects`) and the weights are
    read as plain tensors. An entry that cannot be replaced raises
    :class:`~ie_env.plain_state.UnsafeFileError` naming it, unless ``trust_pickle`` (the user wrote
    the file): then SB3's own ``load`` reads it as it is."""
    from ie_agents.sb3_safe import check_weights, read_data, safe_custom_objects
    from ie_env.plain_state import UnsafeFileError

    meta = read_model_meta(path, required=False)
    if meta is not None and meta.get("algo") in ALGO_MODES:
        cls = algo_classes()[meta["algo"]]
    else:
        cls = infer_algorithm(path)
    known = {}
    if meta is not None and meta.get("action_mode") == "slate" and meta.get("policy") in _POLICY_NAMES:
        known = {meta["policy"]: __getattr__(meta["policy"])}
    custom: dict[str, Any] = {"policy_class": next(iter(known.values()))} if known else {}
    if not trust_pickle:
        candidates = []
        if meta is not None and isinstance(meta.get("env"), dict):
            try:
                from ie_env.env import env_spaces

                candidates.append(env_spaces(meta["env"]))
            except Exception:  # settings this version cannot build: the spaces' own text must do
                pass
        custom, unsafe = safe_custom_objects(read_data(path), candidates, known)
        if unsafe:
            raise UnsafeFileError(
                f"{path}: entries {', '.join(repr(k) for k in unsafe)} of its 'data' are pickled Python objects "
                "that could run code when loaded, and cannot be rebuilt from plain text; refused. "
                "Pass --trust-pickle only if you wrote this model yourself")
        check_weights(path)
    try:
        model = cls.load(str(path), device=device, custom_objects=custom or None)
    except Exception as exc:
        raise ValueError(f"cannot load {path} as a {cls.__name__} model: {type(exc).__name__}: {exc}") from exc
    return model, meta


_POLICY_NAMES = ("SlatePolicy", "MaskableSlatePolicy", "SlateDQNPolicy")

#: env settings that fix an env's observation and action spaces (what an ie-train model records)
SPACE_SETTINGS = ("action_mode", "actions", "history", "mask_queried", "iterations", "queries_per_iteration")


# ---------------------------------------------------------------------------------------------
# A trained model as a runner agent
# ---------------------------------------------------------------------------------------------
class SB3Agent(Agent):
    """Any saved SB3 / sb3-contrib model behind the :class:`Agent` interface (``make_agent("sb3:PATH")``).

    It acts in the env's own action space on the env's own observations (``acts_on = "env"``):
    exactly ``model.predict(obs, deterministic=...)`` as a user's loop calls it (with the env's
    ``action_masks()`` for MaskablePPO, the LSTM state for RecurrentPPO), so its score in every
    evaluator is the plain loop's. An ``ie-train`` model also names the env settings it was trained
    with (:meth:`env_settings`); a plain SB3 model needs an env whose spaces are its own.
    """

    name = "sb3"
    acts_on = "env"

    def __init__(self, path: str, deterministic: bool = True, device: str = "cpu", trust_pickle: bool = False) -> None:
        self.path = str(path)
        self.deterministic = bool(deterministic)
        self.device = device
        self.meta = read_model_meta(self.path, required=False)  # fails early on a wrong file
        self._model, _ = load_model(self.path, self.device, trust_pickle=bool(trust_pickle))
        self._recurrent = "Recurrent" in type(self._model).__name__
        self._masked = "Maskable" in type(self._model).__name__
        self._last: int | None = None

    @property
    def model(self):
        return self._model

    def spaces(self) -> tuple[Any, Any]:
        return self._model.observation_space, self._model.action_space

    def env_settings(self) -> dict[str, Any] | None:
        env = (self.meta or {}).get("env")
        if not isinstance(env, dict):
            return None
        return {k: env[k] for k in SPACE_SETTINGS if k in env}

    def setup(self, ctx: AgentContext) -> None:
        if ctx.env is None:
            raise ValueError("an SB3 policy acts on the env itself: its context needs AgentContext.from_env(env)")
        self._ctx_env = ctx.env
        self._n = ctx.num_actions
        self._last = None
        self._state = None
        self._start = np.ones((1,), dtype=bool)

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> Any:
        kwargs: dict[str, Any] = {}
        if self._masked:
            kwargs["action_masks"] = self._ctx_env.action_masks()
        if self._recurrent:
            kwargs.update(state=self._state, episode_start=self._start)
        action, state = self._model.predict(obs, deterministic=self.deterministic, **kwargs)
        if self._recurrent:
            self._state, self._start = state, np.zeros((1,), dtype=bool)
        self._last = int(self._ctx_env.to_concept(action))
        return action

    def action_distribution(self) -> np.ndarray | None:
        """A point mass on the latest concept when the policy acts deterministically (given what the
        episode revealed and, in ``slate`` mode, the slate); None for a sampled action."""
        if not self.deterministic or getattr(self, "_last", None) is None:
            return None
        return uniform_over([self._last], self._n)  # a point mass

    def state_dict(self) -> dict[str, Any]:
        """Nothing to carry between iterations but the recurrent state (the env holds the episode)."""
        return {"state": self._state, "start": self._start, "last": self._last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state, self._start, self._last = state.get("state"), state.get("start", self._start), state.get("last")


class SlateRandomAgent(Agent):
    """A uniformly random slot of the env's own slate (the proposal's own value, DESIGN §7): the
    env runs in the ``slate`` mode of the model whose settings ``meta`` holds."""

    name = "slate_random"
    acts_on = "env"

    def __init__(self, meta: dict[str, Any] | None) -> None:
        self.meta = meta

    def env_settings(self) -> dict[str, Any] | None:
        env = (self.meta or {}).get("env")
        if not isinstance(env, dict):
            return {"action_mode": "slate"}
        return {**{k: env[k] for k in SPACE_SETTINGS if k in env}, "action_mode": "slate"}

    def setup(self, ctx: AgentContext) -> None:
        if ctx.env is None:
            raise ValueError("slate_random acts on the env's own slate: its context needs AgentContext.from_env(env)")
        self._ctx_env = ctx.env
        self._n = ctx.num_actions
        self.rng = np.random.default_rng([int(ctx.seed), 8])

    def act(self, obs: Any, info: dict[str, Any] | None = None) -> int:
        slate = self._ctx_env.slate()
        if slate is None:
            raise ValueError("slate_random needs an env in slate mode")
        return int(self.rng.integers(len(slate)))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def action_distribution(self) -> np.ndarray | None:
        """Uniform over the current slate's slots."""
        return uniform_over(self._ctx_env.slate(), self._n)


def _handler(rest: str, **config: Any) -> Agent:
    return SB3Agent(rest, **config)


try:  # make "sb3:PATH" known to ie_agents.registry.make_agent
    from ie_agents.registry import register_prefix

    register_prefix("sb3", _handler)
except ImportError:  # pragma: no cover - registry not present
    pass
