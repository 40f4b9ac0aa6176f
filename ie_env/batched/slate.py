"""Slate proposals of one episode, drawn exactly as :meth:`ie_env.actions.SlateMode.propose` draws them.

The batched env keeps each episode's own ``numpy`` Generator (seeded as the scalar env seeds its slate
mode) and calls :func:`propose` once per episode and step, so that the candidates equal the scalar
env's for the same seeds and actions. The draws are a few small ``numpy`` calls; the features of the
candidates are computed for the whole batch at once (:mod:`ie_env.batched.env`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["propose"]


def propose(rng: np.random.Generator, queried: np.ndarray, last_reward: np.ndarray, actions: np.ndarray,
            n_queried: int, neighbors: np.ndarray, K: int, seeds: int, share: float, out: np.ndarray) -> int:
    """Write the next slate's ``K`` concepts into ``out`` and return how many came from neighbours of the
    best concepts so far (they come first). ``queried`` and ``last_reward`` are the episode's per-concept
    arrays, ``actions`` its queries so far (in order), ``n_queried`` its distinct concepts, ``neighbors``
    the ``(N, m)`` text neighbours of every concept. The same numpy calls on the generator as
    ``SlateMode.propose``, with its bookkeeping done on the few concepts involved instead of on ``N``."""
    n_concepts = len(queried)
    chosen: list[int] = []
    picked: set[int] = set()
    if len(actions):
        ids = np.array(sorted(set(actions.tolist())), dtype=np.int64)  # np.flatnonzero(queried)
        top = ids[np.argsort(-last_reward[ids], kind="stable")[:seeds]]
        pool = neighbors[top].ravel()
        pool = pool[~queried[pool]]
        if len(pool):
            pool = np.array(sorted(set(pool.tolist())), dtype=np.int64)  # np.unique
            n_nb = min(len(pool), int(round(share * K)))  # noqa: RUF046  (as SlateMode.propose)
            pick = rng.choice(pool, size=n_nb, replace=False) if n_nb < len(pool) else pool
            chosen = pick.tolist()
            picked.update(chosen)
    n_nb = len(chosen)
    free = n_concepts - n_queried - n_nb  # the picks are distinct concepts not queried yet
    if free >= K - n_nb:
        while len(chosen) < K:
            for c in rng.integers(0, n_concepts, size=2 * (K - len(chosen)) + 4).tolist():
                if not queried[c] and c not in picked:
                    picked.add(c)
                    chosen.append(c)
                    if len(chosen) == K:
                        break
    else:  # nearly everything was queried: fill with any concepts (repeats allowed)
        taken = queried.copy()
        taken[list(picked)] = True
        chosen += np.flatnonzero(~taken).tolist()
        chosen += rng.integers(0, n_concepts, size=K - len(chosen)).tolist()
    out[:] = chosen
    return n_nb
