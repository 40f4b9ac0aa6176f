"""Writing a curated selection as WebDataset shards, all or nothing.

Shards (``curated-00000.tar`` ...) hold each selected image's original bytes (``<key>.<ext>``) and a
``<key>.json`` with its origin and why it was kept. Everything is written into a hidden staging folder
beside the output and moved into place only when complete, so a failed or killed run leaves no
half-written output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def sniff_ext(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


def write_webdataset(
    out_dir: Path, samples: Iterable[tuple[str, bytes, dict[str, Any]]], shard_size: int = 1000
) -> list[str]:
    """Write ``(key, image bytes, metadata)`` samples into shards under ``out_dir/shards.staging`` and
    return the shard names (moved into ``out_dir`` by :func:`publish`)."""
    stage = out_dir / "shards.staging"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    names: list[str] = []
    tf: tarfile.TarFile | None = None
    for i, (key, data, meta) in enumerate(samples):
        if i % shard_size == 0:
            if tf is not None:
                tf.close()
            names.append(f"curated-{len(names):05d}.tar")
            tf = tarfile.open(stage / names[-1], "w")  # noqa: SIM115 - one handle per shard, across samples
        assert tf is not None
        safe = f"{i:08d}"
        _add(tf, f"{safe}.{sniff_ext(data)}", data)
        _add(tf, f"{safe}.json", json.dumps({"key": key, **meta}, sort_keys=True).encode())
    if tf is not None:
        tf.close()
    return names


def publish(out_dir: Path, names: list[str], report: dict[str, Any]) -> None:
    """Move the staged shards into ``out_dir`` and write ``report.json`` last (its presence means done)."""
    stage = out_dir / "shards.staging"
    for old in out_dir.glob("curated-*.tar"):
        old.unlink()
    for name in names:
        os.replace(stage / name, out_dir / name)
    shutil.rmtree(stage, ignore_errors=True)
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    os.replace(tmp, out_dir / "report.json")
