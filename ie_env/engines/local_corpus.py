"""A local corpus of captioned images searched by caption embedding: the paper's LAION engine at the
size of a disk.

Sources
  * a folder of images with captions in sidecar files (``x.jpg`` + ``x.txt`` or ``x.json`` with a
    ``caption``/``text`` key; the file name is the fallback caption),
  * WebDataset tar shards (one ``.tar``, a folder of them, or a glob; samples grouped by key, image
    from ``jpg/jpeg/png/webp``, caption from ``txt``/``caption``/``json``),
  * parquet files of (image, caption) pairs: image bytes (a binary column, or a ``{bytes, path}``
    struct as Hugging Face writes them) or image URLs (LAION-style metadata; the hits are then web
    URLs for the fetcher).

Index (built once, kept on disk in ``index_dir``; rebuilt when the source changes)
  ``records.jsonl`` + ``records.offsets.npy`` (random access to captions and image references),
  ``embeddings.f32`` (an ``N x d`` float32 matrix, memory-mapped), and for large corpora a faiss
  IVF index whose inverted lists live on disk (``ivf.index`` + ``ivf.ivfdata``). Search is exact
  (chunked inner products over the memory-mapped matrix, ``index_type="flat"``) or approximate
  (faiss IVF with ``nprobe`` lists, ``index_type="ivf"``); ``auto`` picks IVF from
  ``ivf_threshold`` rows when faiss is installed. Memory stays bounded by one chunk either way.

Images that live in the corpus get ``corpus://<corpus_id>/<row>`` URLs; ``read_image(url)`` returns
their bytes, and ``Fetcher.register_reader`` plugs it into the download path.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from ie_env.bounds import DEFAULT_CORPUS_MAX_BYTES
from ie_env.config import atomic_write_text
from ie_env.engines.base import EngineError, SearchEngine, SearchHit, finalize_hits

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
CAPTION_KEYS = ("caption", "text", "TEXT", "title", "alt")
INDEX_FORMAT = "ie-corpus-index"
INDEX_VERSION = 1
URL_SCHEME = "corpus://"

EmbedFn = Callable[[list[str]], np.ndarray]


class ImageTooLarge(EngineError):
    """A corpus image above ``max_image_bytes`` (the fetcher counts it as ``too_large``)."""

    fetch_reason = "too_large"


@dataclass
class LocalCorpusConfig:
    #: A folder, a ``.tar`` / folder of tars / glob of WebDataset shards, or parquet file(s).
    source: str = ""
    #: Where the index lives; default ``<source>.ie-index`` beside the source.
    index_dir: str = ""
    kind: Literal["auto", "folder", "webdataset", "parquet"] = "auto"
    caption_column: str = ""
    image_column: str = ""
    url_column: str = ""
    licence_column: str = ""
    index_type: Literal["auto", "flat", "ivf"] = "auto"
    ivf_threshold: int = 200_000
    nlist: int = 0  # 0 = about 4 * sqrt(N)
    nprobe: int = 32
    train_size: int = 100_000
    embed_batch: int = 1024
    search_chunk: int = 65_536
    rebuild: Literal["auto", "never", "always"] = "auto"
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    caption_from_filename: bool = True
    #: Bytes read from one image (file, shard member or parquet cell); a larger one is refused.
    max_image_bytes: int = DEFAULT_CORPUS_MAX_BYTES

    def validate(self) -> None:
        if not self.source:
            raise ValueError("local_corpus needs a source (folder, tar shards or parquet)")
        if self.nprobe < 1 or self.embed_batch < 1 or self.search_chunk < 1:
            raise ValueError("local_corpus nprobe, embed_batch and search_chunk must be >= 1")


# ------------------------------------------------------------------------------------- sources


def _expand(source: str, exts: tuple[str, ...]) -> list[Path]:
    p = Path(source)
    if any(ch in source for ch in "*?["):
        return sorted(Path(x) for x in _glob.glob(source) if x.lower().endswith(exts))
    if p.is_dir():
        return sorted(x for x in p.rglob("*") if x.is_file() and x.name.lower().endswith(exts))
    if p.is_file():
        return [p]
    return []


def detect_kind(source: str) -> str:
    if _expand(source, (".parquet",)):
        return "parquet"
    if _expand(source, (".tar",)):
        return "webdataset"
    if Path(source).is_dir():
        return "folder"
    raise EngineError("local_corpus", f"source {source!r} is not a folder, tar shard(s) or parquet")


def _files_for(kind: str, source: str) -> list[Path]:
    if kind == "folder":
        return _expand(source, IMAGE_EXTS)
    return _expand(source, (".parquet",) if kind == "parquet" else (".tar",))


def _fingerprint(kind: str, files: list[Path], cfg: LocalCorpusConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([kind, cfg.caption_column, cfg.image_column, cfg.url_column,
                         cfg.licence_column, cfg.model_name, cfg.caption_from_filename]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _caption_from_json(raw: bytes) -> str:
    try:
        data = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return ""
    if isinstance(data, dict):
        for k in CAPTION_KEYS:
            if isinstance(data.get(k), str) and data[k].strip():
                return data[k].strip()
    return ""


def iter_folder(root: Path, files: list[Path], from_filename: bool) -> Iterator[tuple[str, dict]]:
    for f in files:
        caption = ""
        txt, js = f.with_suffix(".txt"), f.with_suffix(".json")
        if txt.is_file():
            caption = txt.read_text(errors="replace").strip()
        elif js.is_file():
            caption = _caption_from_json(js.read_bytes())
        if not caption and from_filename:
            caption = f.stem.replace("_", " ").replace("-", " ").strip()
        if caption:
            yield caption, {"path": str(f.relative_to(root)) if root.is_dir() else str(f)}


def iter_webdataset(files: list[Path]) -> Iterator[tuple[str, dict]]:
    for shard in files:
        try:
            tf = tarfile.open(shard, "r:")
        except (tarfile.TarError, OSError) as exc:
            log.warning("local_corpus: skipping unreadable shard %s (%s)", shard, exc)
            continue
        with tf:
            current: str | None = None
            sample: dict[str, Any] = {}
            for m in tf:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                if "." not in base:
                    continue
                key = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower()
                if key != current:
                    yield from _wds_sample(shard, sample)
                    current, sample = key, {}
                if ext in ("jpg", "jpeg", "png", "webp"):
                    sample["image"] = (m.offset_data, m.size, m.name)
                elif ext in ("txt", "caption", "json"):
                    fh = tf.extractfile(m)
                    raw = fh.read(1 << 20) if fh is not None else b""
                    cap = raw.decode("utf-8", "replace").strip() if ext != "json" else _caption_from_json(raw)
                    if cap and (ext != "json" or "caption" not in sample):
                        sample["caption"] = cap
            yield from _wds_sample(shard, sample)


def _wds_sample(shard: Path, sample: dict) -> Iterator[tuple[str, dict]]:
    if "image" in sample and sample.get("caption"):
        off, size, name = sample["image"]
        yield sample["caption"], {"shard": str(shard), "offset": int(off), "size": int(size),
                                  "member": name}


def _pick(names: Sequence[str], wanted: str, candidates: Sequence[str]) -> str | None:
    if wanted:
        if wanted not in names:
            raise EngineError("local_corpus", f"parquet has no column {wanted!r}; columns: {list(names)}")
        return wanted
    for c in candidates:
        if c in names:
            return c
    return None


def iter_parquet(files: list[Path], cfg: LocalCorpusConfig) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise EngineError("local_corpus", "parquet corpora need pyarrow: pip install 'ie-env[corpus]'") from exc
    for f in files:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        cap = _pick(names, cfg.caption_column, CAPTION_KEYS)
        img = _pick(names, cfg.image_column, ("image", "jpg", "png", "img", "image_bytes"))
        url = _pick(names, cfg.url_column, ("url", "URL", "image_url"))
        lic = _pick(names, cfg.licence_column, ("license", "LICENSE", "licence"))
        if cap is None or (img is None and url is None):
            raise EngineError("local_corpus", f"{f}: need a caption column and an image or url "
                                              f"column; columns are {names}")
        for rg in range(pf.num_row_groups):
            cols = [c for c in (cap, url, lic) if c]
            table = pf.read_row_group(rg, columns=cols)
            caps = table.column(cap).to_pylist()
            urls = table.column(url).to_pylist() if url else [None] * len(caps)
            lics = table.column(lic).to_pylist() if lic else [None] * len(caps)
            for i, (c, u, li) in enumerate(zip(caps, urls, lics)):
                if isinstance(c, str) and c.strip():
                    ref: dict[str, Any]
                    if url and isinstance(u, str) and u:
                        ref = {"url": u}
                    elif img:
                        ref = {"file": str(f), "row_group": rg, "index": i, "column": img}
                    else:
                        continue
                    if isinstance(li, str) and li:
                        ref["licence"] = li
                    yield c.strip(), ref


# ------------------------------------------------------------------------------------- the index


def _as_embed_fn(embedder: Any) -> EmbedFn:
    if embedder is None:
        raise ValueError("no embedder")
    fn = embedder.embed if hasattr(embedder, "embed") else embedder
    if not callable(fn):
        raise TypeError("embedder must be callable or have .embed(texts)")
    return fn


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise EngineError("local_corpus", f"embedder returned shape {x.shape}, expected (N, d)")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _faiss():
    try:
        import faiss  # noqa: F401

        return faiss
    except ImportError:
        return None


class CorpusIndex:
    """An opened on-disk index: records, memory-mapped embeddings, optional faiss IVF."""

    def __init__(self, index_dir: str | os.PathLike, nprobe: int = 32, search_chunk: int = 65_536) -> None:
        self.dir = Path(index_dir)
        try:
            self.meta = json.loads((self.dir / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise EngineError("local_corpus", f"no readable index in {self.dir}: {exc}") from exc
        if self.meta.get("format") != INDEX_FORMAT or self.meta.get("version") != INDEX_VERSION:
            raise EngineError("local_corpus", f"{self.dir} is not a version-{INDEX_VERSION} corpus index")
        self.count = int(self.meta["count"])
        self.dim = int(self.meta["dim"])
        self.search_chunk = search_chunk
        self.offsets = np.load(self.dir / "records.offsets.npy", mmap_mode="r")
        self.emb = (np.memmap(self.dir / "embeddings.f32", dtype=np.float32, mode="r",
                              shape=(self.count, self.dim)) if self.count else
                    np.zeros((0, self.dim), np.float32))
        self._records = open(self.dir / "records.jsonl", "rb")
        self._lock = threading.Lock()
        self.ivf = None
        if self.meta.get("index_type") == "ivf":
            faiss = _faiss()
            if faiss is None:
                log.warning("local_corpus: faiss missing; falling back to exact search")
            else:
                self.ivf = faiss.read_index(str(self.dir / "ivf.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
                self.ivf.nprobe = nprobe

    @property
    def index_type(self) -> str:
        return "ivf" if self.ivf is not None else "flat"

    def record(self, i: int) -> dict:
        with self._lock:
            self._records.seek(int(self.offsets[i]))
            line = self._records.read(int(self.offsets[i + 1] - self.offsets[i]))
        return json.loads(line)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) for each row of ``q`` (unit vectors); ids -1 pad short answers."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = max(0, min(k, self.count))
        if k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.ivf is not None:
            scores, ids = self.ivf.search(q, k)
            return scores, ids.astype(np.int64)
        best_s = np.full((len(q), k), -np.inf, np.float32)
        best_i = np.full((len(q), k), -1, np.int64)
        for start in range(0, self.count, self.search_chunk):
            block = np.asarray(self.emb[start:start + self.search_chunk])
            s = q @ block.T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
            cand_i = np.concatenate([best_i, part + start], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(cand_s, order, 1)
            best_i = np.take_along_axis(cand_i, order, 1)
        return best_s, best_i

    def close(self) -> None:
        self._records.close()


def build_index(cfg: LocalCorpusConfig, embed: EmbedFn, index_dir: Path) -> Path:
    """Scan ``cfg.source``, embed captions in batches and write the index to ``index_dir``."""
    kind = cfg.kind if cfg.kind != "auto" else detect_kind(cfg.source)
    files = _files_for(kind, cfg.source)
    if not files:
        raise EngineError("local_corpus", f"no {kind} files under {cfg.source!r}")
    root = Path(cfg.source)
    if kind == "folder":
        records = iter_folder(root, files, cfg.caption_from_filename)
    elif kind == "webdataset":
        records = iter_webdataset(files)
    else:
        records = iter_parquet(files, cfg)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build-", dir=index_dir.parent))
    try:
        offsets = [0]
        dim = None
        count = 0
        with open(tmp / "records.jsonl", "wb") as rec_f, open(tmp / "embeddings.f32", "wb") as emb_f:
            batch: list[str] = []

            def flush() -> None:
                nonlocal dim
                if not batch:
                    return
                e = _normalise(embed(list(batch)))
                if e.shape[0] != len(batch):
                    raise EngineError("local_corpus", "embedder returned the wrong number of rows")
                if dim is None:
                    dim = int(e.shape[1])
                elif e.shape[1] != dim:
                    raise EngineError("local_corpus", "embedder changed dimension mid-build")
                emb_f.write(np.ascontiguousarray(e, np.float32).tobytes())
                batch.clear()

            for caption, ref in records:
                line = json.dumps({"caption": caption, **ref}, ensure_ascii=False).encode() + b"\n"
                rec_f.write(line)
                offsets.append(offsets[-1] + len(line))
                batch.append(caption)
                count += 1
                if len(batch) >= cfg.embed_batch:
                    flush()
            flush()
        if count == 0:
            raise EngineError("local_corpus", f"no captioned images found in {cfg.source!r}")
        np.save(tmp / "records.offsets.npy", np.asarray(offsets, np.uint64))
        faiss = _faiss()
        index_type = cfg.index_type
        if index_type == "auto":
            index_type = "ivf" if (faiss is not None and count >= cfg.ivf_threshold) else "flat"
        if index_type == "ivf":
            if faiss is None:
                raise EngineError("local_corpus", "index_type 'ivf' needs `pip install faiss-cpu`")
            _build_ivf(faiss, tmp, count, int(dim), cfg)
        corpus_id = _fingerprint(kind, files, cfg)[:16]
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "count": count, "dim": dim,
                "kind": kind, "source": str(cfg.source), "index_type": index_type,
                "model": cfg.model_name, "fingerprint": _fingerprint(kind, files, cfg),
                "corpus_id": corpus_id}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
        old = None
        if index_dir.exists():
            old = index_dir.with_name(f".{index_dir.name}.old-{os.getpid()}")
            os.replace(index_dir, old)
        os.replace(tmp, index_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("local_corpus: indexed %d captions from %s (%s)", count, cfg.source, index_type)
        return index_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_ivf(faiss, folder: Path, count: int, dim: int, cfg: LocalCorpusConfig) -> None:
    emb = np.memmap(folder / "embeddings.f32", dtype=np.float32, mode="r", shape=(count, dim))
    nlist = cfg.nlist or int(max(1, min(65_536, 4 * np.sqrt(count))))
    nlist = max(1, min(nlist, count // 39 or 1))
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(count, size=min(count, max(cfg.train_size, 39 * nlist)), replace=False))
    quant = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(emb[sample]))
    trained = folder / "ivf.trained"
    faiss.write_index(ivf, str(trained))
    parts = []
    for j, start in enumerate(range(0, count, cfg.search_chunk)):
        part = faiss.read_index(str(trained))
        block = np.ascontiguousarray(emb[start:start + cfg.search_chunk])
        part.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        path = folder / f"ivf.part{j}"
        faiss.write_index(part, str(path))
        parts.append(str(path))
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.read_index(str(trained))
    merge_ondisk(index, parts, str(folder / "ivf.ivfdata"))
    faiss.write_index(index, str(folder / "ivf.index"))
    for p in parts:
        os.unlink(p)
    os.unlink(trained)


# ------------------------------------------------------------------------------------- the engine


@contextlib.contextmanager
def _index_lock(index_dir: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``.<index>.lock`` beside the index (a no-op where ``fcntl`` is
    missing); logs when it has to wait for another process's build."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = index_dir.with_name(f".{index_dir.name}.lock")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("local_corpus: another process is building %s; waiting for it", index_dir)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def default_index_dir(source: str) -> Path:
    """``<source>.ie-index`` beside the source (for a glob: ``corpus.ie-index`` in its folder)."""
    if any(ch in source for ch in "*?["):
        return Path(source).parent / "corpus.ie-index"
    p = Path(source)
    return p.with_name(p.name + ".ie-index")


class LocalCorpusEngine(SearchEngine):
    """Search a local captioned-image corpus by caption embedding."""

    name = "local_corpus"

    def __init__(self, config: LocalCorpusConfig, embedder: Any = None) -> None:
        config.validate()
        self.config = config
        self._embedder = embedder
        self._embed_fn: EmbedFn | None = _as_embed_fn(embedder) if embedder is not None else None
        self.index_dir = Path(config.index_dir) if config.index_dir else default_index_dir(config.source)
        self.index = self._open_or_build()
        self.corpus_id = self.index.meta["corpus_id"]
        self._pq_cache: dict[tuple[str, int, str], Any] = {}
        self._pq_lock = threading.Lock()

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embed_fn is None:
            from ie_env.vocab.text_embed import get_embedder

            self._embed_fn = _as_embed_fn(get_embedder(self.config.model_name))
        return _normalise(self._embed_fn(texts))

    def _open_or_build(self) -> CorpusIndex:
        """Open the index, building it first when missing or stale. Builders of the same index (several
        workers of one comparison) take turns on a file lock beside it: the first builds, the others wait,
        then find it fresh and open it."""
        self.index_dir.parent.mkdir(parents=True, exist_ok=True)
        with _index_lock(self.index_dir):
            return self._open_or_build_locked()

    def _open_or_build_locked(self) -> CorpusIndex:
        cfg = self.config
        meta_path = self.index_dir / "meta.json"
        stale = True
        if meta_path.is_file() and cfg.rebuild != "always":
            try:
                meta = json.loads(meta_path.read_text())
                kind = meta.get("kind", "")
                stale = (meta.get("fingerprint") != _fingerprint(kind, _files_for(kind, cfg.source), cfg)
                         or meta.get("version") != INDEX_VERSION)
            except (OSError, ValueError):
                stale = True
            if stale and cfg.rebuild == "never":
                log.warning("local_corpus: index %s is stale; using it (rebuild='never')", self.index_dir)
                stale = False
        elif cfg.rebuild == "never":
            raise EngineError(self.name, f"no index at {self.index_dir} and rebuild='never'")
        if stale:
            build_index(cfg, self._embed, self.index_dir)
        return CorpusIndex(self.index_dir, nprobe=cfg.nprobe, search_chunk=cfg.search_chunk)

    def __len__(self) -> int:
        return self.index.count

    def search(self, query: str, n: int) -> list[SearchHit]:
        return self.search_batch([query], n)[0]

    def search_batch(self, queries: Sequence[str], n: int) -> list[list[SearchHit]]:
        """Answer several queries with one pass over the index."""
        for q in queries:
            self.check_args(q, n)
        if n == 0 or not queries:
            return [[] for _ in queries]
        qv = self._embed(list(queries))
        if qv.shape[1] != self.index.dim:
            raise EngineError(self.name, f"query embedding has dim {qv.shape[1]}, index has {self.index.dim}")
        scores, ids = self.index.search(qv, n)
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for s, i in zip(srow, irow):
                if i < 0:
                    continue
                rec = self.index.record(int(i))
                url = rec.get("url") or f"{URL_SCHEME}{self.corpus_id}/{int(i)}"
                extra = {"row": int(i), "score": float(s)}
                for k in ("path", "member", "shard", "file"):
                    if k in rec:
                        extra[k] = rec[k]
                hits.append(SearchHit(url=url, caption=rec.get("caption", ""),
                                      licence=rec.get("licence"), extra=extra))
            out.append(finalize_hits(hits, n, self.name))
        return out

    # ---------------------------------------------------------------- image bytes
    @property
    def url_prefix(self) -> str:
        return f"{URL_SCHEME}{self.corpus_id}/"

    def read_image(self, url: str) -> bytes:
        """Bytes of a ``corpus://<id>/<row>`` image (raises ``EngineError`` for anything else)."""
        if not url.startswith(self.url_prefix):
            raise EngineError(self.name, f"{url!r} is not an image of this corpus")
        try:
            row = int(url[len(self.url_prefix):])
        except ValueError:
            raise EngineError(self.name, f"bad corpus url {url!r}") from None
        if not 0 <= row < self.index.count:
            raise EngineError(self.name, f"row {row} out of range")
        rec = self.index.record(row)
        cap = self.config.max_image_bytes
        if "path" in rec:
            path = self._member_path(rec["path"], row)
            try:
                with open(path, "rb") as fh:
                    data = fh.read(cap + 1)
            except OSError as exc:
                raise EngineError(self.name, f"row {row}: cannot read {path}: {exc}") from None
            return self._capped(data, row, cap)
        if "shard" in rec:
            if int(rec["size"]) > cap:
                raise ImageTooLarge(self.name, f"row {row}: {rec['size']} bytes is above engine.options."
                                               f"max_image_bytes={cap}")
            with open(rec["shard"], "rb") as fh:
                fh.seek(rec["offset"])
                return fh.read(rec["size"])
        if "file" in rec:
            return self._capped(self._parquet_bytes(rec), row, cap)
        raise EngineError(self.name, f"row {row} has no local image")

    def _member_path(self, rel: str, row: int) -> Path:
        """The file of a folder corpus's record, which must resolve inside the corpus folder
        (a ``..`` or absolute path, or a symlink pointing out, is refused)."""
        root = Path(self.config.source)
        if not root.is_dir():
            return Path(rel)
        path = (root / rel).resolve()
        if not path.is_relative_to(root.resolve()):
            raise EngineError(self.name, f"row {row}: {rel!r} resolves outside the corpus folder {root}; refused")
        return path

    def _capped(self, data: bytes, row: int, cap: int) -> bytes:
        if len(data) > cap:
            raise ImageTooLarge(self.name, f"row {row}: more than engine.options.max_image_bytes={cap} bytes")
        return data

    def _parquet_bytes(self, rec: dict) -> bytes:
        import pyarrow.parquet as pq

        key = (rec["file"], int(rec["row_group"]), rec["column"])
        with self._pq_lock:
            col = self._pq_cache.get(key)
            if col is None:
                col = pq.ParquetFile(rec["file"]).read_row_group(key[1], columns=[key[2]]).column(0)
                self._pq_cache.clear()  # keep one row group in memory
                self._pq_cache[key] = col
        value = col[int(rec["index"])].as_py()
        if isinstance(value, dict):
            value = value.get("bytes")
        if not isinstance(value, (bytes, bytearray)):
            raise EngineError(self.name, "parquet image cell holds no bytes")
        return bytes(value)

    def close(self) -> None:
        self.index.close()
