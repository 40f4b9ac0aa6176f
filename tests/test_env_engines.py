"""The env on real engines: a local captioned corpus, a web engine on a loopback server (recorded,
then replayed offline with the server gone), failed downloads counted, clear config errors."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import ie_env  # noqa: F401  (registers the ids)
from _hostile_server import HostileServer, encode, jpeg_bytes, make_image
from tests.conftest import pixel_config
from ie_experiments.run import main as explore_main
from ie_env.config import ConfigError
from ie_env.engines.replay import Snapshot
from ie_env.env import InternetExplorerEnv
from ie_env.web_search import ENGINE_NAMES

LEMMAS = ["airbus", "aircraft", "airliner", "airship", "biplane"]  # concepts 0, 1, 2, 3, 8
ACTIONS = [0, 3, 8, 0, 1, 2]  # a repeat (0), an all-dead query (1), a failing search (2)


def _target(tmp_path):
    """A two-class ImageFolder target (split per class by test_fraction)."""
    root = tmp_path / "target"
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            (d / f"{i}.png").write_bytes(encode(make_image(9000 + 10 * c + i, 48, 48), "PNG"))
    return {"kind": "imagefolder", "root": str(root), "test_fraction": 0.5}


def _config(tmp_path, engine, **over):
    return pixel_config(target=_target(tmp_path), engine=engine, min_images=4, **over)


# ------------------------------------------------------------------------------- local corpus


def test_local_corpus_engine_runs_end_to_end_through_gym_make(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k, lemma in enumerate(LEMMAS):
        for j in range(6):
            stem = corpus / f"{k}_{j}"
            stem.with_suffix(".jpg").write_bytes(jpeg_bytes(100 * k + j, 64, 48))
            stem.with_suffix(".txt").write_text(f"a photo of an {lemma}, picture {j}")
    (corpus / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (corpus / "broken.txt").write_text("a photo of an airbus, damaged")
    engine = {"name": "local_corpus", "options": {"source": str(corpus), "index_type": "flat"}}
    env = gym.make("InternetExplorer-v0", config=_config(tmp_path, engine), store_dir=str(tmp_path / "run"))
    obs, info = env.reset(seed=0)
    assert 20 in info["knn_accuracy"]
    infos, rewards = [], []
    for a in [0, 3, 8, 1, 0, 2]:
        obs, r, term, trunc, info = env.step(a)
        rewards.append(r)
        infos.append(info)
    assert trunc and all(math.isfinite(r) for r in rewards)
    assert all(i["query"] == LEMMAS[[0, 1, 2, 3, 8].index(a)] for i, a in zip(infos, [0, 3, 8, 1, 0, 2]))
    first = infos[0]
    # 12 hits: the damaged file is among the airbus answers and is counted, not raised.
    assert first["fetch"]["hits"] == 12 and first["fetch"]["failed"] == 1 and first["hits"] == 11
    assert first["fetch"]["images"] == 11 and len(first["fetch"]["reasons"]) == 1
    assert math.isnan(first["true_relevance"]) and math.isnan(first["image_true_relevance"])
    assert first["engine"] == "local_corpus" and rewards[0] > 0
    assert infos[4]["cached"] and infos[4]["fetch"] == first["fetch"]  # a repeat: the same images
    closed = [i for i in infos if i["iteration_closed"]]
    assert len(closed) == 2 and all(20 in i["iteration_stats"]["knn_accuracy"] for i in closed)
    assert math.isnan(closed[-1]["iteration_stats"]["mean_true_relevance"])
    base = env.unwrapped
    assert base.cache[first["key"]]["images"].shape == (11, 32, 32, 3)
    with pytest.raises(RuntimeError, match="ground-truth relevance is unknown"):
        base.ground_truth_relevance()
    snap = Snapshot.load(tmp_path / "run" / "web" / "snapshot.jsonl")
    top = snap.answer("local_corpus", "airbus")["hits"]
    assert all("airbus" in h["caption"] for h in top[:6])  # the caption index ranks the right images first
    assert len(snap.images) >= 12
    env.close()


# ------------------------------------------------------------------------------- web + replay


def _openverse(handler, q):
    """Openverse's recorded answer format; image URLs point back at this server."""
    text, size = q["q"], int(q["page_size"])
    if text == "airliner":
        handler._send(500, b'{"detail": "internal error"}', "application/json")
        return
    base = f"http://127.0.0.1:{handler.server.server_address[1]}"
    seed = zlib.crc32(text.encode()) % 10_000
    items = []
    for i in range(size):
        if text == "aircraft" or i == 3:
            url = f"{base}/404/{seed}/{i}"  # a dead link
        elif i == 5:
            url = f"{base}/html_as_png?s={seed}"  # says image/png, is HTML
        else:
            url = f"{base}/png/{seed * 100 + i}.png"
        items.append({"id": f"{seed}-{i}", "title": f"{text} {i}", "url": url, "creator": "someone",
                      "license": "cc0", "license_version": "1.0", "foreign_landing_url": f"{base}/page/{i}",
                      "provider": "flickr", "source": "flickr"})
    body = {"result_count": size, "page_count": 1, "page_size": size, "page": 1, "results": items}
    handler._send(200, json.dumps(body).encode(), "application/json")


def _run(env, actions):
    env.reset(seed=0)
    out = []
    for a in actions:
        _, r, _, _, info = env.step(a)
        out.append((info["query"], r, info["query_reward"], info["fetch"], info["image_rewards"]))
    return out


def test_web_engine_records_and_replays_offline_identically(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENVERSE_CLIENT_ID", raising=False)
    monkeypatch.delenv("OPENVERSE_CLIENT_SECRET", raising=False)
    srv = HostileServer("127.0.0.1")
    srv.route("/ov/v1/images/", _openverse)
    fetch = {"allow_private": [f"127.0.0.1:{srv.port}"], "max_retries": 0, "deadline_s": 10.0,
             "image_size": 64, "store_format": "png"}
    live = {"name": "openverse", "options": {"base_url": srv.url("/ov"), "retries": 0}, "fetch": fetch}
    try:
        env = InternetExplorerEnv(_config(tmp_path, live), store_dir=str(tmp_path / "rec"))
        recorded = _run(env, ACTIONS)
        env.close()
    finally:
        srv.stop()
    queries = [q for q, *_ in recorded]
    assert queries == ["airbus", "airship", "biplane", "airbus", "aircraft", "airliner"]
    good = recorded[0][3]
    assert good["hits"] == 12 and good["images"] == 10 and good["failed"] == 2
    assert good["reasons"] == {"http_404": 1, "not_image": 1} and good["engine_error"] == ""
    dead, broken = recorded[4], recorded[5]
    assert dead[3]["images"] == 0 and dead[3]["reasons"] == {"http_404": 12}
    assert dead[1] == 0.0 and dead[4] == []  # zero images: a defined reward, no crash
    assert broken[3]["hits"] == 0 and broken[3]["engine_error"].startswith("engine_error")
    assert broken[1] == 0.0
    assert all(math.isfinite(r) for _, r, *_ in recorded) and recorded[0][1] > 0

    snap = tmp_path / "rec" / "web" / "snapshot.jsonl"
    assert "airliner" in Snapshot.load(snap).queries("openverse")
    replay = {"name": "replay", "snapshot": str(snap)}
    env2 = InternetExplorerEnv(_config(tmp_path, replay), store_dir=str(tmp_path / "again"))
    replayed = _run(env2, ACTIONS)
    assert replayed == recorded  # same queries, images, fetch counts and rewards, bit for bit
    assert env2._web._fetcher is None  # nothing was downloaded: the server is gone anyway
    assert env2._web.engine.stats["misses"] == 0
    env2.close()

    # Recording again into the same snapshot (a resumed run) answers from it: no search, no download.
    again = {**live, "root": str(tmp_path / "rec" / "web")}
    env3 = InternetExplorerEnv(_config(tmp_path, again), store_dir=str(tmp_path / "third"))
    assert _run(env3, ACTIONS) == recorded and env3._web._fetcher is None
    env3.close()


def test_replay_of_an_unrecorded_query_is_zero_images_not_a_crash(tmp_path):
    snap = tmp_path / "snap.jsonl"
    snap.write_text(json.dumps({"kind": "header", "format": "ie-env-snapshot", "version": 1}) + "\n"
                    + json.dumps({"kind": "search", "engine": "openverse", "query": "airbus", "n": 12,
                                  "hits": [{"url": "http://127.0.0.1:9/x.png"}], "trace": []}) + "\n")
    env = InternetExplorerEnv(_config(tmp_path, {"name": "replay", "snapshot": str(snap)}))
    env.reset(seed=1)
    _, r, _, _, info = env.step(0)  # recorded answer, but no image outcome recorded for its URL
    assert r == 0.0 and info["fetch"]["reasons"] == {"not_recorded": 1}
    _, r, _, _, info = env.step(3)  # a query the snapshot lacks
    assert r == 0.0 and info["fetch"]["engine_error"].startswith("snapshot_miss")
    env.close()


# ------------------------------------------------------------------------------- config errors


def test_unknown_engine_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        InternetExplorerEnv(pixel_config(engine={"name": "altavista"}))
    for name in ENGINE_NAMES:
        assert name in str(e.value)
    assert set(ENGINE_NAMES) == {"embedded", "flickr", "openverse", "wikimedia", "clip_retrieval",
                                 "local_corpus", "replay"}
    with pytest.raises(ConfigError, match="valid engines"):
        gym.make("InternetExplorer-v0", config={"engine": {"name": "altavista"}})


def test_web_engine_needs_a_target_set_and_pixels():
    with pytest.raises(ConfigError, match="target.kind=imagefolder or torchvision"):
        InternetExplorerEnv(pixel_config(engine={"name": "openverse"}))


def test_missing_api_key_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="FLICKR_API_KEY"):
        InternetExplorerEnv(_config(tmp_path, {"name": "flickr"}))
    logdir = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "paper_pets_flickr.yaml"
    rc = explore_main(["--config", str(config), "--logdir", str(logdir),
                       "--no-progress"])
    assert rc == 2 and "FLICKR_API_KEY" in capsys.readouterr().err
    assert not logdir.exists()  # refused before the run directory was written
    with pytest.raises(ConfigError, match="engine.snapshot"):
        InternetExplorerEnv(_config(tmp_path, {"name": "replay", "snapshot": str(tmp_path / "none.jsonl")}))
    with pytest.raises(ConfigError, match="unknown config key engine.options.colour"):
        InternetExplorerEnv(_config(tmp_path, {"name": "openverse", "options": {"colour": "red"}}))


def test_embedded_default_has_no_web_and_keeps_ground_truth():
    env = InternetExplorerEnv(pixel_config())
    assert env.config.engine.name == "embedded" and env._web is None
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    assert "fetch" not in info and math.isfinite(info["true_relevance"])
    assert env.ground_truth_relevance().shape == (len(env.vocabulary),)
