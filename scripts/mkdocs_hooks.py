"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks:``).

- Pages the nav does not list are added to it: ``docs/envs/<id>.md`` under "Environments", ``docs/dev/``
  pages under "Developer notes", any other page under "More". A new page builds at once.
- The API reference is generated: one page per module of ``ie_env``, ``ie_agents`` and ``ie_experiments``
  (the folders ``ie_env/``, ``agents/`` and ``experiments/``),
  each rendered from its docstrings by mkdocstrings (``api/<module>.md``), and an index of them.
- ``changelog.md`` is ``CHANGELOG.md`` of the repository.
- ``<!-- agents-table -->`` in a page becomes the table of registered agents and their parameters.
- Every registered environment id must have its page (``scripts/make_env_docs.py``); a missing one is a
  warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ie_env": "ie_env", "ie_agents": "agents", "ie_experiments": "experiments"}  # import name -> folder
log = logging.getLogger("mkdocs.plugins.ie_env_docs")


def _modules() -> list[str]:
    out = []
    for pkg, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [pkg, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith("_") for p in parts) or parts[-1] == "__main__":
                continue
            out.append(".".join(parts))
    return sorted(out)


def _nav_files(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_files(v) for v in nav.values())) if nav else set()
    if isinstance(nav, list):
        return set().union(*(_nav_files(v) for v in nav)) if nav else set()
    return set()


def _section(nav: list, title: str) -> list:
    """The item list of the nav section ``title`` (created at the end if absent)."""
    for item in nav:
        if isinstance(item, dict) and title in item:
            if not isinstance(item[title], list):
                item[title] = [item[title]]
            return item[title]
    nav.append({title: []})
    return nav[-1][title]


@event_priority(100)  # before mkdocstrings' own on_config fixes its search path
def on_config(config: Any) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # griffe reads the API reference from the source and finds a package by its folder's name: links named
    # ie_agents / ie_experiments to this checkout's folders, whether or not (and wherever) it is installed
    from ie_env.checkout import import_names_path

    sys.path.insert(0, str(import_names_path(ROOT)))
    nav = config.nav or []
    listed = _nav_files(nav)
    docs = Path(config.docs_dir)
    envs = sorted(p.relative_to(docs).as_posix() for p in (docs / "envs").glob("*.md") if p.stem != "index")
    env_items = [e for e in envs if e not in listed]
    if env_items:
        sec = _section(nav, "Environments")
        sec.extend(env_items)
    dev = sorted(p.relative_to(docs).as_posix() for p in (docs / "dev").glob("*.md"))
    dev_items = [d for d in dev if d not in listed]
    if dev_items:
        _section(nav, "Developer notes").extend(dev_items)
    top = sorted(p.name for p in docs.glob("*.md"))
    more = [t for t in top if t not in listed and t not in ("changelog.md",)]
    if more:
        _section(nav, "More").extend(more)
    api = [{"Index": "api/index.md"}] + [{m: f"api/{m}.md"} for m in _modules()]
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("API reference") == "api/index.md":
            nav[i] = {"API reference": api}
    config.nav = nav
    return config


def _api_index(mods: list[str]) -> str:
    lines = ["# API reference", "", "Generated from the docstrings of every public module.", ""]
    for pkg in PACKAGES:
        lines += [f"## `{pkg}`", ""]
        for m in mods:
            if m == pkg or m.startswith(pkg + "."):
                lines.append(f"- [`{m}`]({m}.md)")
        lines.append("")
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    mods = _modules()
    files.append(File.generated(config, "api/index.md", content=_api_index(mods)))
    for m in mods:
        files.append(File.generated(config, f"api/{m}.md", content=f"# `{m}`\n\n::: {m}\n"))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files


def on_pre_build(config: Any) -> None:
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_env_docs", ROOT / "scripts" / "make_env_docs.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except ImportError as exc:  # the package itself is not importable: nothing to check against
        log.warning("cannot check the environment pages: %s", exc)
        return
    missing = [i for i in mod.registered_ids() if not mod.page_path(i).exists()]
    if missing:
        log.warning("registered ids without a page in docs/envs/: %s (run `python scripts/make_env_docs.py`)",
                    ", ".join(missing))


# ---------------------------------------------------------------------------------------------
# The agents table
# ---------------------------------------------------------------------------------------------
def _field_comments(cls: type) -> dict[str, str]:
    """``name: comment`` of a dataclass's fields that carry a trailing ``# comment`` in the source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return f"`{type(value).__name__}` defaults" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def agents_table() -> str:
    from ie_agents.registry import AGENTS, PREFIX_HANDLERS

    lines = ["| name | class | what it does | parameters (default) |", "|---|---|---|---|"]
    for name, cls in AGENTS.items():
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        cfg = getattr(cls, "config_class", None)
        params = []
        if cfg is not None and dataclasses.is_dataclass(cfg):
            notes = _field_comments(cfg)
            for f in dataclasses.fields(cfg):
                note = f" — {notes[f.name]}" if f.name in notes else ""
                params.append(f"`{f.name}` = {_default(f)}{note}")
        lines.append(f"| `{name}` | `{cls.__module__}.{cls.__name__}` | {doc} | {'<br>'.join(params) or '—'} |")
    for prefix, handler in PREFIX_HANDLERS.items():
        doc = (inspect.getdoc(handler) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"| `{prefix}:PATH` | `{handler.__module__}.{handler.__name__}` | {doc} | — |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if "<!-- agents-table -->" in markdown:
        markdown = markdown.replace("<!-- agents-table -->", agents_table())
    return markdown


# ---------------------------------------------------------------------------------------------
# Internal references in docstrings
# ---------------------------------------------------------------------------------------------
_INTERNAL = [
    (re.compile(r",\s*DESIGN (?:§|section )?\w+(?:, point \d+)?"), ""),  # "(few-shot, DESIGN 3a)"
    (re.compile(r"\s*\(DESIGN [^()]*\)"), ""),  # "(DESIGN §7)"
    (re.compile(r"DESIGN §\w+(?: \([^)]*\))?:\s*"), ""),  # "DESIGN §7: ..."
]


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Docstrings may cite the project's internal design notes, which users do not have: the API
    reference leaves those citations out, and any that remain fail the strict build."""
    for pat, repl in _INTERNAL:
        html = pat.sub(repl, html)
    if "DESIGN" in html:
        log.warning("%s cites the internal design notes (DESIGN): reword the docstring", page.file.src_uri)
    return html
