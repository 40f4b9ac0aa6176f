"""ie-curate: copy detection, retrieval, balanced sampling, the pipeline end to end, and bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ie_env.curation import copies as cp
from ie_env.curation.cli import main as curate_main
from ie_env.curation.index import VectorIndex
from ie_env.curation.retrieval import balanced_hierarchical, cluster_based, sample_based, water_fill
from ie_env.curation.world_pool import make_world, relevant_share, selected_keys, write_world_pool
from ie_env.worlds.embedded import WorldConfig


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(image_size=32))


def _renders(world, n: int, start: int = 0, size: int = 64) -> list[np.ndarray]:
    w = world if world.cfg.image_size == size else make_world(WorldConfig(image_size=size))
    idx = np.arange(start, start + n)
    return list(w.images(idx % len(w.vocabulary), idx, 5))


def _crop(img: Image.Image, rng) -> Image.Image:
    s = rng.uniform(0.7, 0.9)
    w, h = img.size
    cw, ch = int(w * np.sqrt(s)), int(h * np.sqrt(s))
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)


def _jpeg(img: Image.Image, rng) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(20, 60)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _jitter(img: Image.Image, rng) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))


def _rescale(img: Image.Image, rng) -> Image.Image:
    f = rng.uniform(0.4, 0.7)
    return img.resize((int(img.size[0] * f), int(img.size[1] * f)), Image.BILINEAR)


# ----------------------------------------------------------------------------- copy detection
def test_copy_descriptor_finds_crops_rescales_jpegs_and_jitter_but_not_other_images(world):
    rng = np.random.default_rng(0)
    imgs = _renders(world, 400)
    originals = rng.choice(len(imgs), 20, replace=False)
    group = list(range(len(imgs)))
    for o in originals:
        for f in (_crop, _rescale, _jpeg, _jitter):
            imgs.append(np.asarray(f(Image.fromarray(imgs[o]), rng)))
            group.append(int(o))
    cfg = cp.CopyConfig()
    desc = [cp.copy_descriptors(im, cfg) for im in imgs]
    assert desc[0].shape == (cfg.windows_per_image, 3 * cfg.size**2)
    full = np.stack([d[0] for d in desc])
    owner = np.repeat(np.arange(len(desc)), cfg.windows_per_image)
    pairs = cp.window_pairs(full, [(owner, np.concatenate(desc))], cfg.threshold, cfg.neighbours)
    roots = cp.copy_groups(len(imgs), pairs)
    removed = np.flatnonzero(roots != np.arange(len(imgs)))
    correct = sum(group[i] == group[roots[i]] for i in removed)
    planted = 80
    assert correct / max(len(removed), 1) >= 0.95  # precision
    assert correct / planted >= 0.9  # recall


def test_dhash_pairs_and_union_find_by_hand():
    hashes = np.array([0b0000, 0b0001, 0b0111, 0b1111_0000_0000, 0b0011], dtype=np.uint64)
    pairs = cp.dhash_pairs(hashes, 1, chunk=2)
    assert sorted(pairs) == [(0, 1, 1), (1, 4, 1), (2, 4, 1)]
    assert cp.dhash_pairs(hashes, -1) == []
    roots = cp.copy_groups(6, [(2, 5, 0.9), (5, 4, 0.95), (1, 3, 0.99)])
    assert roots.tolist() == [0, 1, 2, 1, 2, 2]


def test_copy_config_rejects_bad_values():
    with pytest.raises(ValueError):
        cp.CopyConfig(size=2).validate()
    with pytest.raises(ValueError):
        cp.CopyConfig(scales=(1.2,)).validate()


# ----------------------------------------------------------------------------- selection
def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_water_fill_by_hand():
    assert water_fill(np.array([1, 5, 5]), 7).tolist() == [1, 3, 3]
    assert water_fill(np.array([2, 2]), 10).tolist() == [2, 2]
    assert water_fill(np.array([3, 3, 3]), 4).tolist() == [2, 1, 1]


def test_sample_based_takes_k_nearest_allowed_rows():
    pool = _unit([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    targets = _unit([[1, 0], [0, 1]])
    rows, score = sample_based(VectorIndex(pool, kind="flat"), targets, k=1)
    assert rows.tolist() == [0, 2] and np.allclose(score, [1, 1])
    allowed = np.array([False, True, True, True, True])
    rows, _ = sample_based(VectorIndex(pool, kind="flat"), targets, k=2, allowed=allowed)
    assert rows.tolist() == [1, 2, 3]


def _blobs(sizes, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 5
    x = np.concatenate([c + rng.standard_normal((n, dim)) * 0.3 for c, n in zip(centres, sizes, strict=False)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return _unit(x), labels, _unit(centres)


def test_cluster_based_draws_from_the_clusters_the_targets_choose():
    pool, labels, centres = _blobs([300, 300, 300])
    targets = _unit(centres[[0, 0, 0, 2]] + 0.01)
    rows, votes = cluster_based(pool, targets, budget=40, n_clusters=3, seed=0)
    assert len(rows) == 40 and sum(votes.values()) == 4
    counts = np.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [30, 0, 10]  # 3 of 4 votes for blob 0, 1 for blob 2


def test_balanced_hierarchical_gives_rare_modes_their_share():
    pool, labels, _ = _blobs([1000, 40, 40])
    rows = balanced_hierarchical(pool, budget=90, levels=(9, 3), seed=0)
    counts = np.bincount(labels[rows], minlength=3)
    assert len(rows) == 90 and len(set(rows.tolist())) == 90
    assert counts.tolist() == [30, 30, 30]  # uniform sampling would give the rare blobs ~3 each


# ----------------------------------------------------------------------------- the pipeline
def _write_folder(path: Path, images: list[np.ndarray], prefix: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(path / f"{prefix}{i:05d}.png")


def test_ie_curate_end_to_end_dedup_leakage_output_and_resume(tmp_path, world, capsys):
    imgs = _renders(world, 160, size=32)
    pool = tmp_path / "pool"
    _write_folder(pool, imgs)
    Image.fromarray(imgs[7]).resize((24, 24)).save(pool / "zz_copy_of_7.png")
    (pool / "zz_broken.png").write_bytes(b"not an image")
    test_img = _renders(world, 1, start=5000, size=32)[0]
    Image.fromarray(test_img).save(pool / "zz_leak.png")
    _write_folder(tmp_path / "test", [test_img])
    target, _, _ = world.target_split("train")
    _write_folder(tmp_path / "target", list(target[:10]))
    out = tmp_path / "out"
    argv = ["--pool", str(pool), "--target", str(tmp_path / "target"), "--target-test", str(tmp_path / "test"),
            "--out", str(out), "--no-progress", "--set", "k=3", "--set", "chunk_size=64",
            "--set", "encoder.backbone=test_resnet"]
    assert curate_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pool"] == {"source": str(pool), "images": 163, "unreadable": 1}
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    by_key = {r["key"]: r for r in removed}
    assert by_key["zz_copy_of_7.png"] == {"key": "zz_copy_of_7.png", "reason": "near_copy", "copy_of": "00007.png"}
    assert by_key["zz_broken.png"]["reason"] == "unreadable"
    assert by_key["zz_leak.png"]["reason"] == "near_target_test"
    keys = selected_keys(out)
    assert len(keys) == report["selection"]["selected"] and 3 <= len(keys) <= 30
    assert not set(keys) & set(by_key)
    with tarfile.open(out / "curated-00000.tar") as tf:
        names = tf.getnames()
        data = tf.extractfile(names[0]).read()
    assert names[0].endswith(".png") and Image.open(io.BytesIO(data)).size == (32, 32)
    assert not (out / "shards.staging").exists()
    # A rerun with the same settings reuses the embedded chunks and gives the same selection.
    chunks = sorted((out / ".work").glob("chunk_*.npz"))
    stamps = [c.stat().st_mtime_ns for c in chunks]
    assert len(chunks) == 3
    assert curate_main(argv) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == stamps
    assert selected_keys(out) == keys


def test_ie_curate_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys, world, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert curate_main(["--pool", str(empty), "--mode", "balanced", "--out", str(out), "--no-progress"]) == 2
    assert "holds no image" in capsys.readouterr().err and not out.exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert curate_main(["--pool", str(junk), "--mode", "balanced", "--out", str(out), "--no-progress"]) == 2
    assert "could be read" in capsys.readouterr().err and not out.exists()
    assert curate_main(["--pool", str(junk), "--out", str(out), "--no-progress"]) == 2
    assert "needs --target" in capsys.readouterr().err
    from ie_env.curation import pipeline

    monkeypatch.setattr(pipeline, "faiss_or_none", lambda: None)
    assert curate_main(["--pool", str(junk), "--mode", "cluster", "--target", str(junk), "--out", str(out)]) == 2
    assert "pip install 'ie-env[corpus]'" in capsys.readouterr().err


def test_encoder_checkpoint_image_size_must_match(tmp_path, capsys):
    import torch

    from ie_env.config import ConfigError
    from ie_env.curation.encoder import ImageEncoder

    ck = tmp_path / "learner.pt"
    torch.save({"format": "x", "config": {"image_size": 64}, "model": {}}, ck)
    with pytest.raises(ConfigError, match="image_size 64.*encoder.image_size=64"):
        ImageEncoder("resnet18", image_size=32, checkpoint=str(ck))


def test_stored_embeddings_path_dedups_and_selects(tmp_path, capsys):
    pool, _labels, centres = _blobs([400, 400], dim=16)
    pool = np.concatenate([pool, pool[:10]])  # ten exact copies
    np.save(tmp_path / "pool.npy", pool.astype(np.float32))
    np.save(tmp_path / "t.npy", centres[:1].astype(np.float32))
    out = tmp_path / "sel"
    argv = ["--embeddings", str(tmp_path / "pool.npy"), "--target-embeddings", str(tmp_path / "t.npy"),
            "--mode", "cluster", "--out", str(out), "--set", "budget=50", "--set", "n_clusters=2",
            "--set", "embedding_dedup=0.999"]
    assert curate_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    rows = np.load(out / "selected.npy")
    assert report["copies"]["removed"] == 10 and len(rows) == 50
    assert (rows < 400).all()  # all from the target's blob, none of the copies (rows 800+)
    np.save(tmp_path / "bad.npy", pool * 3)
    argv[1] = str(tmp_path / "bad.npy")
    assert curate_main(argv) == 2 and "L2-normalised" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the world's pool view
def test_world_pool_view_scores_selections_against_g(tmp_path, world):
    truth = write_world_pool(world, tmp_path / "wp", per_concept=1, shard_size=1000)
    n = len(world.vocabulary)
    assert len(truth["concept_of"]) == n and sorted(truth["concept_of"].values()) == list(range(n))
    assert len(list((tmp_path / "wp" / "pool").glob("*.tar"))) == 3
    assert len(list((tmp_path / "wp" / "target_test").rglob("*.png"))) == 20 * 30
    target_keys = [k for k, c in truth["concept_of"].items() if c in truth["targets"]]
    share = relevant_share(target_keys, truth)
    assert share["relevant_share"] == 1.0 and share["target_classes"] == 20
    g = np.asarray(truth["relevance"])
    low = [k for k, c in truth["concept_of"].items() if g[c] < 0.5][:10]
    assert relevant_share(low + target_keys[:10], truth)["relevant_share"] == 0.5
