"""Local corpus engine: folder, WebDataset tars and parquet, flat and on-disk IVF indexes.

A small deterministic bag-of-words embedder stands in for MiniLM so no model is loaded.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from _hostile_server import encode, jpeg_bytes, make_image
from ie_env.engines.base import EngineError
from ie_env.engines.local_corpus import CorpusIndex, LocalCorpusConfig, LocalCorpusEngine
from ie_env.fetcher import Fetcher, FetchConfig

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
ANIMALS = ["fox", "owl", "whale", "tiger", "frog", "heron"]
CAPTIONS = [f"a {c} {a} in the wild" for c in COLOURS for a in ANIMALS]


class BagOfWords:
    """Hash each word to a signed unit direction in 128-d; sum; normalise. Counts its calls."""

    dim = 128

    def __init__(self):
        self.calls = 0
        self.texts = 0

    def embed(self, texts):
        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                h = int(hashlib.md5(w.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0 if (h >> 8) % 2 else -1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(n, 1e-9)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, cap in enumerate(CAPTIONS):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:03d}.jpg").write_bytes(jpeg_bytes(i, 64, 48))
        if i % 2:
            (sub / f"img{i:03d}.txt").write_text(cap)
        else:
            (sub / f"img{i:03d}.json").write_text(f'{{"caption": "{cap}", "other": 1}}')
    return root


def test_folder_corpus_search_and_image_bytes(folder, tmp_path):
    emb = BagOfWords()
    eng = LocalCorpusEngine(LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "idx")),
                            embedder=emb)
    assert len(eng) == len(CAPTIONS) and eng.index.index_type == "flat"
    hits = eng.search("green whale", 3)
    assert hits[0].caption == "a green whale in the wild"
    assert [h.rank for h in hits] == [0, 1, 2] and all(h.engine == "local_corpus" for h in hits)
    assert hits[0].extra["score"] >= hits[1].extra["score"] >= hits[2].extra["score"]
    assert hits[0].url.startswith("corpus://") and hits[0].url.startswith(eng.url_prefix)
    i = CAPTIONS.index("a green whale in the wild")
    assert eng.read_image(hits[0].url) == (folder / f"part{i % 3}" / f"img{i:03d}.jpg").read_bytes()
    with pytest.raises(EngineError):
        eng.read_image(eng.url_prefix + "9999")
    with pytest.raises(EngineError):
        eng.read_image("corpus://other/1")
    batch = eng.search_batch(["red fox", "white heron"], 1)
    assert [b[0].caption for b in batch] == ["a red fox in the wild", "a white heron in the wild"]
    assert len(eng.search("owl", 1000)) == len(CAPTIONS)


def test_index_is_reused_and_rebuilt_when_the_source_changes(folder, tmp_path):
    cfg = LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "idx"))
    emb = BagOfWords()
    LocalCorpusEngine(cfg, embedder=emb).close()
    built = emb.texts
    assert built == len(CAPTIONS)
    eng = LocalCorpusEngine(cfg, embedder=emb)
    assert emb.texts == built  # reopened from disk, no caption embedded again
    eng.search("red owl", 2)
    assert emb.texts == built + 1
    eng.close()
    (folder / "part0" / "zzz.jpg").write_bytes(jpeg_bytes(99, 64, 48))
    (folder / "part0" / "zzz.txt").write_text("a purple unicorn")
    eng = LocalCorpusEngine(cfg, embedder=emb)
    assert len(eng) == len(CAPTIONS) + 1
    assert eng.search("purple unicorn", 1)[0].caption == "a purple unicorn"
    with pytest.raises(EngineError, match="rebuild='never'"):
        LocalCorpusEngine(LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "none"),
                                            rebuild="never"), embedder=emb)
    assert not [p for p in tmp_path.iterdir() if ".build-" in p.name]


def _tar(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, files in samples:
            for ext, data in files:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_two_builders_of_one_index_take_turns(folder, tmp_path, caplog):
    """A second engine opening the index while the first is building it waits on the lock, then
    opens the finished index instead of building it again."""
    import logging
    import threading

    started, go = threading.Event(), threading.Event()

    class Held(BagOfWords):
        def embed(self, texts):
            started.set()
            assert go.wait(60), "the test never released the first build"
            return super().embed(texts)

    first_emb, second_emb = Held(), BagOfWords()
    cfg = dict(source=str(folder), index_dir=str(tmp_path / "idx"))
    engines = {}
    caplog.set_level(logging.WARNING, logger="ie_env.engines.local_corpus")
    def build(name, emb):
        engines[name] = LocalCorpusEngine(LocalCorpusConfig(**cfg), embedder=emb)

    t1 = threading.Thread(target=build, args=("a", first_emb))
    t1.start()
    assert started.wait(60)
    t2 = threading.Thread(target=build, args=("b", second_emb))
    t2.start()
    for _ in range(600):  # until the second builder reports that it waits
        if any("another process is building" in r.getMessage() for r in caplog.records):
            break
        threading.Event().wait(0.1)
    assert any("another process is building" in r.getMessage() for r in caplog.records)
    go.set()
    t1.join(60)
    t2.join(60)
    assert first_emb.texts == len(CAPTIONS) and second_emb.texts == 0  # built once
    assert engines["b"].search("green whale", 1)[0].caption == "a green whale in the wild"


def test_webdataset_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    images = {}
    for s in range(2):
        samples = []
        for j in range(18):
            i = s * 18 + j
            images[i] = jpeg_bytes(i, 64, 48)
            files = [("jpg", images[i])]
            files.append(("txt", CAPTIONS[i].encode()) if i % 2 else
                         ("json", f'{{"caption": "{CAPTIONS[i]}"}}'.encode()))
            samples.append((f"sample{i:05d}", files))
        samples.append(("nocaption", [("jpg", b"x")]))
        _tar(shards / f"shard-{s:03d}.tar", samples)
    eng = LocalCorpusEngine(LocalCorpusConfig(source=str(shards)), embedder=BagOfWords())
    assert len(eng) == 36 and eng.index.meta["kind"] == "webdataset"
    hit = eng.search("yellow frog", 1)[0]
    i = CAPTIONS.index("a yellow frog in the wild")
    assert hit.caption == CAPTIONS[i] and eng.read_image(hit.url) == images[i]
    assert (tmp_path / "shards.ie-index" / "meta.json").is_file()


def test_parquet_with_image_bytes_and_with_urls(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = [jpeg_bytes(i, 64, 48) for i in range(len(CAPTIONS))]
    table = pa.table({"caption": CAPTIONS, "image": [{"bytes": d, "path": None} for d in data]})
    pq.write_table(table, tmp_path / "pairs.parquet", row_group_size=10)
    eng = LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "pairs.parquet")), embedder=BagOfWords())
    hit = eng.search("black tiger", 1)[0]
    assert hit.caption == "a black tiger in the wild"
    assert eng.read_image(hit.url) == data[CAPTIONS.index(hit.caption)]
    laion = pa.table({"TEXT": CAPTIONS, "URL": [f"http://127.0.0.1:1/{i}.jpg" for i in range(len(CAPTIONS))],
                      "LICENSE": ["cc-by"] * len(CAPTIONS)})
    (tmp_path / "laion").mkdir()
    pq.write_table(laion, tmp_path / "laion" / "part-0.parquet")
    eng2 = LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "laion")), embedder=BagOfWords())
    h = eng2.search("white owl", 1)[0]
    assert h.url == f"http://127.0.0.1:1/{CAPTIONS.index('a white owl in the wild')}.jpg"
    assert h.licence == "cc-by"
    bad = pa.table({"foo": ["x"]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(EngineError, match="caption column"):
        LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "bad.parquet")), embedder=BagOfWords())


def test_ivf_index_on_disk_matches_exact_search(tmp_path):
    pytest.importorskip("faiss")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    caps = [" ".join(rng.choice(words, size=5, replace=False)) for _ in range(3000)]
    pq.write_table(pa.table({"caption": caps, "url": [f"http://127.0.0.1:1/{i}" for i in range(3000)]}),
                   tmp_path / "c.parquet")
    emb = BagOfWords()
    flat = LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "c.parquet"), index_type="flat",
                                               index_dir=str(tmp_path / "flat"), search_chunk=700), emb)
    ivf = LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "c.parquet"), index_type="ivf",
                                              index_dir=str(tmp_path / "ivf"), nlist=8, nprobe=8,
                                              search_chunk=700), emb)
    assert ivf.index.index_type == "ivf" and (tmp_path / "ivf" / "ivf.ivfdata").is_file()
    queries = [caps[i] for i in (3, 500, 2999)] + ["w1 w2 w3"]
    for q in queries:
        a = [h.extra["score"] for h in flat.search(q, 10)]
        b = [h.extra["score"] for h in ivf.search(q, 10)]
        assert np.allclose(a, b, atol=1e-5), q
    assert flat.search(caps[500], 1)[0].url == "http://127.0.0.1:1/500"
    reopened = CorpusIndex(tmp_path / "ivf", nprobe=8)
    assert reopened.index_type == "ivf" and reopened.count == 3000


def test_fetcher_reads_corpus_images_without_network(folder, tmp_path):
    eng = LocalCorpusEngine(LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "idx")),
                            embedder=BagOfWords())
    hits = eng.search("blue heron", 4)
    with Fetcher(str(tmp_path / "store"), FetchConfig(leak_hamming=-1, min_side=8)) as f:
        f.register_reader(eng.url_prefix, eng.read_image)
        results = f.fetch_many(hits, query="blue heron")
    assert all(r.ok for r in results), [r.to_dict() for r in results]
    assert results[0].meta["engine"] == "local_corpus"


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError):
        LocalCorpusConfig().validate()
    with pytest.raises(EngineError, match="not a folder"):
        LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "nope")), embedder=BagOfWords())
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="no folder files|no captioned"):
        LocalCorpusEngine(LocalCorpusConfig(source=str(tmp_path / "empty")), embedder=BagOfWords())
    img = tmp_path / "one"
    img.mkdir()
    (img / "x.png").write_bytes(encode(make_image(1, 32, 32), "PNG"))
    with pytest.raises(EngineError, match="no captioned"):
        LocalCorpusEngine(LocalCorpusConfig(source=str(img), caption_from_filename=False),
                          embedder=BagOfWords())


def test_corpus_images_above_the_byte_cap_are_refused(folder, tmp_path):
    i = CAPTIONS.index("a green whale in the wild")
    big = folder / f"part{i % 3}" / f"img{i:03d}.jpg"
    big.write_bytes(jpeg_bytes(i, 64, 48) + b"\0" * 3000)  # a valid JPEG padded past the cap
    cfg = LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "idx"), max_image_bytes=2048)
    eng = LocalCorpusEngine(cfg, embedder=BagOfWords())
    hits = eng.search("green whale", 2)
    assert hits[0].caption == "a green whale in the wild"
    with pytest.raises(EngineError, match="max_image_bytes=2048"):
        eng.read_image(hits[0].url)
    assert len(eng.read_image(hits[1].url)) <= 2048
    with Fetcher(str(tmp_path / "store"), FetchConfig(leak_hamming=-1, min_side=8)) as f:
        f.register_reader(eng.url_prefix, eng.read_image)
        results = f.fetch_many(hits, query="green whale")
    assert [r.reason for r in results] == ["too_large", "ok"]


def test_corpus_record_paths_stay_inside_the_corpus_folder(folder, tmp_path):
    secret = tmp_path / "outside.jpg"
    secret.write_bytes(jpeg_bytes(99, 64, 48))
    (folder / "part0" / "img000.jpg").unlink()
    (folder / "part0" / "img000.jpg").symlink_to(secret)  # a symlink pointing out of the corpus
    eng = LocalCorpusEngine(LocalCorpusConfig(source=str(folder), index_dir=str(tmp_path / "idx")),
                            embedder=BagOfWords())
    hit = eng.search(CAPTIONS[0], 1)[0]
    assert hit.caption == CAPTIONS[0]
    with pytest.raises(EngineError, match="outside the corpus folder"):
        eng.read_image(hit.url)
