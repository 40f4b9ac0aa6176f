"""Query text -> RGB images from a real search engine: search, fetch, decode, and keep a paper trail.

``EngineConfig`` is the ``engine:`` section of the env config. With ``name: embedded`` (default) the
env renders images from its embedded world and none of this runs. With any other engine,
``WebSearch.search_images(text, n)`` asks the engine for ``n`` hits, downloads them with the hardened
:class:`~ie_env.fetcher.Fetcher` (concurrently, into a content-addressed store, with the leakage guard
against the target's test images) and decodes each stored image to ``(S, S, 3)`` uint8, resized and
centre-cropped like the target images.

Every engine answer (or error) and every image outcome is recorded to ``<root>/snapshot.jsonl``
(``root`` defaults to ``<store_dir>/web``, i.e. a run's ``downloads/web``). A run is reproducible
offline: ``name: replay`` with ``snapshot:`` pointing at that file serves the recorded answers and
resolves each hit through its recorded outcome to the stored image (no network at all), so the same
queries give the same images and rewards. Within a run each query text is searched once and each URL
fetched once (the first outcome stands), which is what makes the record exact.

A hit whose download fails (dead URL, corrupt image, refused address, target leak, ...) is counted by
reason, never raised; exact or near copies of stored images are kept (they are what the engine
returned) and counted as ``duplicates``. A failed search gives zero images (``on_error: skip``), except
rejected credentials, which always raise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np
from PIL import Image

from ie_env.config import ConfigError, from_dict
from ie_env.engines.base import AuthError, EngineError, SearchHit
from ie_env.engines.registry import ENGINES, make_engine
from ie_env.engines.replay import Snapshot, SnapshotError, SnapshotMiss, query_key
from ie_env.fetcher import Fetcher, FetchConfig, ImageStore, LeakageGuard, Reason
from ie_env.fetcher.decode import dhash
from ie_env.targets import resize_center_crop

log = logging.getLogger(__name__)

ENGINE_NAMES = ("embedded", *sorted(ENGINES))
SNAPSHOT_NAME = "snapshot.jsonl"
TEMP_PREFIX = "ie-env-web-"  # the temp root of a run without a store (deleted when the search is closed)
_USABLE = (Reason.OK, Reason.DUPLICATE)


@dataclass
class EngineConfig:
    """Where a step's images come from (``embedded`` = the env's own world)."""

    name: str = "embedded"  # embedded | flickr | openverse | wikimedia | clip_retrieval | local_corpus | replay
    #: The live engine's settings: fields of FlickrConfig, OpenverseConfig, WikimediaConfig,
    #: ClipRetrievalConfig or LocalCorpusConfig (ignored by replay).
    options: dict[str, Any] = field(default_factory=dict)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    #: Image store and snapshot.jsonl; "" = <store_dir>/web (a run's downloads/web), else a temp folder.
    #: For replay, "" = the snapshot's folder (where the recorded run stored its images).
    root: str = ""
    record: bool = True  # record engine answers and image outcomes to <root>/snapshot.jsonl
    snapshot: str = ""  # replay: a recorded snapshot.jsonl
    source: str = ""  # replay: which recorded engine, when the snapshot holds several
    on_error: Literal["skip", "raise"] = "skip"  # a failed search: zero images (counted) or raise

    def validate(self) -> None:
        if self.name not in ENGINE_NAMES:
            raise ConfigError(f"unknown engine {self.name!r}; valid engines: {', '.join(ENGINE_NAMES)}")
        if self.on_error not in ("skip", "raise"):
            raise ConfigError(f"engine.on_error must be 'skip' or 'raise', got {self.on_error!r}")


def _options_class(name: str) -> type:
    if name == "flickr":
        from ie_env.engines.flickr import FlickrConfig as cls
    elif name == "openverse":
        from ie_env.engines.openverse import OpenverseConfig as cls
    elif name == "wikimedia":
        from ie_env.engines.wikimedia import WikimediaConfig as cls
    elif name == "clip_retrieval":
        from ie_env.engines.clip_retrieval import ClipRetrievalConfig as cls
    elif name == "local_corpus":
        from ie_env.engines.local_corpus import LocalCorpusConfig as cls
    else:  # pragma: no cover - guarded by EngineConfig.validate
        raise ConfigError(f"engine {name!r} takes no options")
    return cls


def check_engine(cfg: EngineConfig) -> None:
    """Checks that need no network, run before any training: options parse, credentials are set,
    files exist. Raises ``ConfigError`` with what to do."""
    cfg.validate()
    if cfg.name == "embedded":
        return
    if cfg.name == "replay":
        if not cfg.snapshot:
            raise ConfigError("engine replay needs engine.snapshot: the snapshot.jsonl of a recorded run "
                              "(<logdir>/downloads/web/snapshot.jsonl)")
        if not Path(cfg.snapshot).is_file():
            raise ConfigError(f"engine.snapshot {cfg.snapshot} does not exist")
        return
    try:
        opts = from_dict(_options_class(cfg.name), cfg.options, prefix="engine.options.")
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"engine {cfg.name}: {exc}") from exc
    if cfg.name == "flickr" and not os.environ.get(opts.api_key_env, "").strip():
        raise ConfigError(f"engine flickr needs an API key: set ${opts.api_key_env} "
                          "(or name another variable in engine.options.api_key_env); nothing was run")
    if cfg.name == "openverse":
        have = [bool(os.environ.get(v, "").strip()) for v in (opts.client_id_env, opts.client_secret_env)]
        if any(have) and not all(have):
            raise ConfigError(f"engine openverse: set both ${opts.client_id_env} and ${opts.client_secret_env} "
                              "(or neither, for anonymous use at 20 results a page)")
    if cfg.name == "local_corpus":
        src = opts.source
        if not any(ch in src for ch in "*?[") and not Path(src).exists():
            raise ConfigError(f"engine local_corpus: source {src} does not exist")


@dataclass
class WebImages:
    """One query's decoded images (hit order, failures left out) and how the fetch went."""

    images: np.ndarray  # (k, S, S, 3) uint8
    stats: dict[str, Any]


class WebSearch:
    """``search_images(text, n)`` through one engine, the fetcher and the run's image store."""

    def __init__(self, cfg: EngineConfig, image_size: int, store_dir: str | None = None,
                 leak_images: Callable[[], np.ndarray] | None = None) -> None:
        check_engine(cfg)
        self.cfg = cfg
        self.image_size = image_size
        self.replay = cfg.name == "replay"
        self.root = self._root(cfg, store_dir)
        # A temp root (no store_dir or engine.root) goes when this object is closed or collected.
        self._cleanup = (weakref.finalize(self, shutil.rmtree, self.root, True)
                         if self.root.name.startswith(TEMP_PREFIX) and not (cfg.root or store_dir) else None)
        self._leak_images = leak_images
        self._answers: dict[tuple[str, int], tuple[list[SearchHit], str]] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}  # url -> first fetch outcome of this run
        self._fetcher: Fetcher | None = None
        self._seed: Snapshot | None = None
        if self.replay:
            opts = {"snapshot": cfg.snapshot, **({"engine": cfg.source} if cfg.source else {})}
            self.engine = make_engine("replay", opts)
            self._outcomes = dict(self.engine.snapshot.images)
            self.snapshot_path: Path | None = None
        else:
            self.snapshot_path = self.root / SNAPSHOT_NAME if cfg.record else None
            if self.snapshot_path is not None and self.snapshot_path.is_file():
                # Recording into an existing snapshot (a resumed run, or a shared root): keep its web.
                try:
                    self._seed = Snapshot.load(self.snapshot_path)
                    self._outcomes = dict(self._seed.images)
                except SnapshotError as exc:
                    log.warning("web search: cannot read %s (%s); recording afresh", self.snapshot_path, exc)
            record_to = str(self.snapshot_path) if self.snapshot_path is not None else None
            self.engine = make_engine(cfg.name, cfg.options, record_to=record_to)
        self.engine_name = cfg.name if not self.replay else self.engine.source
        self.store = ImageStore(self.root, fsync=cfg.fetch.fsync)

    @staticmethod
    def _root(cfg: EngineConfig, store_dir: str | None) -> Path:
        if cfg.root:
            return Path(cfg.root)
        if cfg.name == "replay":
            return Path(cfg.snapshot).resolve().parent
        if store_dir:
            return Path(store_dir) / "web"
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        log.warning("web search: no store_dir or engine.root; images and snapshot go to %s (deleted on close)", tmp)
        return tmp

    # ---------------------------------------------------------------- plumbing
    def _get_fetcher(self) -> Fetcher:
        if self._fetcher is None:
            fcfg = self.cfg.fetch
            leakage = None
            if fcfg.leak_hamming >= 0 and self._leak_images is not None:
                imgs = self._leak_images()
                leakage = LeakageGuard([dhash(Image.fromarray(np.asarray(x))) for x in imgs], fcfg.leak_hamming)
            recorder = getattr(self.engine, "recorder", None)
            self._fetcher = Fetcher(config=fcfg, store=self.store, leakage=leakage, recorder=recorder)
            inner = getattr(self.engine, "inner", self.engine)
            if hasattr(inner, "read_image") and hasattr(inner, "url_prefix"):  # local corpus files
                self._fetcher.register_reader(inner.url_prefix, inner.read_image)
        return self._fetcher

    def _search(self, text: str, n: int) -> tuple[list[SearchHit], str]:
        key = (query_key(text), n)
        hit = self._answers.get(key)
        if hit is not None:
            return hit
        rec = self._seed.answer(self.engine_name, text) if self._seed is not None else None
        if rec is not None and "error" in rec:  # recorded earlier in this run: the same error again
            hits, error = [], f"{rec['error'].get('type', 'engine_error')}: {rec['error'].get('message', '')}"
        elif rec is not None and int(rec.get("n", 0)) >= n:
            hits, error = [SearchHit.from_dict(h) for h in rec["hits"][:n]], ""
        else:
            try:
                hits, error = self.engine.search(text, n), ""
            except AuthError:
                raise
            except EngineError as exc:
                if self.cfg.on_error == "raise":
                    raise
                log.warning("web search: %s", exc)
                message = exc.message.removeprefix("(replayed) ")  # a replay reports the recorded error
                hits, error = [], f"{getattr(exc, 'kind', 'engine_error')}: {message}"
        self._answers[key] = (hits, error)  # one answer per query text and run: the record stays exact
        return hits, error

    def _decode(self, outcome: dict[str, Any]) -> tuple[np.ndarray | None, str]:
        reason = str(outcome.get("reason", "unknown"))
        if reason not in _USABLE:
            return None, reason
        sha = outcome.get("duplicate_of") or outcome.get("sha256")
        rec = self.store.get(sha) if isinstance(sha, str) else None
        if rec is None:
            return None, "missing_from_store"
        try:
            with Image.open(self.store.abspath(rec)) as img:
                return resize_center_crop(img, self.image_size), reason
        except Exception:  # a damaged store file: count it, never crash the step
            return None, "unreadable"

    # ---------------------------------------------------------------- public API
    def search_images(self, text: str, n: int) -> WebImages:
        """Up to ``n`` decoded images for the query ``text`` and the counts of what happened."""
        hits, error = self._search(text, n)
        todo = [h for h in hits if h.url not in self._outcomes]
        if todo and not self.replay:
            for h, res in zip(todo, self._get_fetcher().fetch_many(todo, query=text)):
                self._outcomes[h.url] = res.to_dict()
        images: list[np.ndarray] = []
        reasons: Counter[str] = Counter()
        for h in hits:
            outcome = self._outcomes.get(h.url, {"reason": "not_recorded"})
            img, reason = self._decode(outcome)
            reasons[reason] += 1
            if img is not None:
                images.append(img)
        failed = {k: v for k, v in sorted(reasons.items()) if k not in _USABLE}
        stats = {"hits": len(hits), "images": len(images), "failed": sum(failed.values()),
                 "duplicates": reasons.get(Reason.DUPLICATE, 0), "reasons": failed, "engine_error": error}
        s = self.image_size
        arr = np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8)
        return WebImages(arr, stats)

    def close(self) -> None:
        """Finish downloads, close the store, the engine and the recorder."""
        if self._fetcher is not None:
            self._fetcher.close()  # closes the store too
            self._fetcher = None
        else:
            self.store.close()
        self.engine.close()
        recorder = getattr(self.engine, "recorder", None)
        if recorder is not None:
            recorder.close()
        if self._cleanup is not None:
            self._cleanup()


#: Outcomes of a hit whose image could not be served: no usable record, not in the store (or refused
#: there for a path outside it), or a damaged store file.
MISSING_IMAGE_REASONS = ("not_recorded", "missing_from_store", "unreadable")


def miss_counts(fetch_stats: Iterable[Mapping[str, Any]], refused_store_entries: int = 0) -> dict[str, Any]:
    """What a replay could not serve, over its queries' fetch stats (one per distinct query):
    queries the snapshot does not hold, hit images it could not serve (by reason), and store
    manifest entries refused for a path outside the store."""
    queries = missing_queries = 0
    images: Counter[str] = Counter()
    for st in fetch_stats:
        queries += 1
        if str(st.get("engine_error", "")).startswith(SnapshotMiss.kind):
            missing_queries += 1
        for reason in MISSING_IMAGE_REASONS:
            images[reason] += int(st.get("reasons", {}).get(reason, 0))
    return {"queries": queries, "queries_not_in_snapshot": missing_queries,
            "images_missing": sum(images.values()), "images_missing_by_reason": dict(sorted(images.items())),
            "store_entries_refused": int(refused_store_entries)}


def encode_stats(stats: dict[str, Any]) -> np.ndarray:
    """Fetch counts as a 0-d string array (kept beside a query's images in the query store)."""
    return np.array(json.dumps(stats, sort_keys=True))


def decode_stats(value: Any) -> dict[str, Any]:
    return json.loads(str(value))
