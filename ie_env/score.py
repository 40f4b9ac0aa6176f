"""The one score of an episode: gap closed, from ground-truth relevance ``g``.

``gap_closed = (mean g - r) / (o - r)`` over the episode's queries, where ``r`` is the mean of ``g``
over the vocabulary (what a uniformly random query earns in expectation: 0) and ``o = max g`` (1 in
the embedded world: the target concepts themselves; querying them every time scores 1). The
environment puts it in ``info["ie_episode"]`` at an episode's end, and ``ie-train``, ``ie-compare``
and ``ie-benchmark`` report this number; ``expected_gap_closed`` is the same measure of ``p . g``
(the expected relevance of the distribution a policy drew each query from), where a policy states it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["episode_gap_closed", "gap_closed"]


def gap_closed(mean_g: float | np.ndarray, random_value: float, oracle_value: float) -> float | np.ndarray:
    """``(mean g - r) / (o - r)``: 0 for the random policy in expectation, 1 for the oracle."""
    if not oracle_value > random_value:
        raise ValueError(f"the oracle value ({oracle_value}) must exceed the random policy's ({random_value})")
    return (np.asarray(mean_g, dtype=np.float64) - random_value) / (oracle_value - random_value)


def episode_gap_closed(relevance: np.ndarray, actions: np.ndarray) -> dict[str, float]:
    """``gap_closed`` and ``gap_closed_second_half`` (the budget's second half: what a policy does
    once it has learnt from the episode) of the queried concepts ``actions`` under ``relevance``,
    with the ``random_expected_relevance`` and ``oracle_relevance`` they are measured against."""
    g = np.asarray(relevance[np.asarray(actions, dtype=np.int64)], dtype=np.float64)
    r, o = float(relevance.mean()), float(relevance.max())
    if g.size == 0 or not o > r:
        nan = float("nan")
        return {"gap_closed": nan, "gap_closed_second_half": nan, "random_expected_relevance": r, "oracle_relevance": o}
    return {"gap_closed": float(gap_closed(g.mean(), r, o)),
            "gap_closed_second_half": float(gap_closed(g[g.size // 2:].mean(), r, o)),
            "random_expected_relevance": r, "oracle_relevance": o}
