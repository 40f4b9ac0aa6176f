"""The run directory as a small database with one writer: its lock, query log and checkpoints.

* :class:`RunLock`: an exclusive ``fcntl.flock`` on ``run.lock`` held for a run's lifetime (the OS
  drops it when the process dies, kill -9 included); a second writer is refused naming the holder.
* :class:`QueryLog`: ``queries.jsonl``, append-only and fsynced. Reading keeps every intact record:
  a damaged line inside the file is moved to ``queries.quarantine.jsonl`` and reported; only a torn
  last line (a kill mid-write) is cut.
* :class:`Checkpoints`: ``iter_XXXX.pt`` files of plain data (``torch.load(weights_only=True)``),
  each verified against its ``.sha256`` digest; a file without one, or one that holds pickled
  objects, is refused unless the user trusts it (``--trust-pickle``).

Every refusal is a :class:`RunDirError` whose message says what is wrong and what to do; nothing
in the directory is deleted or overwritten to recover.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from ie_env.config import atomic_write_bytes, atomic_write_text
from ie_env.plain_state import UnsafeFileError, load_torch_bytes, save_torch_bytes

CHECKPOINT_FORMAT = "ie-explore-checkpoint/2"
LOCK_NAME = "run.lock"
QUARANTINE_NAME = "queries.quarantine.jsonl"


class RunDirError(ValueError):
    """The run directory cannot be used as asked (in use, damaged, another config, unwritable)."""


def config_digest(resolved: dict[str, Any]) -> str:
    """sha256 of a resolved config in canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def start_over_hint(run_dir: Path) -> str:
    return f"to start over, delete {run_dir} (or move it away) and run without --resume, or choose another --logdir"


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive advisory lock on ``<run_dir>/run.lock``; its file names the holder's pid and
    the digest of the config it runs."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self.read_meta().get("pid", "unknown")
            raise RunDirError(
                f"{self.path.parent} is in use by another ie-explore process (pid {holder}); a run directory "
                "has one writer: wait for it to finish or stop it, or choose another --logdir"
            ) from None
        self.fd = fd
        return self

    def read_meta(self) -> dict[str, Any]:
        """What the file says (``pid``, ``config_sha256``); ``{}`` if empty or unreadable."""
        try:
            meta = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the file's content (the lock stays on the same inode)."""
        assert self.fd is not None, "write_meta needs the lock"
        data = json.dumps(meta).encode() + b"\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


# ---------------------------------------------------------------------------------------------
# queries.jsonl
# ---------------------------------------------------------------------------------------------
class QueryLog:
    """Append-only ``queries.jsonl``: every line flushed and fsynced before the next query."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.quarantine_path = self.path.with_name(QUARANTINE_NAME)

    def read(self) -> list[dict[str, Any]]:
        """Every intact record, in order. A damaged line inside the file (not JSON, or not a record)
        is moved to ``queries.quarantine.jsonl`` with a warning; a torn last line (no newline: the
        process died while writing it) is cut."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        records: list[dict[str, Any]] = []
        damaged: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            rec = _parse(line)
            if rec is None:
                if line.strip():
                    after = records[-1].get("step") if records else None
                    damaged.append({"line": number, "after_step": after,
                                    "raw": line.decode("utf-8", "surrogateescape")})
                continue
            records.append(rec)
        if tail:
            rec = _parse(tail)
            if rec is not None:  # complete but for its newline: keep it
                records.append(rec)
            else:
                print(f"[ie-explore] note: cut the torn last line of {self.path.name} ({len(tail)} bytes, "
                      "a write the process did not finish)", file=sys.stderr)
        if damaged:
            self.quarantine(damaged, "damaged")
        if damaged or tail:
            self.rewrite(records)
        return records

    def quarantine(self, entries: list[dict[str, Any]], why: str) -> None:
        """Append ``entries`` to the quarantine file (fsynced) and warn."""
        with open(self.quarantine_path, "a") as fh:
            fh.writelines(json.dumps({"reason": why, **e}) + "\n" for e in entries)
            fh.flush()
            os.fsync(fh.fileno())
        print(f"[ie-explore] warning: {len(entries)} {why} line(s) of {self.path.name} moved to "
              f"{self.quarantine_path.name} (kept there as they were; the other records are intact)",
              file=sys.stderr)

    def quarantined(self) -> int:
        """How many lines the quarantine file holds."""
        try:
            return self.quarantine_path.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("step"), int) else None


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
class Checkpoints:
    """``iter_XXXX.pt`` files of plain data written atomically, each with an ``iter_XXXX.pt.sha256``.

    The digest is written (atomically) before its checkpoint, so every checkpoint this class wrote is
    verified on load; a truncated or corrupt one (torch.load reads bit-flipped tensor data silently)
    is reported on stderr and the previous one is used. A checkpoint without a digest, or one that
    holds pickled objects, is refused (:class:`RunDirError`) unless ``trust_pickle``; so is a
    directory whose checkpoints are all damaged. ``IE_EXPLORE_KILL_AT=checkpoint_write:<iteration>``
    is a test hook: the process SIGKILLs itself halfway through writing that checkpoint.
    """

    def __init__(self, root: Path, keep: int, trust_pickle: bool = False) -> None:
        self.root = Path(root)
        self.keep = keep
        self.trust_pickle = trust_pickle

    def clean(self) -> None:
        """Create the folder and remove the temp files of writes a kill interrupted (the writer
        only, under the run's lock: a reader must not touch a running writer's temp file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".iter_*"):
            tmp.unlink(missing_ok=True)

    @staticmethod
    def digest_path(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def files(self) -> list[Path]:
        return sorted(self.root.glob("iter_*.pt"))

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        data = save_torch_bytes({"format": CHECKPOINT_FORMAT, **state})
        path = self.root / f"iter_{iteration:04d}.pt"
        digest = self.digest_path(path)
        try:
            atomic_write_text(digest, hashlib.sha256(data).hexdigest() + "\n")
            if os.environ.get("IE_EXPLORE_KILL_AT") == f"checkpoint_write:{iteration}":
                _die_mid_write(path, data)
            atomic_write_bytes(path, data)
        except OSError as exc:
            if not path.exists():
                digest.unlink(missing_ok=True)
            kept = [p.name for p in self.files()]
            raise RunDirError(
                f"could not write checkpoint {path.name} ({exc.strerror or exc}); the run stopped there. "
                f"Nothing written before is lost (queries.jsonl; checkpoints {', '.join(kept) or 'none'}): "
                "fix the cause (e.g. free disk space) and continue with --resume"
            ) from exc
        files = self.files()
        for old in files[: -self.keep] if self.keep > 0 else []:
            old.unlink(missing_ok=True)
            self.digest_path(old).unlink(missing_ok=True)

    def load(self, path: Path) -> dict[str, Any]:
        """One checkpoint, verified. ``RunDirError`` for a file not to be trusted; any other
        exception for a damaged one."""
        digest = self.digest_path(path)
        data = path.read_bytes()
        if digest.exists():
            want = digest.read_text().strip()
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ValueError(f"sha256 {got[:12]}... does not match its digest {want[:12]}...")
        elif not self.trust_pickle:
            raise RunDirError(
                f"checkpoint {path} has no {digest.name} beside it: ie-explore did not write it. Remove it if "
                "you did not put it there; pass --trust-pickle only if you wrote it yourself"
            )
        try:
            state = load_torch_bytes(data, trust_pickle=self.trust_pickle, name=f"checkpoint {path}")
        except UnsafeFileError as exc:
            raise RunDirError(f"{exc} (or remove the file if you did not put it there)") from None
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a checkpoint")
        return state

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that verifies; None if there is none at all. A damaged one is
        reported and the previous one used; if all are damaged, :class:`RunDirError`."""
        damaged: list[str] = []
        for path in reversed(self.files()):
            try:
                state = self.load(path)
            except RunDirError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated / corrupt (any reader error): try the previous one
                damaged.append(f"{path.name} ({exc})")
                continue
            for d in damaged:
                print(f"[ie-explore] warning: checkpoint {d.split(' ', 1)[0]} is corrupt or truncated "
                      f"{d.split(' ', 1)[1]}; resuming from the previous one, {path.name}", file=sys.stderr)
            return state
        if damaged:
            raise RunDirError(
                f"refusing to resume {self.root.parent}: every checkpoint is damaged: {'; '.join(damaged)}. "
                f"queries.jsonl is kept as it is; {start_over_hint(self.root.parent)}"
            )
        return None


def _die_mid_write(path: Path, data: bytes) -> None:
    """Leave what a kill halfway through ``atomic_write_bytes(path, data)`` leaves, then SIGKILL."""
    fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
