"""Build an engine from a name and a config mapping (what a YAML ``engine:`` section holds).

    make_engine("openverse", {"licenses": ["by", "cc0"]})
    make_engine("replay", {"snapshot": "runs/x/snapshot.jsonl"})
    make_engine("flickr", {}, record_to="runs/x/snapshot.jsonl")   # recorded while it runs

Unknown names and unknown keys raise ``ConfigError`` naming the valid ones.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ie_env.config import ConfigError, from_dict
from ie_env.engines.base import SearchEngine


def _flickr(cfg: Mapping[str, Any], **kw: Any) -> SearchEngine:
    from ie_env.engines.flickr import FlickrConfig, FlickrEngine

    return FlickrEngine(from_dict(FlickrConfig, cfg))


def _openverse(cfg: Mapping[str, Any], **kw: Any) -> SearchEngine:
    from ie_env.engines.openverse import OpenverseConfig, OpenverseEngine

    return OpenverseEngine(from_dict(OpenverseConfig, cfg))


def _wikimedia(cfg: Mapping[str, Any], **kw: Any) -> SearchEngine:
    from ie_env.engines.wikimedia import WikimediaConfig, WikimediaEngine

    return WikimediaEngine(from_dict(WikimediaConfig, cfg))


def _clip(cfg: Mapping[str, Any], **kw: Any) -> SearchEngine:
    from ie_env.engines.clip_retrieval import ClipRetrievalConfig, ClipRetrievalEngine

    return ClipRetrievalEngine(from_dict(ClipRetrievalConfig, cfg))


def _local(cfg: Mapping[str, Any], embedder: Any = None, **kw: Any) -> SearchEngine:
    from ie_env.engines.local_corpus import LocalCorpusConfig, LocalCorpusEngine

    return LocalCorpusEngine(from_dict(LocalCorpusConfig, cfg), embedder=embedder)


def _replay(cfg: Mapping[str, Any], **kw: Any) -> SearchEngine:
    from ie_env.engines.replay import ReplayEngine

    allowed = {"snapshot", "engine", "on_miss"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"unknown config key {sorted(unknown)[0]}; valid keys here: {', '.join(sorted(allowed))}")
    if "snapshot" not in cfg:
        raise ConfigError("the replay engine needs `snapshot: PATH`")
    return ReplayEngine(cfg["snapshot"], engine=cfg.get("engine"), on_miss=cfg.get("on_miss", "raise"))


ENGINES: dict[str, Callable[..., SearchEngine]] = {
    "flickr": _flickr,
    "openverse": _openverse,
    "wikimedia": _wikimedia,
    "clip_retrieval": _clip,
    "local_corpus": _local,
    "replay": _replay,
}


def make_engine(name: str, config: Mapping[str, Any] | None = None, *, embedder: Any = None,
                record_to: str | None = None) -> SearchEngine:
    """An engine by name; with ``record_to`` every answer is appended to that snapshot file."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; valid engines: {', '.join(sorted(ENGINES))}")
    try:
        engine = ENGINES[name](dict(config or {}), embedder=embedder)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"engine {name}: {exc}") from exc
    if record_to:
        from ie_env.engines.replay import RecordingEngine, SnapshotRecorder

        engine = RecordingEngine(engine, SnapshotRecorder(record_to, secrets=engine.secrets()))
    return engine
