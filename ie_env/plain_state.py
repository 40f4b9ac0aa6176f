"""State files that hold data only: nothing read back from disk can run code.

Run state (checkpoints, agent state, caches) mixes torch tensors, numpy arrays and numpy scalars,
RNG states (numpy ``bit_generator.state`` dicts, torch generator byte tensors) and plain
containers. Pickling that would let a planted file run code on load, so two safe encodings:

* :func:`to_torch_plain` / :func:`from_torch_plain`: numpy arrays and scalars become tensors in
  tagged dicts, so ``torch.save`` writes only what ``torch.load(..., weights_only=True)`` accepts
  (tensors, numbers, strings, bytes, None, lists, tuples, sets, dicts). :func:`save_torch_bytes` /
  :func:`load_torch_bytes` wrap them; a file that needs more than that (an old pickled one) raises
  :class:`UnsafeFileError` unless the caller passes ``trust_pickle=True``.
* :func:`dumps_npz` / :func:`loads_npz`: a JSON tree plus the arrays of an ``.npz`` archive read with
  ``allow_pickle=False``, for files that need no torch (agent state).

Anything else (an object, a generator, a dataclass) raises ``TypeError`` naming where it sits, so a
state that is not plain data fails when it is written, not when it is read.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

_ND = "__ndarray__"  # {"__ndarray__": tensor}: a numpy array kept as a tensor
_NS = "__npscalar__"  # {"__npscalar__": tensor}: a numpy scalar kept as a 0-d tensor
_JS_ARR, _JS_TEN, _JS_SCA = "__npz_array__", "__npz_tensor__", "__npz_scalar__"
_JS_TUPLE, _JS_SET, _JS_ITEMS = "__tuple__", "__set__", "__items__"
_JSON_ENTRY = "__json__"
_PRIMITIVE = (bool, int, float, complex, str, bytes, type(None))


class UnsafeFileError(ValueError):
    """A file that could only be read by unpickling arbitrary objects (refused without trust)."""


# ---------------------------------------------------------------------------------------------
# torch weights_only
# ---------------------------------------------------------------------------------------------
def _native(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.c_contiguous else a.copy()


def _array_tensor(a: np.ndarray, where: str) -> torch.Tensor:
    if a.dtype.hasobject or a.dtype.kind in "USV":
        raise TypeError(f"{where}: a numpy array of dtype {a.dtype} is not plain numeric data")
    return torch.from_numpy(_native(a).copy())


def to_torch_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy arrays / scalars as tagged tensors; raises ``TypeError`` on any object
    that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, np.ndarray):
        return {_ND: _array_tensor(obj, where)}
    if isinstance(obj, np.generic):
        return {_NS: _array_tensor(np.asarray(obj), where)}
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (*_PRIMITIVE, torch.dtype)):
        return obj
    if isinstance(obj, dict):
        return {k: to_torch_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_torch_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [to_torch_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return {to_torch_plain(v, where) for v in obj}
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} is not plain data")


def from_torch_plain(obj: Any) -> Any:
    """Inverse of :func:`to_torch_plain`: tagged tensors back to numpy arrays and scalars."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _ND in obj and isinstance(obj[_ND], torch.Tensor):
            return obj[_ND].numpy()
        if len(obj) == 1 and _NS in obj and isinstance(obj[_NS], torch.Tensor):
            return obj[_NS].numpy()[()]
        return {k: from_torch_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_torch_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_torch_plain(v) for v in obj)
    return obj


def save_torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``to_torch_plain(obj)`` as bytes."""
    buf = io.BytesIO()
    torch.save(to_torch_plain(obj), buf)
    return buf.getvalue()


def load_torch_bytes(data: bytes, trust_pickle: bool = False, name: str = "file") -> Any:
    """``from_torch_plain(torch.load(data, weights_only=True))``. A file that holds pickled objects
    raises :class:`UnsafeFileError`; with ``trust_pickle`` it is unpickled (only for files the user
    wrote themselves)."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            why = [ln.strip() for ln in str(exc).splitlines() if "nsupported" in ln][:1] or ["not plain data"]
            raise UnsafeFileError(
                f"{name} holds pickled Python objects, which could run code when loaded ({why[0][:160]}); "
                "refused. Load it only if you wrote it yourself: pass --trust-pickle"
            ) from None
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return from_torch_plain(obj)


# ---------------------------------------------------------------------------------------------
# JSON + npz
# ---------------------------------------------------------------------------------------------
def _to_json(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    def put(a: np.ndarray) -> str:
        if a.dtype.hasobject:
            raise TypeError(f"{where}: a numpy array of dtype object is not plain data")
        key = f"a{len(arrays)}"
        arrays[key] = _native(a)
        return key

    if isinstance(obj, np.ndarray):
        return {_JS_ARR: put(obj)}
    if isinstance(obj, np.generic):
        return {_JS_SCA: put(np.asarray(obj))}
    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.bfloat16:
            raise TypeError(f"{where}: bfloat16 tensors have no numpy dtype")
        return {_JS_TEN: put(obj.detach().cpu().numpy())}
    if isinstance(obj, (bool, int, float, str, type(None))):
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return {_JS_TUPLE: [_to_json(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_to_json(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return {_JS_SET: [_to_json(v, arrays, where) for v in obj]}
    if isinstance(obj, dict):
        reserved = {_JS_ARR, _JS_TEN, _JS_SCA, _JS_TUPLE, _JS_SET, _JS_ITEMS}
        if all(isinstance(k, str) for k in obj) and not reserved & set(obj):
            return {k: _to_json(v, arrays, f"{where}.{k}") for k, v in obj.items()}
        return {_JS_ITEMS: [[_to_json(k, arrays, where), _to_json(v, arrays, f"{where}.{k}")] for k, v in obj.items()]}
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} is not plain data")


def _from_json(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_from_json(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, val), = obj.items()
        if tag == _JS_ARR:
            return arrays[val]
        if tag == _JS_SCA:
            return arrays[val][()]
        if tag == _JS_TEN:
            return torch.from_numpy(arrays[val].copy())
        if tag == _JS_TUPLE:
            return tuple(_from_json(v, arrays) for v in val)
        if tag == _JS_SET:
            return {_hashable(_from_json(v, arrays)) for v in val}
        if tag == _JS_ITEMS:
            return {_hashable(_from_json(k, arrays)): _from_json(v, arrays) for k, v in val}
    return {k: _from_json(v, arrays) for k, v in obj.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, list) else k


def dumps_npz(obj: Any) -> bytes:
    """``obj`` (plain containers, numbers, strings, arrays, tensors) as the bytes of an ``.npz``:
    its arrays as entries and the rest as a JSON entry."""
    arrays: dict[str, np.ndarray] = {}
    tree = _to_json(obj, arrays, "state")
    text = json.dumps(tree)
    buf = io.BytesIO()
    np.savez(buf, **{_JSON_ENTRY: np.frombuffer(text.encode(), dtype=np.uint8)}, **arrays)
    return buf.getvalue()


def loads_npz(data: bytes, name: str = "file") -> Any:
    """Inverse of :func:`dumps_npz`; never unpickles. ``ValueError`` on anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        if data[:1] == b"\x80":  # a pickle's PROTO opcode
            raise UnsafeFileError(f"{name} is a pickle, which could run code when loaded; refused") from None
        raise ValueError(f"{name} is not a state file of this format ({exc})") from None
    if _JSON_ENTRY not in arrays:
        raise ValueError(f"{name} is not a state file of this format (no {_JSON_ENTRY} entry)")
    tree = json.loads(arrays.pop(_JSON_ENTRY).tobytes().decode())
    return _from_json(tree, arrays)
