"""Paths read from data files stay inside their root (issue F7), and replay misses are counted in
``summary.json``: a manifest line pointing out of the image store is refused, counted and warned
about; a replay serves no image from outside its store."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import yaml
from _hostile_server import encode, make_image

from ie_env.engines.replay import Snapshot
from ie_env.env import InternetExplorerEnv
from ie_env.fetcher.store import ImageStore
from ie_experiments.run import main as explore_main
from tests.test_env_engines import _config


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hostile_store(root: Path, outside: Path) -> dict[str, str]:
    """A store with one good image and manifest lines whose paths lead out of it; returns the shas."""
    good = encode(make_image(1, 48, 48), "PNG")
    store = ImageStore(root)
    store.reserve(_sha(good))
    store.put(_sha(good), good, "png", {"url": "http://127.0.0.1:9/good.png"})
    store.close()
    secret = encode(make_image(2, 48, 48), "PNG")
    outside.write_bytes(secret)
    shas = {"good": _sha(good), "dotdot": _sha(b"dotdot"), "absolute": _sha(b"absolute"), "symlink": _sha(b"link")}
    link = root / "images" / shas["symlink"][:2] / f"{shas['symlink']}.png"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)  # the canonical place, but a symlink pointing out of the store
    dotdot = f"images/../../../{outside.name}"  # root is two levels below outside's folder
    assert (root / dotdot).resolve() == outside.resolve()
    lines = [
        {"sha256": shas["dotdot"], "path": dotdot, "url": "http://127.0.0.1:9/a.png"},
        {"sha256": shas["absolute"], "path": str(outside), "url": "http://127.0.0.1:9/b.png"},
        {"sha256": shas["symlink"], "path": link.relative_to(root).as_posix(), "url": "http://127.0.0.1:9/c.png"},
    ]
    with open(root / "manifest.jsonl", "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    return shas


def test_manifest_paths_outside_the_store_are_refused_counted_and_warned(tmp_path, caplog):
    root = tmp_path / "a" / "store"
    shas = _hostile_store(root, tmp_path / "outside.png")
    with caplog.at_level(logging.WARNING, logger="ie_env.fetcher.store"):
        store = ImageStore(root)
    assert store.get(shas["good"]) is not None
    for name in ("dotdot", "absolute", "symlink"):
        assert store.get(shas[name]) is None, name
    assert store.refused_paths == 3
    assert "refused 3 manifest entries" in caplog.text
    assert len(store) == 1
    store.close()


def _replay_fixture(tmp_path: Path) -> Path:
    """A recorded snapshot whose 'airbus' answer has one good image and one whose store entry points
    outside the store; returns the snapshot path."""
    web = tmp_path / "rec" / "web"
    shas = _hostile_store(web, tmp_path / "outside.png")
    urls = {"good": "http://127.0.0.1:9/good.png", "dotdot": "http://127.0.0.1:9/a.png",
            "absolute": "http://127.0.0.1:9/b.png", "symlink": "http://127.0.0.1:9/c.png"}
    snap = Snapshot()
    snap.add({"kind": "search", "engine": "openverse", "query": "airbus", "n": 12, "trace": [],
              "hits": [{"url": u} for u in urls.values()]})
    for name, url in urls.items():
        snap.add({"kind": "image", "url": url, "status": "ok", "reason": "ok", "sha256": shas[name]})
    return snap.export(web / "snapshot.jsonl")


def test_replay_serves_no_image_from_outside_its_store_and_counts_the_misses(tmp_path):
    snap = _replay_fixture(tmp_path)
    env = InternetExplorerEnv(_config(tmp_path, {"name": "replay", "snapshot": str(snap)}))
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)  # airbus: 4 recorded hits, 3 of them stored outside the store
    assert info["fetch"]["hits"] == 4 and info["fetch"]["images"] == 1
    assert info["fetch"]["reasons"] == {"missing_from_store": 3}
    env.step(3)  # a query the snapshot lacks
    env.step(0)  # a repeat: one distinct query
    misses = env.replay_misses()
    assert misses == {"queries": 2, "queries_not_in_snapshot": 1, "images_missing": 3,
                      "images_missing_by_reason": {"missing_from_store": 3, "not_recorded": 0, "unreadable": 0},
                      "store_entries_refused": 3}
    env.close()


def test_summary_json_counts_replay_misses(tmp_path):
    snap = _replay_fixture(tmp_path)
    env = _config(tmp_path, {"name": "replay", "snapshot": str(snap)})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": env, "threads": 1, "log_images": False, "agent": "random"}))
    out = tmp_path / "run"
    assert explore_main(["--config", str(cfg), "--logdir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    queries = {json.loads(line)["query"] for line in (out / "queries.jsonl").read_text().splitlines()}
    misses = summary["replay_misses"]
    assert misses["queries"] == len(queries)
    assert misses["queries_not_in_snapshot"] == len(queries - {"airbus"})
    assert misses["images_missing"] == (3 if "airbus" in queries else 0)
    assert misses["store_entries_refused"] == 3


def test_compare_base_config_must_stay_beside_the_config(tmp_path):
    import pytest

    from ie_env.config import ConfigError
    from ie_experiments.compare import load_compare_config

    (tmp_path / "outside.yaml").write_text("seed: 7\n")
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "base.yaml").write_text("seed: 5\n")
    ok = cfg_dir / "ok.yaml"
    ok.write_text("compare:\n  base: base.yaml\n")
    assert load_compare_config(ok)[0].seed == 5
    bad = cfg_dir / "bad.yaml"
    bad.write_text("compare:\n  base: ../outside.yaml\n")
    with pytest.raises(ConfigError, match="outside the config's folder"):
        load_compare_config(bad)


def test_query_store_keys_name_nothing_outside_the_store(tmp_path):
    import numpy as np
    import pytest

    from ie_env.query_store import QueryStore, query_key

    store = QueryStore(tmp_path / "run" / "downloads")
    outside = tmp_path / "secret.npz"
    np.savez(outside, images=np.ones((1, 2, 2, 3), np.uint8))
    planted = "../secret"  # a key from a damaged or planted checkpoint
    assert (store.root / planted[:2] / f"{planted}.npz").resolve() == outside.resolve()
    assert store.get(planted) is None and planted not in store
    with pytest.raises(ValueError, match="hex digest"):
        store.put(planted, images=np.zeros((1, 2, 2, 3), np.uint8))
    key = query_key("robin.n.01", "", 50)
    store.put(key, images=np.zeros((1, 2, 2, 3), np.uint8))
    assert key in store and store.get(key)["images"].shape == (1, 2, 2, 3)
