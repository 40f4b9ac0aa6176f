"""The SSL start (``ssl.init``) and ``ie-pretrain``: build, cache, load, record, refuse bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from conftest import pixel_config
from PIL import Image

from ie_env.config import ConfigError, from_dict, to_dict
from ie_env.env import EnvConfig, InternetExplorerEnv, make_config
from ie_env.learner.pretrained import (
    artifact_hash,
    world_artifact_path,
    world_concepts,
    world_source,
)
from ie_env.learner.ssl import SSLConfig, SSLLearner
from ie_env.target_sampling import TargetSampler
from ie_env.worlds.embedded import load_vocabulary
from ie_experiments import pretrain as pretrain_cli

TINY_PRETRAIN = {"steps": 2, "images_per_concept": 2}


def tiny_cfg(**ssl) -> EnvConfig:
    return make_config(pixel_config(ssl={"batch_size": 16, "pretrain": TINY_PRETRAIN, **ssl}))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_ENV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pretrained"


@pytest.fixture
def run_yaml(tmp_path):
    """A run config file of the tiny pixels world, as ``ie-explore --config`` and ``ie-pretrain`` read."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"env": pixel_config(ssl={"batch_size": 16, "pretrain": TINY_PRETRAIN})}))
    return path


def _backbone_equal(a: torch.nn.Module, b: dict[str, torch.Tensor], prefix: str = "backbone.") -> bool:
    return all(torch.equal(v, b[prefix + k]) for k, v in a.state_dict().items())


def test_scratch_is_the_default_and_is_recorded():
    assert SSLConfig().init == "scratch"
    assert to_dict(SSLConfig())["init"] == "scratch"
    env = InternetExplorerEnv(pixel_config())
    _, info = env.reset(seed=0)
    assert info["ssl_init"] == {"init": "scratch"}


def test_world_distribution_is_the_training_themes_only():
    cfg = tiny_cfg()
    vocab = load_vocabulary("embedded")
    sampler = TargetSampler(vocab, cfg.world.num_targets, cfg.targets)
    held = set(sampler.heldout_themes)
    train_cfg = dataclasses.replace(cfg, targets=dataclasses.replace(cfg.targets, mode="train"))
    ids_train, themes_train = world_concepts(train_cfg)
    assert set(themes_train) == set(sampler.train_themes)
    got = {vocab.concepts[int(i)].theme for i in ids_train}
    assert got == set(themes_train) and not got & held
    assert len(ids_train) == sum(len(sampler.members[t]) for t in themes_train)
    # targets.mode fixed: the fixed target's theme is left out too, when it is a training theme.
    theme = sampler.train_themes[0]
    fixed = dataclasses.replace(cfg, world=dataclasses.replace(cfg.world, target_theme=theme))
    ids_fixed, themes_fixed = world_concepts(fixed)
    assert theme not in themes_fixed and set(themes_fixed) == set(themes_train) - {theme}
    assert len(ids_fixed) == len(ids_train) - len(sampler.members[theme])


def test_hash_covers_world_backbone_and_recipe_but_not_runtime():
    cfg = tiny_cfg()
    h0 = world_artifact_path(cfg)[1]
    runtime = make_config(pixel_config(ssl={"batch_size": 16, "pretrain": TINY_PRETRAIN, "max_steps": 7,
                                            "device": "cpu", "eval_batch_size": 3}))
    assert world_artifact_path(runtime)[1] == h0
    for change in ({"ssl": {"backbone": "resnet18"}}, {"ssl": {"pretrain": {"steps": 3}}}, {"ssl": {"lr": 2e-3}},
                   {"world": {"seed": 1}}, {"world": {"image_noise": 0.4}}, {"world": {"image_size": 48}},
                   {"targets": {"split_seed": 1}}):
        from ie_env.config import merge

        assert world_artifact_path(merge(cfg, change))[1] != h0, change
    src = world_source(cfg)
    assert artifact_hash(src, to_dict(cfg.ssl), 32) == h0


def test_pretrain_command_builds_the_start_and_pretrained_loads_it(cache, run_yaml, capsys):
    cfg = from_dict(EnvConfig, yaml.safe_load(run_yaml.read_text())["env"])
    cfg = dataclasses.replace(cfg, ssl=dataclasses.replace(cfg.ssl, init="pretrained"))
    expected, h = world_artifact_path(cfg)
    assert expected.parent == cache
    assert pretrain_cli.main(["--config", str(run_yaml), "--no-progress"]) == 0
    assert expected.is_file() and expected.with_suffix(".json").is_file()
    assert h in capsys.readouterr().out
    from safetensors.torch import load_file

    saved = load_file(str(expected))
    env = InternetExplorerEnv(cfg)
    _, info = env.reset(seed=3)
    rec = info["ssl_init"]
    assert rec["init"] == "pretrained" and rec["hash"] == h and rec["loaded"] == "model"
    assert len(rec["sha256"]) == 64
    # The warm-up trained on from the artifact: the start itself is what a fresh learner holds.
    fresh = SSLLearner(dataclasses.replace(cfg.ssl, init=str(expected), image_size=32))
    assert _backbone_equal(fresh.backbone, saved)
    assert _backbone_equal(fresh.model.momentum_backbone, saved, "momentum_backbone.")
    scratch = SSLLearner(dataclasses.replace(cfg.ssl, init="scratch", image_size=32))
    assert not _backbone_equal(scratch.backbone, saved)
    # A second build finds the cached file and does not train again.
    mtime = expected.stat().st_mtime_ns
    assert pretrain_cli.main(["--config", str(run_yaml), "--no-progress"]) == 0
    assert expected.stat().st_mtime_ns == mtime


def test_missing_or_corrupt_artifact_names_the_command(cache):
    cfg = tiny_cfg(init="pretrained")
    env = InternetExplorerEnv(cfg)
    with pytest.raises(ConfigError, match=r"does not exist.*ie-pretrain"):
        env.reset(seed=0)
    path, _ = world_artifact_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": torn")
    with pytest.raises(ConfigError, match=r"corrupt.*ie-pretrain"):
        InternetExplorerEnv(cfg).reset(seed=0)
    with pytest.raises(ConfigError, match="through the env"):
        SSLLearner(dataclasses.replace(cfg.ssl, image_size=32))


def test_artifact_of_another_backbone_or_image_size_is_refused(cache, tmp_path):
    cfg = tiny_cfg()
    path, meta = pretrain_cli.pretrain(cfg, out=tmp_path / "start.safetensors", progress=False)
    assert meta["backbone"] == "test_resnet" and meta["image_size"] == 32
    with pytest.raises(ConfigError, match=r"image_size=32.*image_size=48"):
        SSLLearner(dataclasses.replace(cfg.ssl, init=str(path), image_size=48))
    with pytest.raises(ConfigError, match=r"backbone=test_resnet.*backbone=test_convnext"):
        SSLLearner(dataclasses.replace(cfg.ssl, init=str(path), backbone="test_convnext", image_size=32))


def test_own_checkpoint_path_plain_state_dicts(tmp_path):
    from safetensors.torch import save_file

    base = {"backbone": "test_resnet", "batch_size": 16, "hidden_dim": 64, "proj_dim": 32, "device": "cpu"}
    src = SSLLearner(SSLConfig(**base, seed=5))
    timm_sd = src.backbone.state_dict()
    torch.save(timm_sd, tmp_path / "own.pth")
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(tmp_path / "own.safetensors"))
    imgs = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    for name in ("own.pth", "own.safetensors"):
        dst = SSLLearner(SSLConfig(**base, seed=6, init=str(tmp_path / name)))
        assert dst.init_record["loaded"] == "backbone" and dst.init_record["init"] == "path"
        assert torch.allclose(dst.features(imgs), src.features(imgs), atol=1e-6)
        assert _backbone_equal(dst.model.momentum_backbone, {f"backbone.{k}": v for k, v in timm_sd.items()})
    other = SSLLearner(SSLConfig(**dict(base, backbone="test_convnext"), seed=5))
    torch.save(other.backbone.state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(ConfigError, match=r"does not fit backbone 'test_resnet'"):
        SSLLearner(SSLConfig(**base, init=str(tmp_path / "convnext.pth")))
    with pytest.raises(ConfigError, match="does not exist"):
        SSLLearner(SSLConfig(**base, init=str(tmp_path / "nope.pth")))
    with pytest.raises(ConfigError, match="not both"):
        SSLConfig(**base, init=str(tmp_path / "own.pth"), checkpoint=str(tmp_path / "own.pth"))


def test_pretrain_on_a_local_image_folder(cache, run_yaml, tmp_path, capsys):
    folder = tmp_path / "pool"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert pretrain_cli.main(["--config", str(run_yaml), "--source", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    built = [p for p in cache.glob("*.safetensors")]
    assert len(built) == 1 and str(built[0]) in out
    meta = yaml.safe_load(built[0].with_suffix(".json").read_text())
    assert meta["source"]["kind"] == "folder" and meta["source"]["images"] == 6
    assert meta["source_info"]["unreadable"] == 1
    cfg = tiny_cfg(init=str(built[0]))
    _, info = InternetExplorerEnv(cfg).reset(seed=0)
    assert info["ssl_init"]["init"] == "path" and info["ssl_init"]["hash"] == meta["hash"]
    assert pretrain_cli.main(["--config", str(run_yaml), "--source", str(tmp_path / "none")]) == 2
    assert "ie-pretrain: error" in capsys.readouterr().err


def test_a_task_trains_and_evaluates_from_the_same_start(cache, capsys):
    from ie_env.suite import eval_config, task_config

    tid = "IEPixels-Standard-v1"
    path = world_artifact_path(task_config(tid))[0]
    assert world_artifact_path(eval_config(tid))[0] == path  # held-out episodes load what training loaded
    assert pretrain_cli.main(["--task", tid, "--print-path"]) == 0
    assert f"{path}  (missing)" in capsys.readouterr().out


def _png(rng: np.random.Generator) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_corpus_pools_read_webdataset_and_parquet(tmp_path):
    import io
    import tarfile

    rng = np.random.default_rng(2)
    shard = tmp_path / "shards" / "000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tf:
        for i in range(4):
            for ext, data in (("png", _png(rng)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    draw, src, _ = pretrain_cli.corpus_pool(str(shard.parent), 32, progress=False)
    assert src["kind"] == "webdataset" and src["images"] == 4
    assert draw(np.random.default_rng(0), 5).shape == (5, 32, 32, 3)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"caption": ["a", "b", "c"], "image": [{"bytes": _png(rng), "path": ""} for _ in range(3)]})
    pq.write_table(table, tmp_path / "pool.parquet")
    _, src, _ = pretrain_cli.corpus_pool(str(tmp_path / "pool.parquet"), 32, progress=False)
    assert src["kind"] == "parquet" and src["images"] == 3
    _, capped, _ = pretrain_cli.corpus_pool(str(tmp_path / "pool.parquet"), 32, limit=2, progress=False)
    assert capped["images"] == 2 and capped["fingerprint"] == src["fingerprint"]
