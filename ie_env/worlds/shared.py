"""Per-process store of the world's large arrays, built once and shared by every env of the process.

A vector env of N copies of one task (``SyncVectorEnv``, or N envs in one worker) holds one copy of
the concept embeddings, the concept latents and the text-neighbour table, not N: each array is
built on the first request for its key and handed out read-only afterwards. Worker processes
started by ``fork`` inherit what the parent built (copy-on-write, no rebuild); ``spawn`` /
``forkserver`` workers build each array once. ``BUILDS`` counts the builds of this process per kind
(the tests assert on it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Hashable

import numpy as np

__all__ = ["BUILDS", "shared", "array_key", "clear", "shared_concept_embeddings"]

BUILDS: Counter = Counter()
_STORE: dict[tuple[str, Hashable], Any] = {}
_MAX_PER_KIND = 8


def array_key(a: np.ndarray) -> tuple:
    """A content key of an array (sha1 of its bytes, shape and dtype)."""
    a = np.ascontiguousarray(a)
    return (hashlib.sha1(a.view(np.uint8)).hexdigest(), a.shape, str(a.dtype))


def shared(kind: str, key: Hashable, build: Callable[[], Any]) -> Any:
    """The value stored for ``(kind, key)``, built by ``build()`` on first use (arrays made read-only)."""
    hit = _STORE.get((kind, key))
    if hit is None:
        same_kind = [k for k in _STORE if k[0] == kind]
        if len(same_kind) >= _MAX_PER_KIND:  # bounded: drop the oldest of this kind
            del _STORE[same_kind[0]]
        hit = build()
        if isinstance(hit, np.ndarray):
            hit.setflags(write=False)
        _STORE[(kind, key)] = hit
        BUILDS[kind] += 1
    return hit


def clear() -> None:
    """Forget every stored array (the next request rebuilds it)."""
    _STORE.clear()


def shared_concept_embeddings(vocabulary: Any, model_name: str | None = None) -> np.ndarray:
    """``concept_embeddings(vocabulary)``, loaded once per process and vocabulary (read-only)."""
    from ie_env.vocab.text_embed import DEFAULT_MODEL, concept_embeddings

    model = model_name or DEFAULT_MODEL
    return shared("embeddings", (vocabulary.fingerprint(), len(vocabulary), model),
                  lambda: concept_embeddings(vocabulary, model))
