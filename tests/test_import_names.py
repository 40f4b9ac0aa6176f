"""Import names: the repo's ``agents/`` and ``experiments/`` folders are installed as ``ie_agents`` and
``ie_experiments``; the generic names ``agents`` and ``experiments`` stay free for a user's own packages, and
reaching the folders under those names fails with an error naming the real ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"ie_env": "ie_env", "ie_agents": "agents", "ie_experiments": "experiments"}  # import name -> folder


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("old,new", [("agents", "ie_agents"), ("experiments", "ie_experiments")])
def test_old_name_from_the_repo_root_fails_naming_the_new_one(old, new):
    """From the repo root the folder is importable by its plain name (the current directory is on the
    path): that import raises, naming the installed name, instead of loading a second copy."""
    r = _run(f"import {old}.stats" if old == "experiments" else f"import {old}.base", ROOT)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and f"`{new}`" in r.stderr, r.stderr


def test_a_users_own_agents_and_experiments_packages_are_not_shadowed(tmp_path):
    for name in ("agents", "experiments"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'user:{name}'\n")
    r = _run("import agents, experiments, ie_agents.base, ie_experiments.stats\n"
             "print(agents.OWNER, experiments.OWNER, ie_agents.base.Agent.__module__, ie_experiments.stats.__name__)",
             tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["user:agents", "user:experiments", "ie_agents.base", "ie_experiments.stats"]


def test_the_wheel_holds_ie_env_ie_agents_ie_experiments_only(tmp_path):
    """A regular wheel built from the project: its top-level names are the three packages, every folder
    with an ``__init__.py`` is in it under its import name, the configs ship, and every console script
    points at a module inside it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    out.mkdir()
    build = f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"
    r = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == set(FOLDERS)
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    expected = {".".join([pkg, *p.parent.relative_to(ROOT / folder).parts])
                for pkg, folder in FOLDERS.items() for p in (ROOT / folder).rglob("__init__.py")}
    assert packages == expected  # a new subpackage must be added to pyproject's [tool.setuptools] packages
    configs = {p.name for p in (ROOT / "experiments" / "configs").glob("*.yaml")}
    assert configs and {f"ie_experiments/configs/{c}" for c in configs} <= set(names)
    assert any(n.startswith("ie_env/data/") for n in names)
    scripts = [line.split("=", 1)[1].strip() for line in entry_points.splitlines() if "=" in line]
    assert scripts
    for target in scripts:
        module = target.split(":")[0]
        assert module.split(".")[0] in FOLDERS and module.replace(".", "/") + ".py" in names, target


def test_a_bare_checkout_gets_its_import_names_from_links(tmp_path):
    """``use_checkout_names`` (for scripts run from a copy of the repository that is not installed): with no
    installed mapping, ``ie_agents`` / ``ie_experiments`` import from this checkout's folders, here and,
    through ``PYTHONPATH``, in child processes."""
    code = (
        "import os, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]  # as if not installed\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('ie_agents') is None\n"
        "from ie_env.checkout import use_checkout_names\n"
        "use_checkout_names()\n"
        "import ie_agents.base, ie_experiments.stats\n"
        "links = os.environ['PYTHONPATH'].split(os.pathsep)[0]\n"
        "print(os.path.realpath(ie_agents.base.__file__), os.path.realpath(ie_experiments.stats.__file__))\n"
        "print(os.path.realpath(os.path.join(links, 'ie_agents')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines == [str((ROOT / "agents" / "base.py").resolve()), str((ROOT / "experiments" / "stats.py").resolve()),
                     str((ROOT / "agents").resolve())]
