"""The fetcher against a hostile local server: every case ends with the right reason, no crash, no
file outside the store, and no connection to an address that was not allowed.

Servers: the main one on 127.0.0.1 (allow-listed as ``127.0.0.1:PORT``), a "private" one on
127.0.0.2 sharing the same port number when possible, and one on ::1 when IPv6 is available; the
last two must never see a connection. Every connection urllib3 opens is spied on.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import urllib3.util.connection as u3conn
from PIL import Image

from _hostile_server import POLYGLOT_PAYLOAD, ZIP_MAGIC, HostileServer
from ie_env.fetcher import Fetcher, FetchConfig, Reason

MAX_RETRIES = 2


def _bind_same_port(host: str, port: int) -> HostileServer | None:
    try:
        return HostileServer(host, port)
    except OSError:
        try:
            return HostileServer(host, 0)
        except OSError:
            return None


@pytest.fixture(scope="module")
def servers():
    main = HostileServer("127.0.0.1", bombs=True)
    other = _bind_same_port("127.0.0.2", main.port)
    six = None
    if socket.has_ipv6:
        try:
            six = HostileServer("::1", 0)
        except OSError:
            six = None
    yield main, other, six
    for s in (main, other, six):
        if s is not None:
            s.stop()


@pytest.fixture(scope="module")
def connect_spy():
    seen: list[tuple[str, int]] = []
    orig = u3conn.create_connection

    def spy(address, *args, **kwargs):
        seen.append((str(address[0]), int(address[1])))
        return orig(address, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(u3conn, "create_connection", spy)
    yield seen
    mp.undo()


def _cfg(main: HostileServer, **kw) -> FetchConfig:
    base = dict(allow_private=[f"127.0.0.1:{main.port}"], deadline_s=4.0, connect_timeout_s=2.0,
                read_timeout_s=3.0, max_bytes=2 * 1024 * 1024, max_retries=MAX_RETRIES,
                backoff_s=0.02, backoff_max_s=0.1, max_retry_after_s=5.0, per_host_concurrency=64,
                per_host_rate=0.0, concurrency=48, leak_hamming=-1)
    base.update(kw)
    return FetchConfig(**base)


def _cases(main, other, six):
    p = main.port
    other_url = f"http://127.0.0.2:{other.port if other else p}/img/90.jpg"
    cases = {
        # good ones
        "ok_jpeg": ("/img/1.jpg", Reason.OK),
        "ok_png": ("/png/2.png", Reason.OK),
        "ok_octet": ("/octet/3", Reason.OK),
        "ok_chain5": ("/chain/5", Reason.OK),
        "ok_polyglot": ("/polyglot.gif", Reason.OK),
        "ok_flaky": ("/flaky?key=flaky&n=2", Reason.OK),
        "ok_429": ("/429?key=r429&n=1&after=1", Reason.OK),
        "ok_noai_other_bot": ("/noai_other", Reason.OK),
        # redirects into private space, in many spellings
        "redir_127_0_0_2": (f"/redirect?to={other_url}", Reason.PRIVATE_ADDRESS),
        "redir_localhost": (f"/redirect?to=http://localhost:{p}/img/91.jpg", Reason.PRIVATE_ADDRESS),
        "redir_ipv6": (f"/redirect?to=http://[::1]:{six.port if six else p}/img/92.jpg",
                       Reason.PRIVATE_ADDRESS),
        "redir_decimal": (f"/redirect?to=http://2130706433:{p}/img/93.jpg", Reason.PRIVATE_ADDRESS),
        "redir_hex": (f"/redirect?to=http://0x7f000001:{p}/img/94.jpg", Reason.PRIVATE_ADDRESS),
        "redir_octal": (f"/redirect?to=http://0177.0.0.1:{p}/img/95.jpg", Reason.PRIVATE_ADDRESS),
        "redir_short": (f"/redirect?to=http://127.1:{p}/img/96.jpg", Reason.PRIVATE_ADDRESS),
        "redir_dot": (f"/redirect?to=http://127.0.0.1.:{p}/img/97.jpg", Reason.PRIVATE_ADDRESS),
        "redir_mapped": (f"/redirect?to=http://[::ffff:127.0.0.1]:{p}/img/98.jpg", Reason.PRIVATE_ADDRESS),
        "redir_other_port": ("/redirect?to=http://127.0.0.1:1/img/99.jpg", Reason.PRIVATE_ADDRESS),
        "redir_file": ("/redir_file", Reason.BAD_SCHEME),
        "redir_noloc": ("/redir_noloc", Reason.BAD_REDIRECT),
        "redir_loop": ("/loop", Reason.TOO_MANY_REDIRECTS),
        "redir_loop2": ("/loopa", Reason.TOO_MANY_REDIRECTS),
        "redir_chain6": ("/chain/6", Reason.TOO_MANY_REDIRECTS),
        # bodies
        "endless": ("/endless", Reason.TOO_LARGE),
        "big_declared": ("/big_declared", Reason.TOO_LARGE),
        "big_stream": ("/big_stream", Reason.TOO_LARGE),
        "lie_long": ("/lie_long", Reason.TRUNCATED),
        "lie_short": ("/lie_short", Reason.TRUNCATED),
        "drip": ("/drip", Reason.TIMEOUT),
        "drip_headers": ("/drip_headers", Reason.TIMEOUT),
        "stall": ("/stall", Reason.TIMEOUT),
        # content
        "html": ("/html", Reason.NOT_IMAGE),
        "html_as_png": ("/html_as_png", Reason.NOT_IMAGE),
        "text_jpeg": ("/text_jpeg", Reason.NOT_IMAGE),
        "svg": ("/svg", Reason.NOT_IMAGE),
        "gzip_bomb": ("/gzip_bomb", Reason.NOT_IMAGE),
        "truncated": ("/truncated.jpg", Reason.TRUNCATED),
        "bomb": ("/bomb.png", Reason.DECOMPRESSION_BOMB),
        "bomb_header": ("/bomb_header.png", Reason.DECOMPRESSION_BOMB),
        "tiff": ("/tiff", Reason.FORMAT_NOT_ALLOWED),
        "tiny": ("/tiny.png", Reason.TOO_SMALL),
        # status codes and politeness
        "http_404": ("/404", Reason.http(404)),
        "storm": ("/storm?key=storm", Reason.http(503)),
        "retry_after_too_long": ("/429_long", Reason.http(429)),
        "noai": ("/noai", Reason.NOAI),
        "noai_scoped": ("/noai_scoped", Reason.NOAI),
        "noai_multi": ("/noai_multi", Reason.NOAI),
    }
    return {k: (main.url(v[0]), v[1]) for k, v in cases.items()}


@pytest.fixture(scope="module")
def run(servers, connect_spy, tmp_path_factory):
    main, other, six = servers
    root = tmp_path_factory.mktemp("hostile")
    out = root / "store"
    cases = _cases(main, other, six)
    names = list(cases)
    extra = {
        "direct_localhost": f"http://localhost:{main.port}/img/80.jpg",
        "direct_decimal": f"http://2130706433:{main.port}/img/81.jpg",
        "direct_ipv6": f"http://[::1]:{six.port if six else main.port}/img/82.jpg",
        "direct_other": f"http://127.0.0.2:{other.port if other else main.port}/img/83.jpg",
        "direct_ftp": "ftp://127.0.0.1/x.jpg",
        "dup_same_bytes": main.url("/img/1.jpg?copy=1"),
        "garbage": "http://exa mple/x.jpg",
        "empty": "",
    }
    before = set(os.listdir(root))
    with Fetcher(str(out), _cfg(main)) as f:
        results = f.fetch_many([cases[n][0] for n in names] + list(extra.values()))
        stats = dict(f.stats)
    by_name = dict(zip(names + list(extra), results))
    return {"main": main, "other": other, "six": six, "root": root, "out": out, "cases": cases,
            "results": by_name, "before": before, "stats": stats, "spy": list(connect_spy)}


CASE_NAMES = [
    "ok_jpeg", "ok_png", "ok_octet", "ok_chain5", "ok_polyglot", "ok_flaky", "ok_429",
    "ok_noai_other_bot", "redir_127_0_0_2", "redir_localhost", "redir_ipv6", "redir_decimal",
    "redir_hex", "redir_octal", "redir_short", "redir_dot", "redir_mapped", "redir_other_port",
    "redir_file", "redir_noloc", "redir_loop", "redir_loop2", "redir_chain6", "endless",
    "big_declared", "big_stream", "lie_long", "lie_short", "drip", "drip_headers", "stall", "html",
    "html_as_png", "text_jpeg", "svg", "gzip_bomb", "truncated", "bomb", "bomb_header", "tiff",
    "tiny", "http_404", "storm", "retry_after_too_long", "noai", "noai_scoped", "noai_multi",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_case_reason(run, name):
    res = run["results"][name]
    expected = run["cases"][name][1]
    assert res.reason == expected, (name, res.to_dict())
    assert res.status == ("ok" if expected == Reason.OK else "error")
    if res.ok:
        assert res.sha256 and Path(res.path).is_file()
        assert Path(res.path).resolve().is_relative_to(run["out"].resolve())
    else:
        assert res.path is None


@pytest.mark.parametrize("name,reason", [
    ("direct_localhost", Reason.PRIVATE_ADDRESS), ("direct_decimal", Reason.PRIVATE_ADDRESS),
    ("direct_ipv6", Reason.PRIVATE_ADDRESS), ("direct_other", Reason.PRIVATE_ADDRESS),
    ("direct_ftp", Reason.BAD_SCHEME), ("dup_same_bytes", Reason.DUPLICATE),
    ("garbage", Reason.BAD_URL), ("empty", Reason.BAD_URL),
])
def test_direct_urls(run, name, reason):
    res = run["results"][name]
    assert (res.status, res.reason) == ("error", reason), res.to_dict()


def test_no_connection_to_an_address_that_was_not_allowed(run):
    main, other, six = run["main"], run["other"], run["six"]
    assert run["spy"], "the spy saw no connections at all"
    assert set(run["spy"]) == {("127.0.0.1", main.port)}
    if other is not None:
        assert other.connections == 0 and other.log == []
    if six is not None:
        assert six.connections == 0 and six.log == []
    # Every request that reached the main server named it by its allowed literal host.
    assert {r["host"] for r in main.log} == {f"127.0.0.1:{main.port}"}
    # Redirect targets that were refused were never requested.
    assert not any(r["path"].startswith("/img/9") for r in main.log)


def test_nothing_written_outside_the_store(run):
    root, out = run["root"], run["out"]
    assert set(os.listdir(root)) - run["before"] == {"store"}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    assert not [p for p in files if p.name.startswith(".")], "temp files left behind"
    ok = [r for r in run["results"].values() if r.ok]
    stored = [p for p in files if p.suffix == ".jpg"]
    assert len(stored) == len(ok)


def test_stored_images_are_clean_rgb_with_metadata(run):
    res = run["results"]["ok_polyglot"]
    data = Path(res.path).read_bytes()
    assert POLYGLOT_PAYLOAD not in data and ZIP_MAGIC not in data
    with Image.open(res.path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) == 240
    jpeg = run["results"]["ok_jpeg"]
    meta = json.loads(Path(jpeg.path).with_suffix(".json").read_text())
    assert meta["sha256"] == jpeg.sha256 and meta["url"] == jpeg.url
    assert meta["dhash"] == jpeg.dhash and len(meta["dhash"]) == 16
    assert {"query", "engine", "licence", "creator", "landing_page"} <= set(meta)
    manifest = (run["out"] / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == sum(r.ok for r in run["results"].values())


def test_retries_and_politeness(run):
    main = run["main"]
    assert main.counter("storm") == 1 + MAX_RETRIES  # 5xx storm: retried, then given up
    assert main.counter("flaky") == 3  # two 500s then the image
    assert main.counter("429_long") == 1  # Retry-After beyond the limit: no retry
    hits = [r["t"] for r in main.log if r["path"].startswith("/429?key=r429")]
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.95  # Retry-After: 1 was honoured
    ua = {r["headers"].get("User-Agent") for r in main.log}
    assert len(ua) == 1 and "ie-env" in ua.pop()
    assert {r["headers"].get("Accept-Encoding") for r in main.log} == {"identity"}
    assert run["results"]["ok_429"].attempts == 2


def test_stats_count_every_outcome(run):
    stats = run["stats"]
    assert stats["total"] == len(run["results"])
    assert stats[Reason.OK] == sum(r.ok for r in run["results"].values())
    assert stats[Reason.PRIVATE_ADDRESS] >= 14


def test_rebinding_name_is_connected_at_the_checked_address(servers, tmp_path):
    main, other, _ = servers
    if other is None or other.port != main.port:
        pytest.skip("could not bind 127.0.0.2 on the same port")
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    cfg = _cfg(main, allow_private=[f"rebind.test:{main.port}"])
    before = other.connections
    with Fetcher(str(tmp_path / "s"), cfg, resolver=resolver) as f:
        res = f.fetch(f"http://rebind.test:{main.port}/img/70.jpg")
    assert res.ok, res.to_dict()
    assert calls == ["rebind.test"]
    assert other.connections == before
    assert main.log[-1]["host"] == f"rebind.test:{main.port}"


def test_proxy_environment_is_ignored(servers, tmp_path, monkeypatch):
    main, _, _ = servers
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with Fetcher(str(tmp_path / "s"), _cfg(main)) as f:
        res = f.fetch(main.url("/img/71.jpg"))
    assert res.ok, res.to_dict()


def test_cli_prints_one_json_line_per_url(servers, tmp_path, capsys, monkeypatch):
    from ie_env.fetcher.cli import main as cli_main

    main, _, _ = servers
    out = tmp_path / "cli"
    urls = [main.url("/img/60.jpg"), main.url("/404"), f"http://localhost:{main.port}/img/61.jpg",
            main.url("/bomb_header.png"), main.url("/noai"), main.url("/img/60.jpg?again"),
            main.url("/loop")]
    code = cli_main(["--out", str(out), "--allow-private", f"127.0.0.1:{main.port}",
                     "--deadline", "3", "--set", "backoff_s=0.01", *urls])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["url"] for x in lines] == urls
    assert [x["reason"] for x in lines] == ["ok", "http_404", "private_address", "decompression_bomb",
                                            "noai", "duplicate", "too_many_redirects"]
    assert [x["status"] for x in lines] == ["ok"] + ["error"] * 6
    assert Path(lines[0]["path"]).is_file() and len(lines[0]["sha256"]) == 64
    assert Path(lines[0]["path"]).resolve().is_relative_to(out.resolve())
    # stdin input, and a second run answers the stored URL from the store
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(urls[0] + "\n\n"))
    assert cli_main(["--out", str(out), "--allow-private", f"127.0.0.1:{main.port}"]) == 0
    again = json.loads(capsys.readouterr().out.strip())
    assert again["status"] == "ok" and again["sha256"] == lines[0]["sha256"] and again.get("cached")


def test_cli_exits_1_when_every_url_failed(tmp_path, capsys):
    from ie_env.fetcher.cli import main as cli_main

    # A loopback address without --allow-private is refused before any connection is made.
    assert cli_main(["--out", str(tmp_path), "http://127.0.0.1:1/a.jpg", "ftp://127.0.0.1/b.jpg"]) == 1
    reasons = [json.loads(x)["reason"] for x in capsys.readouterr().out.splitlines()]
    assert len(reasons) == 2 and "ok" not in reasons


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    from ie_env.fetcher.cli import main as cli_main

    assert cli_main(["--out", str(tmp_path), "--set", "no_such_key=1", "http://127.0.0.1:1/"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert cli_main(["--out", str(tmp_path), "--allow-private", "[::1", "http://127.0.0.1:1/"]) == 2
