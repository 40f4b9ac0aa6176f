"""``docs/config.md``'s table of size limits, generated from ``ie_env.bounds``.

``python -m ie_experiments.config_doc`` rewrites the page; ``--check`` exits 1 when the page and the code
disagree (a test runs the same comparison). The walk starts at the run config (``ie-explore``), the
training config (``ie-train``), ``ie-compare``'s ``compare:`` section, every engine's ``options``
and every agent's ``agent_config``, so each row names a key the way ``--set`` spells it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ie_env.bounds import BOUNDS, DERIVED, EXEMPT, Bound, class_key, fmt_number

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

HEADER = """# Config limits

Every size in the config has a minimum and a maximum, checked when the config is loaded (defaults,
YAML file, then `--set` overrides). A value outside them is refused with a message naming the key,
the value and the limit -- before anything is allocated or a run directory is made -- and the CLIs
exit with code 2. The maxima sit well above the paper's settings (256 queries x 100 images per
iteration, SSL batch 224, 224 px images) and keep what a single setting can make a process allocate
bounded. Seeds are identifiers, not sizes, and have no limits.

This page is generated from `ie_env/bounds.py` by `python -m ie_experiments.config_doc`; a test fails
when they disagree.
"""


def roots() -> list[tuple[str, type]]:
    """(key prefix, config class) of every config a user writes."""
    from ie_agents.registry import AGENTS
    from ie_env.web_search import ENGINE_NAMES, _options_class
    from ie_experiments.compare import CompareSettings
    from ie_experiments.run import RunConfig
    from ie_experiments.train import TrainConfig

    out: list[tuple[str, type]] = [("", RunConfig), ("ie-train: ", TrainConfig),
                                   ("ie-compare: compare.", CompareSettings)]
    for name in ENGINE_NAMES:
        if name in ("embedded", "replay"):
            continue
        out.append((f"env.engine.options ({name}): ", _options_class(name)))
    seen: set[type] = set()
    for name, agent in sorted(AGENTS.items()):
        cls = getattr(agent, "config_class", None)
        if cls is not None and dataclasses.is_dataclass(cls) and cls not in seen:
            seen.add(cls)
            out.append((f"agent_config ({name}): ", cls))
    return out


def _dataclass_of(tp: Any) -> type | None:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_of(arg)
        if found is not None:
            return found
    return None


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, type, str, Any]]:
    """(dotted key, owning class, field name, annotation) of every field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        sub = _dataclass_of(tp)
        if sub is not None:
            yield from walk(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cls, f.name, tp


def is_size_type(tp: Any) -> bool:
    """An int field, or an optional int, or a list/tuple of ints."""
    if tp is int:
        return True
    return any(is_size_type(a) for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis)


def _default(cls: type, name: str) -> str:
    value = getattr(cls(), name)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_number(v) if isinstance(v, (int, float)) else str(v) for v in value) + "]"
    return fmt_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def rows() -> list[tuple[str, str, Bound, str]]:
    """(key, class, bound, default) of every bounded field, in walk order."""
    out = []
    for prefix, root in roots():
        for key, cls, name, _tp in walk(root, prefix):
            b = BOUNDS.get(class_key(cls), {}).get(name)
            if b is not None:
                out.append((key, class_key(cls), b, _default(cls, name)))
    return out


def render() -> str:
    lines = [HEADER, "| key | class | default | minimum | maximum | notes |", "|---|---|---|---|---|---|"]
    for key, cls, b, default in rows():
        lines.append(f"| `{key}` | {cls} | {default} | {fmt_number(b.lo)} | {fmt_number(b.hi)} | {b.why} |")
    lines += ["", "## Limits on products of several keys", "",
              "| class | name | product | maximum (bytes) | notes |", "|---|---|---|---|---|"]
    for cls, ds in DERIVED.items():
        for d in ds:
            lines.append(f"| {cls} | `{d.name}` | {d.formula} | {fmt_number(d.hi)} | {d.why} |")
    lines += ["", "Exempt integer keys (identifiers, not sizes): " + ", ".join(f"`{k}`" for k in sorted(EXEMPT)), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ie_experiments.config_doc", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        ok = DOC.is_file() and DOC.read_text() == text
        print("docs/config.md is up to date" if ok
              else "docs/config.md is out of date: run python -m ie_experiments.config_doc")
        return 0 if ok else 1
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
