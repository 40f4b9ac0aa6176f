"""Record / replay: recorded answers come back offline and identically; misses are counted."""

from __future__ import annotations

import gzip
import json

import pytest

from _hostile_server import HostileServer
from ie_env.engines.base import AuthError, EngineError, QuotaError, SearchEngine, SearchHit
from ie_env.engines.flickr import FlickrConfig, FlickrEngine
from ie_env.engines.replay import (RecordingEngine, ReplayEngine, Snapshot, SnapshotError,
                                   SnapshotMiss, SnapshotRecorder)

SECRET = "SuperSecretKey-9876"


class ScriptedEngine(SearchEngine):
    """Answers from a dict; raises for queries mapped to an exception."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = answers
        self.calls = 0

    def search(self, query, n):
        self.calls += 1
        a = self.answers[query]
        if isinstance(a, Exception):
            raise a
        return [SearchHit(url=u, caption=f"{query} #{i}", licence="CC0 1.0", engine=self.name, rank=i)
                for i, u in enumerate(a[:n])]

    def secrets(self):
        return [SECRET]


def _record(tmp_path, answers, queries):
    path = tmp_path / "snap.jsonl"
    inner = ScriptedEngine(answers)
    with SnapshotRecorder(path) as rec:
        eng = RecordingEngine(inner, rec)
        out = {}
        for q, n in queries:
            try:
                out[(q, n)] = eng.search(q, n)
            except EngineError as e:
                out[(q, n)] = e
    return path, out


def test_replay_serves_recorded_answers_identically(tmp_path):
    answers = {"red robin": [f"http://127.0.0.1:1/r/{i}.jpg" for i in range(10)],
               "blue jay": [f"http://127.0.0.1:1/b/{i}.jpg" for i in range(4)]}
    path, live = _record(tmp_path, answers, [("red robin", 8), ("blue jay", 4)])
    snap = Snapshot.load(path)
    assert snap.engines() == ["scripted"] and len(snap) == 2
    a, b = ReplayEngine(snap), ReplayEngine(Snapshot.load(path))
    for eng in (a, b):
        got = eng.search("red robin", 8)
        assert [h.to_dict() for h in got] == [h.to_dict() for h in live[("red robin", 8)]]
        assert [h.url for h in eng.search("red  robin ", 3)] == answers["red robin"][:3]
    assert a.stats == {"served": 2, "misses": 0, "partial": 0, "errors": 0}
    # asking for more than was recorded: what exists, counted as partial
    assert len(a.search("red robin", 20)) == 8 and a.stats["partial"] == 1
    assert len(a.search("blue jay", 20)) == 4 and a.stats["partial"] == 2


def test_missing_queries_are_clear_counted_misses(tmp_path):
    path, _ = _record(tmp_path, {"a b": ["http://127.0.0.1:1/x.jpg"]}, [("a b", 5)])
    eng = ReplayEngine(path)
    with pytest.raises(SnapshotMiss, match="not in the snapshot"):
        eng.search("zebra", 5)
    empty = ReplayEngine(path, on_miss="empty")
    assert empty.search("zebra", 5) == [] and empty.search("okapi", 1) == []
    assert eng.stats["misses"] == 1 and empty.stats["misses"] == 2
    assert empty.missed_queries == ["zebra", "okapi"]


def test_recorded_errors_replay_as_the_same_error_type(tmp_path):
    answers = {"q": QuotaError("scripted", "HTTP 429"), "a": AuthError("scripted", "bad key")}
    path, live = _record(tmp_path, answers, [("q", 3), ("a", 3)])
    assert isinstance(live[("q", 3)], QuotaError)
    eng = ReplayEngine(path)
    with pytest.raises(QuotaError, match="replayed"):
        eng.search("q", 3)
    with pytest.raises(AuthError):
        eng.search("a", 3)
    assert eng.stats["errors"] == 2


def test_snapshot_holds_no_credentials(tmp_path):
    srv = HostileServer("127.0.0.1")
    try:
        def flickr(handler, q):
            body = {"stat": "ok", "photos": {"page": 1, "pages": 1, "photo": [
                {"id": "1", "owner": "o", "title": "t", "license": "9",
                 "url_l": f"http://127.0.0.1:1/i.jpg?echo={q.get('api_key')}"}]}}
            handler._send(200, json.dumps(body).encode(), "application/json")

        srv.route("/rest", flickr)
        path = tmp_path / "snap.jsonl"
        with SnapshotRecorder(path) as rec:
            eng = RecordingEngine(FlickrEngine(FlickrConfig(base_url=srv.url("/rest")), api_key=SECRET), rec)
            hits = eng.search("fox", 1)
        assert SECRET in hits[0].url  # the live answer echoed the key back ...
        text = path.read_text()
        assert SECRET not in text  # ... the snapshot does not hold it anywhere
        rec_line = [json.loads(x) for x in text.splitlines()][1]
        assert rec_line["trace"][0]["params"]["api_key"] == "REDACTED"
        assert "fox" in rec_line["trace"][0]["url"] or rec_line["trace"][0]["params"]["text"] == "fox"
    finally:
        srv.stop()


def test_export_is_canonical_and_shareable(tmp_path):
    answers = {"b": ["http://127.0.0.1:1/b.jpg"], "a": ["http://127.0.0.1:1/a.jpg"]}
    path, _ = _record(tmp_path, answers, [("b", 1), ("a", 1), ("b", 1)])
    snap = Snapshot.load(path)
    snap.images["http://127.0.0.1:1/a.jpg"] = {"kind": "image", "url": "http://127.0.0.1:1/a.jpg",
                                              "status": "ok", "sha256": "0" * 64}
    out1, out2 = tmp_path / "x.jsonl.gz", tmp_path / "y.jsonl.gz"
    snap.export(out1)
    Snapshot.load(out1).export(out2)
    assert out1.read_bytes() == out2.read_bytes()
    lines = gzip.decompress(out1.read_bytes()).decode().splitlines()
    kinds = [json.loads(x)["kind"] for x in lines]
    assert kinds == ["header", "search", "search", "image"]
    assert [json.loads(x).get("query") for x in lines[1:3]] == ["a", "b"]
    assert ReplayEngine(out2).search("a", 1)[0].url == "http://127.0.0.1:1/a.jpg"
    merged = Snapshot().merge(Snapshot.load(out1))
    assert merged.to_bytes() == Snapshot.load(out1).to_bytes()


def test_two_policies_see_the_same_frozen_web(tmp_path):
    answers = {f"q{i}": [f"http://127.0.0.1:1/{i}/{j}.jpg" for j in range(5)] for i in range(6)}
    path, _ = _record(tmp_path, answers, [(q, 5) for q in answers])

    def run(policy_order):
        eng = ReplayEngine(path)
        return {q: [h.url for h in eng.search(q, 5)] for q in policy_order}

    first = run(["q0", "q3", "q5"])
    second = run(["q5", "q1", "q0"])
    assert first["q0"] == second["q0"] == answers["q0"]
    assert first["q5"] == second["q5"] == answers["q5"]


def test_torn_lines_and_bad_files(tmp_path):
    path, _ = _record(tmp_path, {"a": ["http://127.0.0.1:1/a.jpg"]}, [("a", 1)])
    with open(path, "a") as fh:
        fh.write('{"kind": "search", "engine": "scr')  # a killed run's last line
    snap = Snapshot.load(path)
    assert len(snap) == 1 and snap.skipped_lines == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "header", "format": "something-else"}\n')
    assert Snapshot.load(bad).skipped_lines == 1
    with pytest.raises(SnapshotError):
        Snapshot.load(tmp_path / "missing.jsonl")
    mid = tmp_path / "mid.jsonl"
    mid.write_text('{"kind": "header", "format": "ie-env-snapshot", "version": 1}\nnot json\n'
                   '{"kind": "search", "engine": "e", "query": "q", "n": 1, "hits": []}\n')
    with pytest.raises(SnapshotError):
        Snapshot.load(mid, strict=True)
    assert len(Snapshot.load(mid)) == 1


def test_replay_needs_an_engine_when_the_snapshot_has_several(tmp_path):
    snap = Snapshot()
    for eng in ("flickr", "openverse"):
        snap.add({"kind": "search", "engine": eng, "query": "q", "n": 1,
                  "hits": [{"url": f"http://127.0.0.1:1/{eng}.jpg", "engine": eng}]})
    with pytest.raises(ValueError, match="several engines"):
        ReplayEngine(snap)
    assert ReplayEngine(snap, engine="openverse").search("q", 1)[0].engine == "openverse"
