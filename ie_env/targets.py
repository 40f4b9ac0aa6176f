"""Labeled target datasets: the embedded world's, an image folder, or a torchvision dataset.

:func:`load_target` returns a :class:`TargetSet`: uint8 ``(N, S, S, 3)`` train / test images (resized
so the shorter side is ``S``, then centre-cropped), integer labels, class names and the number of
files that could not be read. An ImageFolder root holds either ``train/`` and ``test/`` subfolders of
class folders, or class folders directly (split per class by a seeded ``test_fraction``). Unreadable
or non-image files are skipped and counted, never fatal; an empty folder or class is a clear error.
Images above the fetcher's pixel cap (``engine.fetch.max_pixels``, 64 MP by default) are refused from
their header, with a warning naming the file, and counted with the skipped files; decoding runs under
the fetcher's process-wide budget of decoded bytes.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ie_env.bounds import DEFAULT_DECODE_BUDGET, DEFAULT_MAX_PIXELS
from ie_env.config import ConfigError

log = logging.getLogger(__name__)

TORCHVISION_DATASETS = ("flowers102", "oxford_pets", "food101", "dtd", "fgvc_aircraft", "cifar10", "cifar100")


class TargetError(ConfigError):
    """A target dataset that cannot be loaded (missing, empty, or not downloadable)."""


@dataclass
class TargetConfig:
    """Where the labeled target set comes from (default: the embedded world's own)."""

    kind: Literal["embedded", "imagefolder", "torchvision"] = "embedded"
    root: str = ""  # imagefolder: the folder; torchvision: the dataset root
    name: str = ""  # torchvision: one of TORCHVISION_DATASETS
    train_split: str = "train"  # imagefolder subfolder (used when both split folders exist)
    test_split: str = "test"
    test_fraction: float = 0.3  # imagefolder without split folders: seeded per-class test share
    image_size: int | None = None  # None = the env's world.image_size
    max_per_class: int | None = None  # cap per class and split (None = all)
    download: bool = False  # torchvision: fetch when absent (needs network)
    seed: int = 0

    def validate(self) -> None:
        if self.kind not in ("embedded", "imagefolder", "torchvision"):
            raise ConfigError(f"target.kind must be embedded, imagefolder or torchvision, got {self.kind!r}")
        if self.kind != "embedded" and not self.root:
            raise ConfigError(f"target.root is required for target.kind={self.kind}")
        if self.kind == "torchvision" and self.name not in TORCHVISION_DATASETS:
            raise ConfigError(f"target.name {self.name!r} is not supported; valid: {', '.join(TORCHVISION_DATASETS)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"target.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"target.image_size must be >= 8, got {self.image_size}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"target.max_per_class must be >= 1, got {self.max_per_class}")

    def __post_init__(self) -> None:
        self.validate()


@dataclass
class TargetSet:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    skipped: int = 0


# --- images -----------------------------------------------------------------------------------
def resize_center_crop(img: Any, size: int) -> np.ndarray:
    """A PIL image as uint8 ``(size, size, 3)``: shorter side resized to ``size``, centre crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _read_image(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The decoded image, or None when the file is not a readable image or is above ``max_pixels``."""
    from PIL import Image

    from ie_env.fetcher.budget import shared_budget
    from ie_env.fetcher.decode import decode_cost

    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                log.warning("target image %s: %dx%d = %d pixels is above the pixel cap %d "
                            "(engine.fetch.max_pixels); refused", path, w, h, w * h, max_pixels)
                return None
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when large
            with shared_budget(DEFAULT_DECODE_BUDGET).hold(decode_cost(img)):
                img.load()
                return resize_center_crop(img, size)
    except Image.DecompressionBombError as exc:  # above Pillow's own limit, whatever max_pixels says
        log.warning("target image %s: refused (%s)", path, exc)
        return None
    except Exception:  # corrupt, truncated, not an image, ...
        return None


def _read_many(paths: list[Path], size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray | None]:
    from PIL import Image

    from ie_env.fetcher.decode import configure_pillow_memory

    configure_pillow_memory()
    # The pixel cap in _read_image is the guard; Pillow's own warning at 89 MP would only repeat it.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    workers = min(8, os.cpu_count() or 1)
    if len(paths) < 16 or workers == 1:
        return [_read_image(p, size, max_pixels) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: _read_image(p, size, max_pixels), paths))


def _stack(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


# --- image folders ------------------------------------------------------------------------------
def _class_dirs(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise TargetError(f"target folder {folder} does not exist or is not a folder")
    classes = {
        d.name: sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    if not classes:
        raise TargetError(f"target folder {folder} holds no class subfolders (expected {folder}/<class>/<image>)")
    return classes


def _read_class(files: list[Path], folder: Path, size: int, cap: int | None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[np.ndarray], int]:
    """Readable images of one class folder (at most ``cap``) and the count of skipped files."""
    out: list[np.ndarray] = []
    skipped = 0
    step = max(cap or len(files), 1)
    i = 0
    while i < len(files) and (cap is None or len(out) < cap):
        for img in _read_many(files[i : i + step], size, max_pixels):
            if img is None:
                skipped += 1
            elif cap is None or len(out) < cap:
                out.append(img)
        i += step
    if not out:
        raise TargetError(f"target class folder {folder} holds no readable images ({len(files)} files, {skipped} unreadable)")
    return out, skipped


def _load_imagefolder(cfg: TargetConfig, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> TargetSet:
    root = Path(cfg.root).expanduser()
    tr_dir, te_dir = root / cfg.train_split, root / cfg.test_split
    skipped = 0
    if tr_dir.is_dir() and te_dir.is_dir():
        tr_classes, te_classes = _class_dirs(tr_dir), _class_dirs(te_dir)
        extra = sorted(set(te_classes) - set(tr_classes))
        if extra:
            raise TargetError(f"{te_dir} has classes missing from {tr_dir}: {', '.join(extra[:5])}")
        names = sorted(tr_classes)
        parts: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
        for split, classes, base in (("train", tr_classes, tr_dir), ("test", te_classes, te_dir)):
            for label, name in enumerate(names):
                if name not in classes:
                    continue
                imgs, s = _read_class(classes[name], base / name, size, cfg.max_per_class, max_pixels)
                skipped += s
                parts[split][0].extend(imgs)
                parts[split][1].extend([label] * len(imgs))
    else:
        classes = _class_dirs(root)
        names = sorted(classes)
        parts = {"train": ([], []), "test": ([], [])}
        for label, name in enumerate(names):
            imgs, s = _read_class(classes[name], root / name, size, None, max_pixels)
            skipped += s
            order = np.random.default_rng([cfg.seed, label]).permutation(len(imgs))
            n_test = int(round(cfg.test_fraction * len(imgs))) if len(imgs) > 1 else 0
            n_test = min(max(n_test, 1 if len(imgs) > 1 else 0), len(imgs) - 1)
            cap = cfg.max_per_class or len(imgs)
            for split, idx in (("test", order[:n_test][:cap]), ("train", order[n_test:][:cap])):
                parts[split][0].extend(imgs[i] for i in idx)
                parts[split][1].extend([label] * len(idx))
    if skipped:
        log.warning("target %s: skipped %d unreadable or non-image files", root, skipped)
    if not parts["test"][0]:
        raise TargetError(f"target folder {root} yields no test images; add images or a {cfg.test_split}/ folder")
    return TargetSet(
        _stack(parts["train"][0], size), np.asarray(parts["train"][1], np.int64),
        _stack(parts["test"][0], size), np.asarray(parts["test"][1], np.int64),
        names, skipped,
    )


# --- torchvision ----------------------------------------------------------------------------
def _torchvision_split(cfg: TargetConfig, train: bool) -> Any:
    from torchvision import datasets as tv

    root, dl = str(Path(cfg.root).expanduser()), cfg.download
    name = cfg.name
    if name == "cifar10":
        return tv.CIFAR10(root, train=train, download=dl)
    if name == "cifar100":
        return tv.CIFAR100(root, train=train, download=dl)
    if name == "flowers102":
        return tv.Flowers102(root, split="train" if train else "test", download=dl)
    if name == "oxford_pets":
        return tv.OxfordIIITPet(root, split="trainval" if train else "test", target_types="category", download=dl)
    if name == "food101":
        return tv.Food101(root, split="train" if train else "test", download=dl)
    if name == "dtd":
        return tv.DTD(root, split="train" if train else "test", download=dl)
    if name == "fgvc_aircraft":
        return tv.FGVCAircraft(root, split="trainval" if train else "test", download=dl)
    raise TargetError(f"unknown torchvision target {name!r}; valid: {', '.join(TORCHVISION_DATASETS)}")


def _open_torchvision(cfg: TargetConfig, train: bool) -> Any:
    split = "train" if train else "test"
    try:
        return _torchvision_split(cfg, train)
    except TargetError:
        raise
    except Exception as exc:
        if cfg.download:
            raise TargetError(
                f"could not download torchvision dataset {cfg.name} ({split}) into {cfg.root}: {exc}. "
                "Download it on a machine with network access and copy the folder over"
            ) from exc
        raise TargetError(
            f"torchvision dataset {cfg.name} ({split}) was not found in {cfg.root} ({exc}); "
            "set target.download: true to fetch it (needs network), or point target.root at a copy"
        ) from exc


def _dataset_labels(ds: Any) -> np.ndarray | None:
    for attr in ("targets", "_labels"):
        lab = getattr(ds, attr, None)
        if lab is not None and len(lab) == len(ds):
            return np.asarray(lab, np.int64)
    return None


def _load_torchvision(cfg: TargetConfig, size: int) -> TargetSet:
    out: list[tuple[np.ndarray, np.ndarray]] = []
    names: list[str] = []
    skipped = 0
    for train in (True, False):
        ds = _open_torchvision(cfg, train)
        labels = _dataset_labels(ds)
        idx = np.arange(len(ds))
        if cfg.max_per_class is not None and labels is not None:
            keep = np.zeros(len(ds), bool)
            for c in np.unique(labels):
                keep[np.flatnonzero(labels == c)[: cfg.max_per_class]] = True
            idx = np.flatnonzero(keep)
        imgs, labs = [], []
        for i in idx:
            try:
                img, y = ds[int(i)]
                imgs.append(resize_center_crop(img, size))
                labs.append(int(y))
            except Exception:  # an unreadable file inside the dataset
                skipped += 1
        if not imgs:
            raise TargetError(f"torchvision dataset {cfg.name} in {cfg.root} has no readable {'train' if train else 'test'} images")
        out.append((_stack(imgs, size), np.asarray(labs, np.int64)))
        if train:
            n_cls = int(max(labs)) + 1
            classes = list(getattr(ds, "classes", None) or [])
            names = [str(c) for c in classes] if len(classes) >= n_cls else [str(i) for i in range(n_cls)]
    if skipped:
        log.warning("target %s/%s: skipped %d unreadable images", cfg.root, cfg.name, skipped)
    (xtr, ytr), (xte, yte) = out
    return TargetSet(xtr, ytr, xte, yte, names, skipped)


# --- entry point --------------------------------------------------------------------------------
def load_target(cfg: TargetConfig, image_size: int, world: Any = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> TargetSet:
    """The labeled target set ``cfg`` names, at ``cfg.image_size or image_size`` pixels; ImageFolder
    files above ``max_pixels`` (the fetcher's cap) are refused and counted as skipped.

    ``kind="embedded"`` reads ``world.target_split`` (``world`` is required then).
    """
    cfg.validate()
    size = int(cfg.image_size or image_size)
    if cfg.kind == "embedded":
        if world is None:
            raise TargetError("target.kind=embedded needs the embedded world")
        xtr, ytr, _ = world.target_split("train")
        xte, yte, _ = world.target_split("test")
        return TargetSet(xtr, ytr, xte, yte, list(world.target_names), 0)
    if cfg.kind == "imagefolder":
        return _load_imagefolder(cfg, size, max_pixels)
    return _load_torchvision(cfg, size)
