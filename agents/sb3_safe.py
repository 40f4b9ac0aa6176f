"""Loading a Stable-Baselines3 / sb3-contrib model zip without unpickling anything in it.

SB3's ``load`` cloudpickles back every entry of the zip's ``data`` JSON stored as
``{":serialized:": base64, ":type:": ..., <plain-text attributes>}`` (spaces, the policy class,
schedules, buffer classes ...), which can run any code a file's author chose. SB3 skips that for the
keys given in ``custom_objects``, so :func:`safe_custom_objects` builds a replacement for every such
key from the entry's plain-text attributes only:

* ``observation_space`` / ``action_space``: rebuilt from their text (``Box`` with bounds in full,
  ``Discrete``, a ``Dict`` of those) or taken from candidate spaces (an ``ie-train`` model's env),
  kept only when SB3's own text description of the replacement equals the file's;
* ``policy_class``: a class of an installed ``stable_baselines3`` / ``sb3_contrib`` module, named by
  the entry's ``__module__`` and its methods' qualified names (or one of ``known`` policies);
* schedules (``lr_schedule``, ``clip_range`` ...): constant callables (inference never calls them);
* buffer classes: None (the algorithm picks its default); training state (the last observation,
  episode-info buffers, action noise): None; ``train_freq``: one step;
  ``target_entropy``: 0;
* ``policy_kwargs``: its JSON values, and layer / optimizer classes of ``torch.nn`` / ``torch.optim`` /
  SB3 / sb3-contrib named as text.

Keys it cannot replace are returned, so the caller refuses the file naming them (unless the user
trusts it). :func:`check_weights` reads every ``.pth`` entry with ``torch.load(weights_only=True)``,
so the weights are plain tensors whatever SB3 version reads them afterwards.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["read_data", "serialized_keys", "safe_custom_objects", "check_weights", "rebuild_space",
           "resolve_policy_class"]

SCHEDULES = ("lr_schedule", "learning_rate", "clip_range", "clip_range_vf", "exploration_schedule", "ent_coef_schedule")
BUFFERS = ("rollout_buffer_class", "replay_buffer_class")
#: training state that inference never reads (the next ``learn`` call starts it afresh)
TRAINING_STATE = ("_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer", "ep_success_buffer",
                  "action_noise")
SAFE_MODULES = ("stable_baselines3.", "sb3_contrib.")
_BOX = re.compile(r"Box\(([^,()]+), ([^,()]+), \(([\d, ]*)\), (\w+)\)")
_DISCRETE = re.compile(r"Discrete\((\d+)(?:, start=(-?\d+))?\)")
_DICT_ITEM = re.compile(r"'([^']+)': ((?:Box|Discrete)\([^()]*(?:\([^()]*\)[^()]*)?\))")
_METHOD = re.compile(r"<function ([A-Za-z_]\w*)\.\w+ at 0x[0-9a-fA-F]+>")
_CLASS = re.compile(r"<class '([A-Za-z_][\w.]*)\.([A-Za-z_]\w*)'>")
_CONSTANT = re.compile(r"ConstantSchedule\(val=([-+0-9.eE]+|inf|nan)\)")


def read_data(path: str | Path) -> dict[str, Any]:
    """The zip's ``data`` entry as plain JSON (nothing deserialised). ``ValueError`` when absent."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("data"))
    except (KeyError, json.JSONDecodeError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a Stable-Baselines3 model file ({exc})") from None


def serialized_keys(data: dict[str, Any]) -> list[str]:
    """The keys of ``data`` whose value SB3 would unpickle."""
    return [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's text description: everything but the pickle and the (unseeded or not) generator."""
    return {k: v for k, v in entry.items() if k not in (":serialized:", "_np_random")}


def _describe(obj: Any) -> dict[str, Any]:
    """SB3's own text description of ``obj`` (what ``save`` writes beside the pickle)."""
    from stable_baselines3.common.save_util import data_to_json

    return _plain(json.loads(data_to_json({"x": obj}))["x"])


def _parse_space(text: str) -> gym.Space | None:
    m = _BOX.fullmatch(text.strip())
    if m:
        try:
            shape = tuple(int(s) for s in m.group(3).replace(" ", "").split(",") if s)
            dtype = np.dtype(m.group(4))
            return gym.spaces.Box(float(m.group(1)), float(m.group(2)), shape, dtype)
        except (TypeError, ValueError):
            return None
    m = _DISCRETE.fullmatch(text.strip())
    if m:
        return gym.spaces.Discrete(int(m.group(1)), start=int(m.group(2) or 0))
    return None


def _parse_array(text: Any, shape: Any) -> np.ndarray | None:
    """A numpy array printed in full (``str(array)``; None when summarised with ``...``)."""
    if not isinstance(text, str) or not isinstance(shape, list) or "..." in text:
        return None
    try:
        values = [float(v) for v in text.replace("[", " ").replace("]", " ").split()]
        return np.asarray(values, dtype=np.float64).reshape([int(s) for s in shape])
    except (TypeError, ValueError):
        return None


def rebuild_space(entry: dict[str, Any]) -> gym.Space | None:
    """The space an entry describes in text, when it is a ``Box`` (bounds printed in full, or uniform
    inside a ``Dict``), a ``Discrete`` or a ``Dict`` of those, and SB3's description of the rebuilt
    space equals the entry's; else None."""
    kind = str(entry.get(":type:", ""))
    space: gym.Space | None = None
    if kind == "<class 'gymnasium.spaces.dict.Dict'>":
        text = str(entry.get("spaces", ""))
        parts = re.findall(_DICT_ITEM, text)
        subs = {k: _parse_space(v) for k, v in parts}
        if parts and all(s is not None for s in subs.values()):
            space = gym.spaces.Dict(subs)
    elif kind == "<class 'gymnasium.spaces.box.Box'>":
        shape = entry.get("_shape")
        lo, hi = _parse_array(entry.get("low"), shape), _parse_array(entry.get("high"), shape)
        if lo is not None and hi is not None:
            try:
                space = gym.spaces.Box(lo, hi, tuple(shape), np.dtype(str(entry.get("dtype"))))
            except (TypeError, ValueError):
                space = None
    elif kind == "<class 'gymnasium.spaces.discrete.Discrete'>":
        space = _parse_space(f"Discrete({entry.get('n')}, start={entry.get('start', 0)})")
    if space is not None and _describe(space) == _plain(entry):
        return space
    return None


def _space(entry: dict[str, Any], candidates: list[gym.Space]) -> gym.Space | None:
    space = rebuild_space(entry)
    if space is not None:
        return space
    for cand in candidates:
        if _describe(cand) == _plain(entry):
            return cand
    return None


def resolve_policy_class(entry: dict[str, Any], known: dict[str, type] | None = None) -> type | None:
    """The policy class an entry names in text: one of ``known`` (qualified name -> class, e.g. this
    project's slate policies) or a :class:`BasePolicy` subclass of an installed SB3 / sb3-contrib
    module, found by the entry's ``__module__`` and the class name in its methods' qualified names.
    Imports only modules of those two packages; None when nothing fits."""
    from stable_baselines3.common.policies import BasePolicy

    module = str(entry.get("__module__", ""))
    names = {m.group(1) for v in entry.values() if isinstance(v, str) for m in [_METHOD.fullmatch(v)] if m}
    for qual, cls in (known or {}).items():  # this project's own classes, named by the caller
        if module in (cls.__module__, "agents.sb3_agent") and (not names or qual in names):
            return cls
    if len(names) != 1 or not (module + ".").startswith(SAFE_MODULES):
        return None
    try:
        cls = getattr(importlib.import_module(module), names.pop(), None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, BasePolicy) and cls.__module__ == module else None


def _schedule(entry: dict[str, Any]) -> Callable[[float], float]:
    m = _CONSTANT.fullmatch(str(entry.get("value_schedule", "")))
    value = float(m.group(1)) if m else 0.0
    return lambda _progress: value


def _policy_kwargs(entry: dict[str, Any]) -> dict[str, Any] | None:
    """``policy_kwargs`` from its text: JSON values as they are, layer and optimizer classes of
    ``torch.nn`` / ``torch.optim`` / SB3 / sb3-contrib by name; None when a value is anything else."""
    import torch

    out: dict[str, Any] = {}
    for k, v in entry.items():
        if k.startswith(":"):
            continue
        m = _CLASS.fullmatch(v) if isinstance(v, str) else None
        if m is None:
            if isinstance(v, str) and re.search(r"<(class|function|built-in|bound method|object) ", v):
                return None  # the text of something that was not JSON (a class inside a dict ...)
            out[k] = v
            continue
        module = m.group(1)
        if not (module + ".").startswith(("torch.nn.", "torch.optim.", *SAFE_MODULES)):
            return None
        try:
            cls = getattr(importlib.import_module(module), m.group(2), None)
        except ImportError:
            return None
        if not (isinstance(cls, type) and issubclass(cls, (torch.nn.Module, torch.optim.Optimizer))):
            return None  # only layers and optimizers: building one does nothing beyond itself
        out[k] = cls
    return out


def safe_custom_objects(data: dict[str, Any], spaces: list[tuple[gym.Space, gym.Space]] | None = None,
                        known_policies: dict[str, type] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(custom_objects, unreplaced)``: a replacement for each serialized key of ``data`` built from
    plain text only, and the serialized keys it could not replace (the caller refuses those).
    ``spaces``: candidate ``(observation, action)`` spaces, used when a space's text alone does not
    rebuild it."""
    custom: dict[str, Any] = {}
    missing: list[str] = []
    cands = spaces or []
    for key in serialized_keys(data):
        entry = data[key]
        value: Any = None
        ok = True
        if key in ("observation_space", "action_space"):
            value = _space(entry, [c[0 if key == "observation_space" else 1] for c in cands])
            ok = value is not None
        elif key == "policy_class":
            value = resolve_policy_class(entry, known_policies)
            ok = value is not None
        elif key in SCHEDULES:
            value = _schedule(entry)
        elif key in BUFFERS or key in TRAINING_STATE:
            value = None
        elif key == "target_entropy":  # a numpy float, read by training only
            value = 0.0
        elif key == "train_freq":  # training only; the algorithm turns (1, "step") into its TrainFreq
            value = (1, "step")
        elif key == "policy_kwargs":
            value = _policy_kwargs(entry)
            ok = value is not None
        else:
            ok = False
        if ok:
            custom[key] = value
        else:
            missing.append(key)
    return custom, missing


def check_weights(path: str | Path) -> None:
    """Read every ``.pth`` entry of the zip with ``torch.load(weights_only=True)``; a pickled object
    there raises :class:`ie_env.plain_state.UnsafeFileError` naming the entry."""
    import torch

    from ie_env.plain_state import UnsafeFileError

    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".pth"):
                try:
                    torch.load(io.BytesIO(zf.read(name)), map_location="cpu", weights_only=True)
                except Exception as exc:  # UnpicklingError, or anything a non-tensor entry raises
                    raise UnsafeFileError(
                        f"{path}: entry {name!r} is not plain tensors ({type(exc).__name__}); refused. "
                        "Pass --trust-pickle only if you wrote this model yourself") from None
