"""Dataclass configs: defaults <- YAML file <- ``--set key=value`` overrides.

Every config in the project is a (nested) dataclass. ``from_dict`` builds one from a mapping,
refuses unknown keys with an error naming the key and the valid ones, and refuses a size outside its
documented limits (``ie_env.bounds``); ``apply_overrides`` applies
dotted ``key=value`` strings (values parsed as YAML); ``to_dict`` / ``save_yaml`` write the resolved
config that a run keeps beside its results.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

from ie_env.bounds import bound_violations

T = TypeVar("T")


class ConfigError(ValueError):
    """A malformed config: unknown key, wrong type, or unreadable file."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type where that is unambiguous."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` naming the valid ones."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    unknown = [k for k in data if k not in types]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys here: {', '.join(sorted(types))}"
        )
    kwargs = {k: _coerce(v, types[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    problems = bound_violations(obj, prefix)  # before validate: these messages name the whole key
    if problems:
        raise ConfigError(problems[0])
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config dataclass (for YAML, JSON and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def merge(cfg: T, data: Mapping[str, Any]) -> T:
    """Return ``cfg`` updated with the (possibly nested, possibly partial) mapping ``data``."""
    base = to_dict(cfg)
    _deep_update(base, data, prefix="", cls=type(cfg))
    return from_dict(type(cfg), base)


def _deep_update(base: dict, data: Mapping[str, Any], prefix: str, cls: type) -> None:
    types = _field_types(cls)
    for key, value in data.items():
        if key not in types:
            raise ConfigError(
                f"unknown config key {prefix}{key}; valid keys here: {', '.join(sorted(types))}"
            )
        tp = types[key]
        if _is_dataclass_type(tp) and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value, prefix + key + ".", tp)
        else:
            base[key] = value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=x"]`` into ``{"a": {"b": 3}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {pair!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {pair!r}: value is not valid YAML ({exc})") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: T, pairs: Iterable[str]) -> T:
    return merge(cfg, parse_overrides(pairs))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return data


def resolve(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> T:
    """default <- file <- overrides, as a validated dataclass."""
    cfg = cls()
    if path is not None:
        cfg = merge(cfg, load_yaml(path))
    return apply_overrides(cfg, overrides)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared caches unreadable to others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_yaml(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
