"""Record every engine answer of a run; replay a recorded snapshot offline and deterministically.

A snapshot is JSON Lines: a header, then ``search`` records (engine, query, n, hits, the
credential-free request trace, or the error the engine raised) and ``image`` records (what the
fetcher got for a URL: status, reason, sha256, dHash, size). ``SnapshotRecorder`` appends to one
while a run goes (``RecordingEngine`` wraps any engine); ``Snapshot.load`` reads ``.jsonl`` or
``.jsonl.gz``; ``Snapshot.export`` writes a canonical, byte-for-byte reproducible copy to share;
``ReplayEngine`` serves it with no network. Two policies replayed on one snapshot see the same web.

Credentials never enter a snapshot: request URLs and parameters are redacted by name
(``api_key``, ``token``, ``client_secret``, ...) and every secret value an engine holds is scrubbed
from each line before it is written.

A query the snapshot lacks is a miss: counted in ``stats["misses"]`` and listed in
``missed_queries``, and raised as ``SnapshotMiss`` (or answered with no hits when
``on_miss="empty"``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

from ie_env.config import atomic_write_bytes
from ie_env.engines.base import (ERROR_KINDS, EngineError, SearchEngine, SearchHit, scrub)

FORMAT = "ie-env-snapshot"
VERSION = 1


class SnapshotMiss(EngineError):
    """The snapshot holds no answer for this (engine, query)."""

    kind = "snapshot_miss"


class SnapshotError(ValueError):
    """A snapshot file that cannot be read."""


def query_key(query: str) -> str:
    """Queries match after whitespace is collapsed (case is kept)."""
    return " ".join(query.split())


def _json_secrets(secrets: Iterable[str]) -> list[str]:
    out = []
    for s in secrets:
        if s and len(s) >= 4:
            out.append(s)
            esc = json.dumps(s)[1:-1]
            if esc != s:
                out.append(esc)
    return out


class SnapshotRecorder:
    """Append-only, thread-safe recorder of engine answers and image metadata."""

    def __init__(self, path: str | os.PathLike, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets = set(secrets)
        self._lock = threading.Lock()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", encoding="utf-8")
        if new:
            self._write({"kind": "header", "format": FORMAT, "version": VERSION,
                         "created": round(time.time(), 3)})

    def add_secrets(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets.update(s for s in secrets if s)

    def _write(self, record: Mapping[str, Any], extra_secrets: Iterable[str] = ()) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        line = scrub(line, _json_secrets(list(self._secrets) + list(extra_secrets)))
        self._fh.write(line + "\n")
        self._fh.flush()

    def record_search(self, engine: str, query: str, n: int, hits: list[SearchHit] | None,
                      trace: list[dict] | None = None, error: EngineError | None = None,
                      secrets: Iterable[str] = ()) -> None:
        rec: dict[str, Any] = {"kind": "search", "engine": engine, "query": query, "n": n,
                               "t": round(time.time(), 3), "trace": trace or []}
        if error is not None:
            rec["error"] = {"type": getattr(error, "kind", "engine_error"),
                            "message": getattr(error, "message", str(error))}
            rec["hits"] = []
        else:
            rec["hits"] = [h.to_dict() for h in (hits or [])]
        with self._lock:
            self._write(rec, secrets)

    def record_image(self, meta: Mapping[str, Any]) -> None:
        """Image metadata from the fetcher (url, status, reason, sha256, dhash, ...)."""
        if not meta.get("url"):
            return
        rec = {"kind": "image", **{k: v for k, v in meta.items() if k != "kind"}}
        with self._lock:
            self._write(rec)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> "SnapshotRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RecordingEngine(SearchEngine):
    """Wraps an engine; every answer (or error) goes to the recorder, then back to the caller."""

    def __init__(self, inner: SearchEngine, recorder: SnapshotRecorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self.name = inner.name

    def search(self, query: str, n: int) -> list[SearchHit]:
        try:
            hits = self.inner.search(query, n)
        except EngineError as exc:
            self.recorder.record_search(self.name, query, n, None, self.inner.last_trace(), exc,
                                        secrets=self.inner.secrets())
            raise
        self.recorder.record_search(self.name, query, n, hits, self.inner.last_trace(),
                                    secrets=self.inner.secrets())
        return hits

    def secrets(self) -> list[str]:
        return self.inner.secrets()

    def close(self) -> None:
        self.inner.close()


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, "r", encoding="utf-8")


class Snapshot:
    """Recorded engine answers and image metadata, indexed for replay."""

    def __init__(self) -> None:
        self.searches: dict[tuple[str, str], dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0

    # ---------------------------------------------------------------- building
    def add(self, rec: Mapping[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "search":
            if not isinstance(rec.get("engine"), str) or not isinstance(rec.get("query"), str):
                raise SnapshotError("search record needs string engine and query")
            if not isinstance(rec.get("hits", []), list):
                raise SnapshotError("search record hits must be a list")
            for h in rec.get("hits", []):
                SearchHit.from_dict(h)  # validates
            key = (rec["engine"], query_key(rec["query"]))
            old = self.searches.get(key)
            # Keep the widest answer; among equals the latest. Errors never replace answers.
            if old is None or (("error" not in rec) and ("error" in old or int(rec.get("n", 0)) >= int(old.get("n", 0)))):
                self.searches[key] = dict(rec)
        elif kind == "image":
            if isinstance(rec.get("url"), str):
                self.images[rec["url"]] = dict(rec)
        elif kind == "header":
            if rec.get("format") != FORMAT:
                raise SnapshotError(f"not an {FORMAT} file (format={rec.get('format')!r})")
            if int(rec.get("version", 0)) > VERSION:
                raise SnapshotError(f"snapshot version {rec.get('version')} is newer than {VERSION}")
        else:
            raise SnapshotError(f"unknown record kind {kind!r}")

    @classmethod
    def load(cls, path: str | os.PathLike, strict: bool = False) -> "Snapshot":
        """Read a snapshot (``.jsonl`` or gzip). A torn last line (a killed run) is skipped; other
        bad lines raise ``SnapshotError`` when ``strict`` and are skipped and counted otherwise."""
        p = Path(path)
        if not p.is_file():
            raise SnapshotError(f"no snapshot at {p}")
        snap = cls()
        try:
            with _open_text(p) as fh:
                lines = fh.read().splitlines()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"cannot read snapshot {p}: {exc}") from exc
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise SnapshotError("record is not an object")
                snap.add(rec)
            except (ValueError, TypeError) as exc:
                if strict and lineno != len(lines):
                    raise SnapshotError(f"{p}:{lineno}: {exc}") from exc
                snap.skipped_lines += 1
        return snap

    def merge(self, other: "Snapshot") -> "Snapshot":
        for rec in other.records():
            self.add(rec)
        return self

    # ---------------------------------------------------------------- reading
    def engines(self) -> list[str]:
        return sorted({e for e, _ in self.searches})

    def queries(self, engine: str | None = None) -> list[str]:
        return sorted(q for e, q in self.searches if engine is None or e == engine)

    def answer(self, engine: str, query: str) -> dict[str, Any] | None:
        return self.searches.get((engine, query_key(query)))

    def records(self) -> Iterator[dict[str, Any]]:
        for key in sorted(self.searches):
            yield self.searches[key]
        for url in sorted(self.images):
            yield self.images[url]

    def __len__(self) -> int:
        return len(self.searches)

    # ---------------------------------------------------------------- export
    def to_bytes(self) -> bytes:
        """Canonical JSON Lines: same content -> same bytes."""
        out = [json.dumps({"kind": "header", "format": FORMAT, "version": VERSION},
                          sort_keys=True)]
        out += [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in self.records()]
        return ("\n".join(out) + "\n").encode("utf-8")

    def export(self, path: str | os.PathLike) -> Path:
        """Write the snapshot to share (gzip when the name ends in ``.gz``), atomically."""
        p = Path(path)
        data = self.to_bytes()
        if p.name.endswith(".gz"):
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
                gz.write(data)
            data = buf.getvalue()
        atomic_write_bytes(p, data)
        return p


class ReplayEngine(SearchEngine):
    """Serve a snapshot: no network, same answers every time."""

    name = "replay"

    def __init__(self, snapshot: Snapshot | str | os.PathLike, engine: str | None = None,
                 on_miss: Literal["raise", "empty"] = "raise") -> None:
        self.snapshot = snapshot if isinstance(snapshot, Snapshot) else Snapshot.load(snapshot)
        engines = self.snapshot.engines()
        if engine is None:
            if len(engines) > 1:
                raise ValueError(f"snapshot holds several engines {engines}; pass engine=")
            engine = engines[0] if engines else ""
        self.source = engine
        if on_miss not in ("raise", "empty"):
            raise ValueError("on_miss must be 'raise' or 'empty'")
        self.on_miss = on_miss
        self.stats = {"served": 0, "misses": 0, "partial": 0, "errors": 0}
        self.missed_queries: list[str] = []
        self._lock = threading.Lock()

    def search(self, query: str, n: int) -> list[SearchHit]:
        self.check_args(query, n)
        rec = self.snapshot.answer(self.source, query)
        if rec is None:
            with self._lock:
                self.stats["misses"] += 1
                self.missed_queries.append(query)
            if self.on_miss == "empty":
                return []
            raise SnapshotMiss(self.name, f"query {query!r} is not in the snapshot (engine {self.source!r})")
        if "error" in rec:
            with self._lock:
                self.stats["errors"] += 1
            err = rec["error"]
            cls = ERROR_KINDS.get(err.get("type"), EngineError)
            raise cls(rec["engine"], f"(replayed) {err.get('message', '')}")
        hits = [SearchHit.from_dict(h) for h in rec["hits"][:n]]
        with self._lock:
            self.stats["served"] += 1
            if n > int(rec.get("n", 0)) and len(rec["hits"]) >= int(rec.get("n", 0)):
                self.stats["partial"] += 1  # recorded with a smaller n: the rest is unknown
        return hits
