"""Content-addressed image store.

Layout under ``root``: ``images/ab/<sha256>.<ext>`` (the re-encoded RGB image; ``sha256`` is the
hash of the downloaded bytes) with ``images/ab/<sha256>.json`` beside it (url, query, engine,
licence, creator, landing page, sha256, dHash, sizes, ...), and ``manifest.jsonl``, one line per
stored image, read on open to rebuild the sha256 / URL / dHash indexes. Image and metadata files are
written atomically (temp file, rename; plus fsync when asked) before the manifest line is appended, so a killed
run leaves either a complete entry or none; a torn last manifest line is skipped on open.
Nothing is ever written outside ``root``: every path is built from a hex digest. Nothing is read
from outside it either: a manifest line whose ``path`` is not the image's own place under
``images/`` -- ``../..``, an absolute path, or a file that resolves elsewhere through a symlink -- is
refused, counted (``refused_paths``) and warned about.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ie_env.config import atomic_write_bytes
from ie_env.fetcher.dedup import DHashIndex

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(RuntimeError):
    pass


def _replace_write(path: Path, data: bytes) -> None:
    """Atomic (temp file in the same folder, then rename) without fsync."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ImageStore:
    def __init__(self, root: str | os.PathLike, fsync: bool = False) -> None:
        self.fsync = fsync
        self.root = Path(root).resolve()
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / "manifest.jsonl"
        self._lock = threading.Lock()
        self._by_sha: dict[str, dict[str, Any]] = {}
        self._by_url: dict[str, str] = {}
        self._pending: dict[str, int] = {}
        self._dirs: set[str] = set()
        self.dhashes = DHashIndex()
        self._load()
        self._manifest = open(self.manifest_path, "a", encoding="utf-8")

    def _load(self) -> None:
        self.refused_paths = 0
        if not self.manifest_path.exists():
            return
        bad = 0
        refused: list[str] = []
        with open(self.manifest_path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    sha = rec["sha256"]
                    if not _HEX64.match(sha):
                        raise ValueError("bad sha256")
                    path = self._inside(sha, rec["path"])
                    if path is None:
                        refused.append(str(rec["path"]))
                        continue
                    if not path.is_file():
                        raise ValueError("missing file")
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                self._index(rec)
        if bad:
            log.warning("image store %s: skipped %d unusable manifest lines", self.root, bad)
        self.refused_paths = len(refused)
        if refused:
            log.warning("image store %s: refused %d manifest entries whose path leads outside the store's "
                        "images/ (first: %r)", self.root, len(refused), refused[0])

    def _inside(self, sha: str, rel: Any) -> Path | None:
        """The resolved file of a manifest ``path``, or None unless it is ``images/<ab>/<sha>.<ext>``
        and resolves (through any symlinks) to a file inside ``images/``."""
        if not isinstance(rel, str) or not re.fullmatch(rf"images/{sha[:2]}/{sha}\.[a-z0-9]{{1,5}}", rel):
            return None
        path = (self.root / rel).resolve()
        return path if path.is_relative_to(self.images_dir.resolve()) else None

    def _index(self, rec: Mapping[str, Any]) -> None:
        sha = rec["sha256"]
        if sha in self._by_sha:
            return
        self._by_sha[sha] = dict(rec)
        if rec.get("url"):
            self._by_url[rec["url"]] = sha
        if rec.get("dhash"):
            self.dhashes.add(int(rec["dhash"], 16), sha)

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self._by_sha)

    def path_for(self, sha256: str, ext: str) -> Path:
        if not _HEX64.match(sha256) or not re.fullmatch(r"[a-z0-9]{1,5}", ext):
            raise StoreError(f"bad key {sha256!r}.{ext!r}")
        return self.images_dir / sha256[:2] / f"{sha256}.{ext}"

    def get(self, sha256: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._by_sha.get(sha256)
            return dict(rec) if rec else None

    def lookup_url(self, url: str) -> dict[str, Any] | None:
        with self._lock:
            sha = self._by_url.get(url)
            return dict(self._by_sha[sha]) if sha else None

    def abspath(self, rec: Mapping[str, Any]) -> Path:
        return self.root / rec["path"]

    # ---------------------------------------------------------------- writing
    def reserve(self, sha256: str, dhash: int | None = None,
                max_hamming: int = -1) -> tuple[str, dict[str, Any] | None]:
        """Claim ``sha256`` for writing, atomically with the duplicate checks.

        Returns ``("new", None)`` when claimed, ``("sha256", entry)`` for an exact copy, or
        ``("dhash", entry)`` for an image whose dHash is within ``max_hamming`` of a stored (or
        being-stored) one.
        """
        with self._lock:
            if sha256 in self._by_sha:
                return "sha256", dict(self._by_sha[sha256])
            if sha256 in self._pending:
                return "sha256", {"sha256": sha256, "pending": True}
            if dhash is not None and max_hamming >= 0:
                dist, key = self.dhashes.nearest(dhash)
                if key is not None and dist <= max_hamming:
                    return "dhash", {**self._by_sha.get(key, {"sha256": key}), "distance": dist}
                for other, h in self._pending.items():
                    if h >= 0 and (h ^ dhash).bit_count() <= max_hamming:
                        return "dhash", {"sha256": other, "pending": True}
            self._pending[sha256] = dhash if dhash is not None else -1
            return "new", None

    def release(self, sha256: str) -> None:
        with self._lock:
            self._pending.pop(sha256, None)

    def put(self, sha256: str, data: bytes, ext: str, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Write a reserved image and its metadata; returns the manifest record."""
        path = self.path_for(sha256, ext)
        if path.parent.name not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent.name)
        rel = path.relative_to(self.root).as_posix()
        rec = {**meta, "sha256": sha256, "path": rel}
        try:
            meta_bytes = json.dumps(rec, ensure_ascii=False, indent=1).encode()
            if self.fsync:
                atomic_write_bytes(path, data)
                atomic_write_bytes(path.with_suffix(".json"), meta_bytes)
            else:
                _replace_write(path, data)
                _replace_write(path.with_suffix(".json"), meta_bytes)
        except OSError as exc:
            self.release(sha256)
            raise StoreError(f"cannot write {rel}: {exc}") from exc
        line = {k: rec.get(k) for k in ("sha256", "path", "url", "dhash")}
        with self._lock:
            self._manifest.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._manifest.flush()
            self._pending.pop(sha256, None)
            self._index(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            if not self._manifest.closed:
                self._manifest.flush()
                os.fsync(self._manifest.fileno())
                self._manifest.close()
