"""Every registered environment id has its documentation page, and the part of the page generated
from its config and spaces matches the code (``scripts/make_env_docs.py`` writes the pages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_env_docs", ROOT / "scripts" / "make_env_docs.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

FIX = "run `python scripts/make_env_docs.py` and commit docs/envs/"


def test_every_registered_id_has_a_page_and_an_index_row():
    ids = docs.registered_ids()
    assert {"InternetExplorer-v0", "InternetExplorerLatent-v0", "IELatent-Standard-v1"} <= set(ids)
    missing = [i for i in ids if not docs.page_path(i).exists()]
    assert not missing, f"no page for {missing}: {FIX}"
    index = (docs.DOCS / "index.md").read_text()
    assert not [i for i in ids if f"]({i}.md)" not in index], f"docs/envs/index.md misses ids: {FIX}"
    orphans = {p.stem for p in docs.DOCS.glob("*.md")} - set(ids) - {"index"}
    assert not orphans, f"pages of ids that are not registered: {sorted(orphans)}"


@pytest.mark.parametrize("env_id", [i for i in docs.registered_ids()])
def test_page_matches_the_code(env_id):
    text = docs.page_path(env_id).read_text()
    assert text.startswith(docs.static_part(env_id)), f"{env_id}: config or spaces changed: {FIX}"
    assert text.endswith(docs.tail_part(env_id)), f"{env_id}: world hash or version history changed: {FIX}"
    assert "## Info keys" in text


def test_space_rows_describe_dict_box_and_discrete():
    import gymnasium as gym
    import numpy as np

    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2, 3), np.float32), "b": gym.spaces.Discrete(5)})
    assert docs.space_rows(space) == [("a", "Box (float32)", "(2, 3)", "[-1, 1]"), ("b", "Discrete", "()", "5 actions")]
