"""Decoding, dHash dedup, the leakage guard, the content-addressed store, concurrency limits."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _hostile_server import HostileServer, encode, jpeg_bytes, make_image
from ie_env.engines.base import SearchHit
from ie_env.engines.replay import Snapshot, SnapshotRecorder
from ie_env.fetcher import Fetcher, FetchConfig, FetchError, ImageStore, LeakageGuard, Reason
from ie_env.fetcher.decode import decode_image, dhash, hamming


@pytest.fixture(scope="module")
def srv():
    s = HostileServer("127.0.0.1")
    state = {"active": 0, "peak": 0, "lock": threading.Lock()}

    def slow(handler, q):
        with state["lock"]:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.03)
        with state["lock"]:
            state["active"] -= 1
        handler._send(200, jpeg_bytes(int(q.get("seed", "0"))))

    def copy(handler, q):  # the same picture as /img/<seed>.jpg, other bytes
        img = make_image(int(q["seed"]))
        if q.get("fmt") == "png":
            handler._send(200, encode(img, "PNG"), "image/png")
        else:
            handler._send(200, encode(img.resize((300, 225)), "JPEG", quality=70))

    def exif(handler, q):  # a 320x240 picture stored rotated, with an orientation tag
        img = make_image(5).transpose(Image.Transpose.ROTATE_90)  # 240x320 on disk
        ex = Image.Exif()
        ex[0x0112] = 6  # rotate 90 CW to display
        handler._send(200, encode(img, "JPEG", exif=ex.tobytes()))

    def rgba(handler, q):
        im = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
        handler._send(200, encode(im, "PNG"), "image/png")

    s.route("/slow", slow)
    s.route("/copy", copy)
    s.route("/exif", exif)
    s.route("/rgba", rgba)
    s.state = state
    yield s
    s.stop()


def _cfg(srv, **kw):
    base = dict(allow_private=[f"127.0.0.1:{srv.port}"], deadline_s=5.0, backoff_s=0.01,
                leak_hamming=-1)
    base.update(kw)
    return FetchConfig(**base)


# ------------------------------------------------------------------------------------- decoding


def test_decode_resizes_and_reports_original_size():
    data = jpeg_bytes(1, 1024, 768)
    for mode, size in [("shorter", (341, 256)), ("longer", (256, 192)), ("center_crop", (256, 256)),
                       ("none", (1024, 768))]:
        d = decode_image(data, FetchConfig(resize=mode))
        assert d.image.size == size and d.image.mode == "RGB", mode
        assert (d.orig_width, d.orig_height, d.format) == (1024, 768, "JPEG")
    small = decode_image(jpeg_bytes(1, 100, 80), FetchConfig())
    assert small.image.size == (100, 80)  # never upscaled


def test_decode_rejects_formats_outside_the_allowlist():
    gif = encode(make_image(3).convert("P"), "GIF")
    with pytest.raises(FetchError) as e:
        decode_image(gif, FetchConfig(formats=["JPEG", "PNG"]))
    assert e.value.reason == Reason.FORMAT_NOT_ALLOWED
    assert decode_image(gif, FetchConfig()).format == "GIF"
    with pytest.raises(FetchError) as e:
        decode_image(b"%PDF-1.4 not an image at all" * 10, FetchConfig())
    assert e.value.reason == Reason.NOT_IMAGE


def test_decode_pixel_guard_uses_the_configured_limit():
    data = jpeg_bytes(2, 400, 300)
    with pytest.raises(FetchError) as e:
        decode_image(data, FetchConfig(max_pixels=100_000))
    assert e.value.reason == Reason.DECOMPRESSION_BOMB
    assert decode_image(data, FetchConfig(max_pixels=120_000)).orig_width == 400


def test_dhash_is_stable_under_reencoding_and_separates_pictures():
    a = make_image(10)
    b = Image.open(io.BytesIO(encode(a.resize((160, 120)), "JPEG", quality=60)))
    c = make_image(11)
    assert hamming(dhash(a), dhash(b)) <= 4
    assert hamming(dhash(a), dhash(c)) > 10
    dists = [hamming(dhash(make_image(i)), dhash(make_image(i + 100))) for i in range(20)]
    assert min(dists) > 6


# ------------------------------------------------------------------------------------- dedup


def test_exact_and_near_duplicates(srv, tmp_path):
    with Fetcher(str(tmp_path / "s"), _cfg(srv, dedup_hamming=6)) as f:
        first = f.fetch(srv.url("/img/30.jpg"))
        exact = f.fetch(srv.url("/img/30.jpg?x=1"))
        near_png = f.fetch(srv.url("/copy?seed=30&fmt=png"))
        near_jpg = f.fetch(srv.url("/copy?seed=30"))
        other = f.fetch(srv.url("/img/31.jpg"))
    assert first.ok and other.ok
    for r in (exact, near_png, near_jpg):
        assert (r.status, r.reason) == ("error", Reason.DUPLICATE), r.to_dict()
        assert r.duplicate_of == first.sha256 and r.path == first.path
    assert exact.sha256 == first.sha256 and near_png.sha256 != first.sha256
    with Fetcher(str(tmp_path / "s2"), _cfg(srv, dedup_hamming=-1)) as f:
        assert f.fetch(srv.url("/img/30.jpg")).ok
        assert f.fetch(srv.url("/copy?seed=30&fmt=png")).ok  # near-dedup off: both kept


def test_leakage_guard_drops_near_copies_of_target_test_images(srv, tmp_path, caplog):
    targets = [make_image(40), make_image(41)]
    guard = LeakageGuard.from_images(targets, max_distance=6)
    with caplog.at_level(logging.INFO, logger="ie_env.fetcher.dedup"):
        with Fetcher(str(tmp_path / "s"), _cfg(srv), leakage=guard) as f:
            leak = f.fetch(srv.url("/copy?seed=40"))  # re-encoded, resized copy of a target
            leak2 = f.fetch(srv.url("/img/41.jpg"))
            fine = f.fetch(srv.url("/img/42.jpg"))
            stats = dict(f.stats)
    assert (leak.reason, leak2.reason, fine.reason) == (Reason.TARGET_LEAK, Reason.TARGET_LEAK, Reason.OK)
    assert guard.dropped == 2 and stats["leak_dropped"] == 2
    assert leak.path is None and len(list((tmp_path / "s" / "images").rglob("*.jpg"))) == 1
    assert sum("near-copy" in r.message for r in caplog.records) == 2


# ------------------------------------------------------------------------------------- store


def test_store_reopens_from_its_manifest_and_serves_stored_urls(srv, tmp_path):
    root = tmp_path / "s"
    hit = SearchHit(url=srv.url("/img/50.jpg"), caption="a cat", licence="CC BY 4.0",
                    creator="someone", landing_page="http://127.0.0.1/page", engine="flickr")
    with Fetcher(str(root), _cfg(srv)) as f:
        r = f.fetch(hit, query="tabby cat")
    assert r.ok
    meta = json.loads(Path(r.path).with_suffix(".json").read_text())
    assert (meta["query"], meta["engine"], meta["licence"], meta["creator"], meta["landing_page"],
            meta["caption"]) == ("tabby cat", "flickr", "CC BY 4.0", "someone",
                                 "http://127.0.0.1/page", "a cat")
    n_requests = len(srv.log)
    with open(root / "manifest.jsonl", "a") as fh:
        fh.write('{"sha256": "torn')  # a killed writer's last line
    store = ImageStore(root)
    assert len(store) == 1 and store.lookup_url(hit.url)["sha256"] == r.sha256
    with Fetcher(store=store, config=_cfg(srv)) as f:
        again = f.fetch(hit.url)
        other = f.fetch(srv.url("/img/50.jpg?copy"))
    assert again.ok and again.cached and again.sha256 == r.sha256 and again.path == r.path
    assert other.reason == Reason.DUPLICATE
    assert len(srv.log) == n_requests + 1  # the cached URL caused no request


def test_store_paths_come_only_from_hex_digests(tmp_path):
    store = ImageStore(tmp_path / "s")
    from ie_env.fetcher.store import StoreError

    for bad in ("../../etc/passwd", "ab" * 40, "AB" * 32):
        with pytest.raises(StoreError):
            store.path_for(bad, "jpg")
    with pytest.raises(StoreError):
        store.path_for("a" * 64, "../x")
    store.close()


def test_local_reader_and_recorder(srv, tmp_path):
    rec_path = tmp_path / "snap.jsonl"
    blobs = {"corpus://abc/0": jpeg_bytes(60), "corpus://abc/1": b"not an image"}
    with SnapshotRecorder(rec_path) as rec:
        with Fetcher(str(tmp_path / "s"), _cfg(srv), recorder=rec) as f:
            f.register_reader("corpus://abc/", lambda u: blobs[u])
            r0, r1, r2 = f.fetch_many(["corpus://abc/0", "corpus://abc/1", srv.url("/img/61.jpg")],
                                      query="q", engine="local_corpus")
            with pytest.raises(ValueError):
                f.register_reader("http://", lambda u: b"")
    assert r0.ok and r1.reason == Reason.NOT_IMAGE and r2.ok
    snap = Snapshot.load(rec_path)
    assert set(snap.images) == {"corpus://abc/0", "corpus://abc/1", srv.url("/img/61.jpg")}
    assert snap.images["corpus://abc/0"]["sha256"] == r0.sha256
    assert snap.images["corpus://abc/1"]["reason"] == Reason.NOT_IMAGE


def test_exif_orientation_and_transparency(srv, tmp_path):
    with Fetcher(str(tmp_path / "s"), _cfg(srv)) as f:
        ex = f.fetch(srv.url("/exif"))
        al = f.fetch(srv.url("/rgba"))
    assert ex.ok and (ex.width, ex.height) == (320, 240)  # stored 240x320, shown upright
    assert al.ok
    with Image.open(al.path) as im:
        assert im.mode == "RGB" and np.asarray(im).mean() > 240  # transparent -> white


# ------------------------------------------------------------------------------------- concurrency


def test_concurrent_fetch_respects_per_host_limit_and_keeps_order(srv, tmp_path):
    srv.state["peak"] = 0
    urls = [srv.url(f"/slow?seed={1000 + i}") for i in range(40)]
    with Fetcher(str(tmp_path / "s"), _cfg(srv, concurrency=16, per_host_concurrency=4)) as f:
        results = f.fetch_many(urls)
    assert [r.url for r in results] == urls
    assert all(r.ok for r in results)
    assert len({r.sha256 for r in results}) == 40
    assert 2 <= srv.state["peak"] <= 4
