"""The observation and action spaces of every action mode, as tables generated from the code.

:func:`context_layout` and :func:`candidate_layout` list every slice of an observation (offset,
width, meaning, range) from an :class:`~ie_env.actions.ActionMode`'s own sizes; a test checks them
against real observations and that ``docs/spaces.md`` is what :func:`spaces_markdown` writes
(``python scripts/make_spaces_doc.py`` regenerates it).
"""

from __future__ import annotations

from typing import Any

from ie_env.actions import CANDIDATE_FEATURES, ActionMode

__all__ = ["CANDIDATE_MEANINGS", "candidate_layout", "context_layout", "spaces_markdown"]

#: What each candidate feature of a slate observation holds (after its embedding), and its range.
CANDIDATE_MEANINGS: dict[str, tuple[str, str]] = {
    "known_reward": ("query reward of this concept's latest query this episode (0 if never queried)", "[-1, 1]"),
    "queried": ("1 if this concept was queried this episode, else 0", "{0, 1}"),
    "max_similarity": (
        "largest cosine similarity of its embedding to any concept queried so far (0 before any)",
        "[-1, 1]",
    ),
    "reward_of_most_similar": ("query reward of that most similar queried concept", "[-1, 1]"),
    "kernel_reward": ("rewards so far weighted by exp((similarity - 1) / kernel_width)", "[-1, 1]"),
    "proposed_as_neighbour": (
        "1 if proposed as a text neighbour of a best concept so far, 0 if drawn at random",
        "{0, 1}",
    ),
    "kernel_reward_vs_mean": ("4 x (kernel_reward - the episode's mean reward so far), clipped", "[-1, 1]"),
    "reward_of_most_similar_vs_mean": (
        "4 x (reward_of_most_similar - the episode's mean reward so far), clipped",
        "[-1, 1]",
    ),
}


def context_layout(mode: ActionMode) -> list[dict[str, Any]]:
    """Every slice of the context vector (the whole observation in ``vocab`` / ``embedding`` mode)."""
    d, d1, H = mode.d, mode.d + 1, mode.history_len
    rows = [
        {
            "name": "last.embedding",
            "offset": 0,
            "width": d,
            "meaning": "text embedding of the last queried concept (0 before the first query)",
            "range": "[-1, 1]",
        },
        {
            "name": "last.reward",
            "offset": d,
            "width": 1,
            "meaning": "query reward of the last query",
            "range": "[-1, 1]",
        },
    ]
    for j in range(H):
        base = d1 * (1 + j)
        which = "the last query again" if j == 0 else f"the query {j} before the last"
        rows.append(
            {
                "name": f"history[{j}].embedding",
                "offset": base,
                "width": d,
                "meaning": f"text embedding of {which} (0 until there is one)",
                "range": "[-1, 1]",
            }
        )
        rows.append(
            {
                "name": f"history[{j}].reward",
                "offset": base + d,
                "width": 1,
                "meaning": f"query reward of {which}",
                "range": "[-1, 1]",
            }
        )
    if mode.cfg.summary:
        s = d1 * (1 + H)
        rows += [
            {
                "name": "summary.best_embedding",
                "offset": s,
                "width": d,
                "meaning": "text embedding of the best-rewarded query so far",
                "range": "[-1, 1]",
            },
            {
                "name": "summary.best_reward",
                "offset": s + d,
                "width": 1,
                "meaning": "its query reward",
                "range": "[-1, 1]",
            },
            {
                "name": "summary.mean_reward",
                "offset": s + d + 1,
                "width": 1,
                "meaning": "mean query reward of the episode so far",
                "range": "[-1, 1]",
            },
            {
                "name": "summary.distinct_share",
                "offset": s + d + 2,
                "width": 1,
                "meaning": "distinct concepts queried / query budget",
                "range": "[0, 1]",
            },
        ]
    rows.append(
        {
            "name": "budget_left",
            "offset": mode.context_dim - 1,
            "width": 1,
            "meaning": "share of the query budget left",
            "range": "[0, 1]",
        }
    )
    return rows


def candidate_layout(mode: ActionMode) -> list[dict[str, Any]]:
    """Every column of a slate candidate's row (``slate`` mode only)."""
    d = mode.d
    rows = [
        {
            "name": "embedding",
            "offset": 0,
            "width": d,
            "meaning": "the candidate concept's text embedding",
            "range": "[-1, 1]",
        }
    ]
    for i, name in enumerate(CANDIDATE_FEATURES):
        meaning, rng = CANDIDATE_MEANINGS[name]
        rows.append({"name": name, "offset": d + i, "width": 1, "meaning": meaning, "range": rng})
    return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| slice | offset | width | meaning | range |", "|---|---|---|---|---|"]
    out += [f"| `{r['name']}` | {r['offset']} | {r['width']} | {r['meaning']} | {r['range']} |" for r in rows]
    return out


ACTIONS = {
    "vocab": (
        "`Discrete(N)`: the index of the concept to query (N = vocabulary size); `action_masks()` for MaskablePPO."
    ),
    "embedding": (
        "`Box(-1, 1, (d,))`: a proto-action; the env queries the nearest concept by inner product "
        "(the nearest not yet queried, with `actions.embedding_unqueried`)."
    ),
    "slate": "`Discrete(K)`: the slot of the slate's candidate to query.",
}


def spaces_markdown(task_id: str = "IELatent-Standard-v1") -> str:
    """``docs/spaces.md``: per action mode, the spaces and every observation slice, with the sizes of
    ``task_id``'s pinned config in that mode."""
    from ie_env.actions import make_action_mode
    from ie_env.config import merge
    from ie_env.suite import task_config
    from ie_env.worlds.embedded import load_vocabulary
    from ie_env.worlds.shared import shared_concept_embeddings

    base = task_config(task_id)
    emb = shared_concept_embeddings(load_vocabulary(base.world.vocabulary))
    intro = (
        "Generated from `ie_env/actions.py` by `python scripts/make_spaces_doc.py` (a test fails when this page "
        "and the code differ). Sizes are those of "
        f"`{task_id}` (`actions.embed_dim={base.actions.embed_dim}` so d = {base.actions.embed_dim or 'full'}, "
        f"`history={base.history}` so H = {base.history}, `actions.summary={base.actions.summary}`, "
        f"`actions.slate_size={base.actions.slate_size}`); other settings move the offsets by the formulas: "
        "the context has (d + 1) x (1 + H) + (d + 3 with the summary) + 1 numbers."
    )
    note = (
        "Nothing in an observation names the target; the N x d vocabulary is the env attribute "
        "`concept_embeddings`, never part of an observation. Rewards are the paper's query rewards under the "
        "current encoder (mean cosine similarity of the query's best images to their nearest target images)."
    )
    lines = ["# Observation and action spaces", "", intro, "", note]
    for name in ("vocab", "embedding", "slate"):
        cfg = merge(base, {"action_mode": name})
        mode = make_action_mode(name, cfg.actions, emb, cfg.history, cfg.query_budget, cfg.mask_queried)
        lines += [
            "",
            f"## `{name}` mode",
            "",
            f"- observation space: `{mode.observation_space}`",
            f"- action space: `{mode.action_space}` — {ACTIONS[name]}",
            "",
            "### Context" if name == "slate" else "### Observation",
            "",
        ]
        lines += _table(context_layout(mode))
        if name == "slate":
            proposal = (
                f"A slate proposes {round(mode.cfg.slate_neighbor_share * mode.K)} text neighbours of the "
                f"{mode.cfg.slate_seeds} best concepts so far, then random unqueried concepts."
            )
            lines += ["", f"### Candidates (each of the K = {mode.K} rows)", "", proposal, ""]
            lines += _table(candidate_layout(mode))
    return "\n".join(lines) + "\n"
