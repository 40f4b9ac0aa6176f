"""Target datasets: image folders (with junk files), torchvision offline errors, env integration."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ie_env.config import ConfigError
from ie_env.env import InternetExplorerEnv
from ie_env.targets import TargetConfig, TargetError, load_target
from ie_env.worlds.render import RenderConfig, Renderer
from tests.conftest import pixel_config

CLASSES = ("heron", "owl", "wren")


def make_folder(root: Path, per_class: int = 6, size: int = 40, junk: bool = True) -> Path:
    """Class folders of rendered PNGs (one class latent each), plus a corrupt PNG and a text file."""
    rng = np.random.default_rng(0)
    r = Renderer(RenderConfig(image_size=size, seed=1))
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        centre = rng.normal(size=16).astype(np.float32) * 2
        lat = centre + 0.3 * rng.normal(size=(per_class, 16)).astype(np.float32)
        for i, img in enumerate(r.render(lat, np.arange(per_class) + 100 * c)):
            Image.fromarray(img).save(d / f"{i:02d}.png")
    if junk:
        (root / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        (root / CLASSES[1] / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_split_by_fraction_skips_junk(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    Image.new("RGB", (80, 40), (250, 0, 0)).save(root / "wren" / "wide.jpg")  # non-square: resize + crop
    cfg = TargetConfig(kind="imagefolder", root=str(root), test_fraction=0.5, seed=3)
    with caplog.at_level(logging.WARNING, logger="ie_env.targets"):
        ts = load_target(cfg, image_size=32)
    assert ts.skipped == 2
    assert "skipped 2" in caplog.text
    assert ts.class_names == list(CLASSES)
    assert ts.train_images.shape[1:] == (32, 32, 3) and ts.train_images.dtype == np.uint8
    assert len(ts.train_labels) + len(ts.test_labels) == 19
    assert np.bincount(ts.test_labels).tolist() == [3, 3, 4]  # round(0.5 x 7 readable) = 4
    assert set(ts.train_labels.tolist()) == set(ts.test_labels.tolist()) == {0, 1, 2}
    again = load_target(cfg, image_size=32)
    assert np.array_equal(again.test_images, ts.test_images)  # seeded split
    other = load_target(TargetConfig(kind="imagefolder", root=str(root), test_fraction=0.5, seed=4), 32)
    assert not np.array_equal(other.test_images, ts.test_images)
    red = [im for im in np.concatenate([ts.train_images, ts.test_images]) if im[..., 0].min() > 200 and im[..., 1].max() < 30]
    assert len(red) == 1  # the wide image, centre-cropped to 32 x 32


def test_imagefolder_train_test_folders_and_cap(tmp_path):
    make_folder(tmp_path / "ds" / "train", per_class=5, junk=False)
    make_folder(tmp_path / "ds" / "test", per_class=3, junk=True)
    ts = load_target(TargetConfig(kind="imagefolder", root=str(tmp_path / "ds"), max_per_class=4), 32)
    assert np.bincount(ts.train_labels).tolist() == [4, 4, 4]
    assert np.bincount(ts.test_labels).tolist() == [3, 3, 3]
    assert ts.skipped == 2


def test_imagefolder_errors_name_the_folder(tmp_path):
    with pytest.raises(TargetError, match="missing"):
        load_target(TargetConfig(kind="imagefolder", root=str(tmp_path / "missing")), 32)
    (tmp_path / "flat").mkdir()
    with pytest.raises(TargetError, match="no class subfolders"):
        load_target(TargetConfig(kind="imagefolder", root=str(tmp_path / "flat")), 32)
    root = make_folder(tmp_path / "imgs", per_class=2, junk=False)
    (root / "zebra").mkdir()
    (root / "zebra" / "junk.txt").write_text("x")
    with pytest.raises(TargetError, match="zebra"):
        load_target(TargetConfig(kind="imagefolder", root=str(root)), 32)
    with pytest.raises(ConfigError, match="root"):
        TargetConfig(kind="imagefolder")


def test_torchvision_offline_absent_is_a_clear_error(tmp_path):
    with pytest.raises(TargetError) as err:
        load_target(TargetConfig(kind="torchvision", name="cifar10", root=str(tmp_path / "tv")), 32)
    msg = str(err.value)
    assert "cifar10" in msg and str(tmp_path / "tv") in msg and "download" in msg
    with pytest.raises(ConfigError, match="valid"):
        TargetConfig(kind="torchvision", name="imagenet", root="x")


def test_env_uses_the_imagefolder_target(tmp_path):
    root = make_folder(tmp_path / "imgs")
    cfg = pixel_config(target={"kind": "imagefolder", "root": str(root), "test_fraction": 0.5})
    env = InternetExplorerEnv(cfg)
    ts = load_target(TargetConfig(kind="imagefolder", root=str(root), test_fraction=0.5), 32)
    env.reset(seed=0)
    assert np.array_equal(env.train_images, ts.train_images)
    assert np.array_equal(env.test_labels, ts.test_labels)
    assert env.target_class_names == list(CLASSES)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["hits"] > 0  # the embedded world still answers the queries
    with pytest.raises(ConfigError, match="pixels"):
        InternetExplorerEnv(pixel_config(world={"fidelity": "latent"}, target={"kind": "imagefolder", "root": str(root)}))


def test_default_target_is_the_embedded_world():
    env = InternetExplorerEnv(pixel_config())
    env.reset(seed=0)
    images, labels, _ = env.world.target_split("train")
    assert np.array_equal(env.train_images, images) and np.array_equal(env.train_labels, labels)
    assert env.target_class_names == env.world.target_names


class _FakeTorchvision:
    """Stands in for a torchvision dataset: PIL images, ``targets``, ``classes``; item 3 is unreadable."""

    classes = ["daisy", "rose"]

    def __init__(self, n: int) -> None:
        self.targets = [i % 2 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        if i == 3:
            raise OSError("truncated file")
        return Image.new("RGB", (48, 36), (10 * i, 200 * self.targets[i], 0)), self.targets[i]


def test_torchvision_target_decodes_caps_and_counts(monkeypatch):
    import ie_env.targets as targets

    monkeypatch.setattr(targets, "_torchvision_split", lambda cfg, train: _FakeTorchvision(12 if train else 6))
    ts = load_target(TargetConfig(kind="torchvision", name="flowers102", root="x", max_per_class=4), 32)
    assert ts.class_names == ["daisy", "rose"]
    assert np.bincount(ts.train_labels).tolist() == [4, 3]  # item 3 (a rose) unreadable: skipped
    assert np.bincount(ts.test_labels).tolist() == [3, 2]
    assert ts.skipped == 2 and ts.train_images.shape == (7, 32, 32, 3)
    assert ts.train_images[1, 16, 16, 1] == 200  # label 1 is green


def _huge_png(path: Path, side: int = 13_000) -> None:
    """A valid ``side`` x ``side`` greyscale PNG, written row by row (a few hundred kB, never in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" + bytes(side)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_imagefolder_refuses_an_image_above_the_fetchers_pixel_cap(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", junk=False)
    big = root / "owl" / "huge.png"
    _huge_png(big)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(big) as im:
            assert im.size == (13_000, 13_000)  # 169 MP: under Pillow's own error limit (179 MP)
    cfg = TargetConfig(kind="imagefolder", root=str(root), test_fraction=0.5, seed=3)
    with caplog.at_level(logging.WARNING, logger="ie_env.targets"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ts = load_target(cfg, image_size=32)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    assert ts.skipped == 1  # refused, not loaded
    assert len(ts.train_labels) + len(ts.test_labels) == 18
    assert "huge.png" in caplog.text and "13000x13000" in caplog.text and "64000000" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ie_env.targets"), pytest.raises(TargetError, match="no readable"):
        load_target(cfg, image_size=32, max_pixels=40 * 40 - 1)  # the env passes engine.fetch.max_pixels
    assert "40x40 = 1600 pixels is above the pixel cap 1599" in caplog.text
