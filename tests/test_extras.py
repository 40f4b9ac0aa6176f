"""The lean install: ``import ie_env`` and a latent episode without any extra, and a clear error
naming the extra when an optional part is used without it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ie_env.extras import EXTRAS, MissingExtraError, missing_modules, require

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter in which every module of every extra fails to import, as in an install
# without extras (the packages are installed here, so a meta-path hook hides them).
_LEAN = r"""
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Block())
import gymnasium as gym
import ie_env
from ie_agents.registry import make_agent

env = gym.make("InternetExplorerLatent-v0", config={"iterations": 1})
obs, info = env.reset(seed=0)
agent = make_agent("gp")
steps, total, done = 0, 0.0, False
while not done:
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    steps, total, done = steps + 1, total + float(reward), terminated or truncated
errors = {}
from ie_agents.sb3_agent import algo_classes
from ie_experiments.plots import _plt
for name, call in (("sb3", algo_classes), ("plots", _plt)):
    try:
        call()
    except ImportError as exc:
        errors[name] = [type(exc).__name__, str(exc)]
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"steps": steps, "total": total, "ids": len(ie_env.ENV_IDS), "errors": errors, "loaded": loaded}))
"""


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_extras_table_matches_pyproject():
    project = _pyproject()["project"]
    optional = project["optional-dependencies"]
    base = _names(project["dependencies"])
    for extra, pairs in EXTRAS.items():
        assert extra in optional, f"extra {extra!r} is not in pyproject.toml"
        assert {dist for _, dist in pairs} == _names(optional[extra]), extra
        assert not base & {dist for _, dist in pairs}, f"{extra}'s packages are also in the base install"
    # '.[dev]' (what CI and the README's commands install) pulls every extra and the docs build.
    every = set().union(*(_names(v) for k, v in optional.items() if k != "dev"))
    assert every <= _names(optional["dev"]), every - _names(optional["dev"])


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "faiss" else object())
    assert missing_modules("corpus") == ["faiss"]
    with pytest.raises(MissingExtraError, match=r"faiss-cpu.*pip install 'ie-env\[corpus\]'"):
        require("corpus", "The corpus engine")
    require("corpus", "Parquet reading", ("pyarrow",))  # only the modules asked for
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        require("nope", "x")


def test_lean_install_imports_and_runs_a_latent_episode():
    blocked = sorted({m for pairs in EXTRAS.values() for m, _ in pairs})
    out = subprocess.run([sys.executable, "-c", _LEAN, ",".join(blocked)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["steps"] == 16 and res["total"] > 0 and res["ids"] >= 4
    assert res["loaded"] == []
    assert res["errors"]["sb3"][0] == "MissingExtraError" and "pip install 'ie-env[sb3]'" in res["errors"]["sb3"][1]
    assert "pip install 'ie-env[plots]'" in res["errors"]["plots"][1]
