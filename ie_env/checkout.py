"""Running from a checkout that is not installed: the import names ``ie_agents`` and ``ie_experiments``
made to point at the repository's ``agents/`` and ``experiments/`` folders.

An install (``pip install -e .`` or a wheel) maps those names itself. A bare checkout, such as a copy of
the repository on a GPU machine, reaches only ``ie_env`` through its root; :func:`use_checkout_names`
adds a temporary folder of links (``ie_agents -> agents/`` ...) to ``sys.path`` and to ``PYTHONPATH``
(for the subprocesses and workers a run starts). The folders' plain names stay unusable: importing
``agents`` raises an error naming ``ie_agents``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"ie_agents": "agents", "ie_experiments": "experiments"}  # import name -> folder of the repository


def import_names_path(root: Path = ROOT) -> Path:
    """A new temporary folder holding one link per import name to its folder under ``root`` (removed at exit)."""
    links = Path(tempfile.mkdtemp(prefix="ie_env_names_"))
    atexit.register(shutil.rmtree, links, ignore_errors=True)
    for name, folder in NAMES.items():
        (links / name).symlink_to(root / folder, target_is_directory=True)
    return links


def use_checkout_names(root: Path = ROOT) -> None:
    """Make ``ie_agents`` and ``ie_experiments`` importable from the checkout ``root``, here and in child
    processes, unless they already import (an installed package is left as it is). ``FileNotFoundError``
    when ``root`` lacks the folders."""
    if all(importlib.util.find_spec(name) is not None for name in NAMES):
        return
    missing = [folder for folder in NAMES.values() if not (root / folder / "__init__.py").is_file()]
    if missing:
        raise FileNotFoundError(f"{root} is not a checkout of ie-env: no {', '.join(missing)} folder")
    links = str(import_names_path(root))
    sys.path.insert(0, links)
    os.environ["PYTHONPATH"] = os.pathsep.join([links, *filter(None, [os.environ.get("PYTHONPATH")])])
