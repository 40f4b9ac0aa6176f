"""docs/spaces.md is generated from the code, and its slices say what real observations hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ie_env.env import InternetExplorerEnv
from ie_env.spaces_doc import candidate_layout, context_layout, spaces_markdown
from ie_env.suite import task_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "spaces.md"


def test_the_page_is_what_the_code_generates():
    assert DOC.read_text() == spaces_markdown(), "run `python scripts/make_spaces_doc.py` and commit docs/spaces.md"


def _slices(rows):
    return {r["name"]: slice(r["offset"], r["offset"] + r["width"]) for r in rows}


def test_the_slices_tile_the_observation_and_hold_what_they_say():
    env = InternetExplorerEnv(task_config("IELatent-Standard-v1", {"iterations": 1, "queries_per_iteration": 8}))
    mode = env.action_mode
    ctx_rows, cand_rows = context_layout(mode), candidate_layout(mode)
    for rows, total in ((ctx_rows, mode.context_dim), (cand_rows, mode.cand_dim)):
        ends = [0] + [r["offset"] + r["width"] for r in rows]
        assert [r["offset"] for r in rows] == ends[:-1] and ends[-1] == total  # contiguous, nothing left out
    c, k = _slices(ctx_rows), _slices(cand_rows)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    concepts, rewards = [], []
    for _ in range(5):
        obs, _, _, _, info = env.step(int(rng.integers(mode.K)))
        concepts.append(info["action"])
        rewards.append(np.float32(info["query_reward"]))
    ctx, cand, E = obs["context"], obs["candidates"], mode.E
    assert np.array_equal(ctx[c["last.embedding"]], E[concepts[-1]]) and ctx[c["last.reward"]][0] == rewards[-1]
    assert np.array_equal(ctx[c["history[0].embedding"]], E[concepts[-1]])
    assert (
        np.array_equal(ctx[c["history[2].embedding"]], E[concepts[-3]])
        and ctx[c["history[2].reward"]][0] == rewards[-3]
    )
    best = int(np.argmax(rewards))
    assert np.array_equal(ctx[c["summary.best_embedding"]], E[concepts[best]])
    assert ctx[c["summary.mean_reward"]][0] == np.float32(np.mean(np.array(rewards, np.float32)))
    assert ctx[c["summary.distinct_share"]][0] == np.float32(len(set(concepts)) / 8)
    assert ctx[c["budget_left"]][0] == np.float32(1 - 5 / 8)
    slate = mode.candidates
    assert np.array_equal(cand[:, k["embedding"]], E[slate])
    assert np.array_equal(cand[:, k["queried"]][:, 0], np.isin(slate, concepts).astype(np.float32))
    assert np.array_equal(cand[:, k["proposed_as_neighbour"]][:, 0], mode.from_neighbors.astype(np.float32))
