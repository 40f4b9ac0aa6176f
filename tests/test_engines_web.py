"""Web engine clients against answers in each service's recorded format, served on 127.0.0.1."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from _hostile_server import HostileServer
from ie_env.config import ConfigError
from ie_env.engines.base import AuthError, EngineError, EngineResponseError, QuotaError, SearchHit
from ie_env.engines.clip_retrieval import ClipRetrievalConfig, ClipRetrievalEngine
from ie_env.engines.flickr import FlickrConfig, FlickrEngine
from ie_env.engines.openverse import OpenverseConfig, OpenverseEngine
from ie_env.engines.registry import make_engine
from ie_env.engines.wikimedia import WikimediaConfig, WikimediaEngine

FLICKR_KEY = "k3y-0123456789abcdef"


def _flickr_photo(i, sizes=("url_l",), licence="4"):
    p = {"id": str(1000 + i), "owner": f"owner{i}@N00", "secret": "s", "server": "1", "farm": 1,
         "title": f"red robin {i}", "ispublic": 1, "isfriend": 0, "isfamily": 0, "license": licence,
         "ownername": f"Photographer {i}", "description": {"_content": f"desc {i}"}, "tags": "bird robin"}
    for s in sizes:
        p[s] = f"http://127.0.0.1:1/flickr-img/{i}_{s}.jpg"
        p[f"height_{s[4:]}"] = 768
        p[f"width_{s[4:]}"] = 1024
    return p


def _flickr(handler, q):
    srv = handler.server
    if q.get("api_key") == "bad":
        body = {"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"}
    elif q.get("text") == "quota":
        handler._send(429, b"Too Many Requests", "text/plain", headers=[("Retry-After", "3600")])
        return
    elif q.get("text") == "garbage":
        handler._send(200, b"<html>oops</html>", "text/html")
        return
    else:
        page = int(q["page"])
        per = int(q["per_page"])
        photos = [_flickr_photo(i, sizes=("url_c",) if i % 3 == 1 else ("url_l", "url_c"))
                  for i in range((page - 1) * per, page * per)]
        if page == 1:
            photos[0] = {k: v for k, v in photos[0].items() if not k.startswith("url_")}  # no size
        body = {"photos": {"page": page, "pages": 3, "perpage": per, "total": 3 * per, "photo": photos},
                "stat": "ok"}
    with srv.lock:
        srv.counters["flickr"] = srv.counters.get("flickr", 0) + 1
    handler._send(200, json.dumps(body).encode(), "application/json")


def _ov_item(i):
    return {"id": f"uuid-{i}", "title": f"tulip {i}", "foreign_landing_url": f"http://127.0.0.1:1/ov/page/{i}",
            "url": f"http://127.0.0.1:1/ov/{i}.jpg", "creator": f"Creator {i}", "creator_url": None,
            "license": "by-sa" if i % 2 else "cc0", "license_version": "4.0" if i % 2 else "1.0",
            "license_url": "http://127.0.0.1:1/licence", "provider": "flickr", "source": "flickr",
            "category": "photograph", "filesize": 1234, "filetype": "jpg", "tags": [], "attribution": "x",
            "thumbnail": f"http://127.0.0.1:1/ov/thumb/{i}", "height": 600, "width": 800}


def _openverse_images(handler, q):
    auth = handler.headers.get("Authorization")
    size = int(q["page_size"])
    if auth is None and size > 20:
        handler._send(401, b'{"detail":"Authentication credentials were not provided."}', "application/json")
        return
    if auth is not None and auth != "Bearer tok-XYZ-123456":
        handler._send(401, b'{"detail":"Invalid token."}', "application/json")
        return
    if q.get("q") == "throttled":
        handler._send(429, b'{"detail":"Request was throttled. Expected available in 86400 seconds."}',
                      "application/json", headers=[("Retry-After", "86400")])
        return
    page = int(q["page"])
    items = [_ov_item(i) for i in range((page - 1) * size, page * size)]
    body = {"result_count": 1000, "page_count": 50, "page_size": size, "page": page, "results": items}
    handler._send(200, json.dumps(body).encode(), "application/json")


def _openverse_token(handler, q):
    form = parse_qs(handler.server.log[-1]["body"].decode())
    if form.get("client_secret") == ["s3cret-value"] and form.get("grant_type") == ["client_credentials"]:
        body = {"access_token": "tok-XYZ-123456", "scope": "read write", "expires_in": 36000,
                "token_type": "Bearer"}
        handler._send(200, json.dumps(body).encode(), "application/json")
    else:
        handler._send(401, b'{"error":"invalid_client"}', "application/json")


def _wm_page(i, mime="image/jpeg", licence="CC BY-SA 4.0"):
    return {"pageid": 500 + i, "ns": 6, "title": f"File:Sunflower {i}.jpg", "index": i + 1,
            "imageinfo": [{"url": f"http://127.0.0.1:1/wm/orig/{i}.jpg",
                           "descriptionurl": f"http://127.0.0.1:1/wm/File:Sunflower_{i}.jpg",
                           "thumburl": f"http://127.0.0.1:1/wm/thumb/{i}.jpg", "mime": mime,
                           "width": 4000, "height": 3000,
                           "extmetadata": {
                               "LicenseShortName": {"value": licence},
                               "Artist": {"value": f"<a href='//127.0.0.1/u'>Artist&amp;{i}</a>"},
                               "ImageDescription": {"value": f"A <b>sunflower</b> {i}"},
                               "LicenseUrl": {"value": "http://127.0.0.1:1/lic"}}}]}


def _wikimedia(handler, q):
    if q.get("gsrsearch", "").startswith("lagged"):
        body = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged."}}
    elif q.get("gsrsearch", "").startswith("nothing"):
        body = {"batchcomplete": True}
    else:
        off = int(q.get("gsroffset", "0"))
        pages = [_wm_page(i, mime="image/svg+xml" if i == off + 1 else "image/jpeg",
                          licence="Public domain" if i == off + 2 else "CC BY-SA 4.0")
                 for i in range(off, off + 4)]
        pages.reverse()  # the API does not order pages; "index" does
        body = {"batchcomplete": True, "continue": {"gsroffset": off + 4, "continue": "gsroffset||"},
                "query": {"pages": pages}}
    handler._send(200, json.dumps(body).encode(), "application/json")


def _knn(handler, q):
    req = json.loads(handler.server.log[-1]["body"])
    text = req["text"]
    items = [{"url": f"http://127.0.0.1:1/laion/{i}.jpg", "caption": f"{text} {i}", "id": i,
              "similarity": 0.5 - i / 100} for i in range(req["num_images"])]
    items.insert(1, {"caption": "no url"})
    if text == "html":
        handler._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
    elif text == "wrapped":
        handler._send(200, b"<pre>" + json.dumps(items[:3]).encode() + b"</pre>", "text/html")
    else:
        handler._send(200, json.dumps(items).encode(), "application/json")


@pytest.fixture(scope="module")
def srv():
    s = HostileServer("127.0.0.1")
    s.route("/flickr/rest/", _flickr)
    s.route("/ov/v1/images/", _openverse_images)
    s.route("/ov/v1/auth_tokens/token/", _openverse_token)
    s.route("/wm/w/api.php", _wikimedia)
    s.route("/knn/knn-service", _knn)
    yield s
    s.stop()


# ------------------------------------------------------------------------------------- flickr


def test_flickr_pages_picks_sizes_and_keeps_licence(srv, monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", FLICKR_KEY)
    eng = FlickrEngine(FlickrConfig(base_url=srv.url("/flickr/rest/"), per_page=4, licenses=["4", "9"]))
    hits = eng.search("red robin", 6)
    assert [h.rank for h in hits] == list(range(6))
    assert all(isinstance(h, SearchHit) and h.engine == "flickr" for h in hits)
    assert hits[0].caption == "red robin 1" and hits[0].url.endswith("1_url_c.jpg")  # photo 0 had no size
    assert hits[1].url.endswith("2_url_l.jpg")  # url_l preferred over url_c
    assert hits[0].licence == "CC BY 2.0" and hits[0].creator == "Photographer 1"
    assert hits[0].landing_page.endswith("/photos/owner1@N00/1001")
    assert hits[0].extra["licence_id"] == "4" and hits[0].extra["size"] == "c"
    assert (hits[0].extra["width"], hits[0].extra["height"]) == (1024, 768)
    reqs = [r for r in srv.log if r["path"].startswith("/flickr/rest/") and "red+robin" in r["path"]]
    assert len(reqs) == 2  # 3 usable on page 1, 4 on page 2
    q = parse_qs(reqs[0]["path"].split("?", 1)[1])
    assert q["method"] == ["flickr.photos.search"] and q["license"] == ["4,9"]
    assert q["api_key"] == [FLICKR_KEY] and "url_l" in q["extras"][0]
    trace = eng.last_trace()
    assert len(trace) == 2 and all(FLICKR_KEY not in json.dumps(t) for t in trace)


def test_flickr_errors_are_clear(srv, monkeypatch):
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    cfg = FlickrConfig(base_url=srv.url("/flickr/rest/"), retries=0)
    with pytest.raises(AuthError, match="FLICKR_API_KEY"):
        FlickrEngine(cfg).search("x", 3)
    with pytest.raises(AuthError, match="Invalid API Key"):
        FlickrEngine(cfg, api_key="bad").search("x", 3)
    with pytest.raises(QuotaError) as e:
        FlickrEngine(cfg, api_key=FLICKR_KEY).search("quota", 3)
    assert e.value.retry_after == 3600
    with pytest.raises(EngineResponseError):
        FlickrEngine(cfg, api_key=FLICKR_KEY).search("garbage", 3)
    assert FlickrEngine(cfg, api_key=FLICKR_KEY).search("x", 0) == []
    with pytest.raises(ValueError):
        FlickrEngine(cfg, api_key=FLICKR_KEY).search("  ", 3)
    with pytest.raises(ValueError):
        FlickrConfig(per_page=900).validate()


# ------------------------------------------------------------------------------------- openverse


def test_openverse_anonymous_is_capped_at_20_per_page(srv, monkeypatch):
    monkeypatch.delenv("OPENVERSE_CLIENT_ID", raising=False)
    monkeypatch.delenv("OPENVERSE_CLIENT_SECRET", raising=False)
    eng = OpenverseEngine(OpenverseConfig(base_url=srv.url("/ov"), page_size=100,
                                          licenses=["by-sa", "cc0"], license_type="commercial"))
    hits = eng.search("tulip", 30)
    assert len(hits) == 30 and hits[29].caption == "tulip 29"
    assert hits[1].licence == "CC BY-SA 4.0" and hits[0].licence == "CC0 1.0"
    assert hits[1].creator == "Creator 1" and hits[1].landing_page.endswith("/ov/page/1")
    assert hits[1].extra["provider"] == "flickr"
    reqs = [parse_qs(r["path"].split("?", 1)[1]) for r in srv.log if r["path"].startswith("/ov/v1/images/")]
    assert [q["page_size"] for q in reqs[-2:]] == [["20"], ["20"]]
    assert reqs[-1]["license"] == ["by-sa,cc0"] and reqs[-1]["license_type"] == ["commercial"]


def test_openverse_oauth_client_credentials(srv, monkeypatch):
    monkeypatch.setenv("OPENVERSE_CLIENT_ID", "client-abc")
    monkeypatch.setenv("OPENVERSE_CLIENT_SECRET", "s3cret-value")
    eng = OpenverseEngine(OpenverseConfig(base_url=srv.url("/ov"), page_size=50))
    assert eng.authenticated
    hits = eng.search("tulip", 50)
    assert len(hits) == 50
    token_posts = [r for r in srv.log if r["path"] == "/ov/v1/auth_tokens/token/"]
    assert len(token_posts) == 1 and token_posts[0]["method"] == "POST"
    last = [r for r in srv.log if r["path"].startswith("/ov/v1/images/")][-1]
    assert last["headers"]["Authorization"] == "Bearer tok-XYZ-123456"
    eng.search("tulip", 5)
    assert len([r for r in srv.log if r["path"] == "/ov/v1/auth_tokens/token/"]) == 1  # token cached
    assert all("s3cret-value" not in json.dumps(t) and "tok-XYZ" not in json.dumps(t)
               for t in eng.last_trace())
    with pytest.raises(QuotaError):
        eng.search("throttled", 5)


def test_openverse_bad_credentials(srv, monkeypatch):
    monkeypatch.setenv("OPENVERSE_CLIENT_ID", "client-abc")
    monkeypatch.setenv("OPENVERSE_CLIENT_SECRET", "wrong")
    with pytest.raises(AuthError):
        OpenverseEngine(OpenverseConfig(base_url=srv.url("/ov"), retries=0)).search("tulip", 5)
    monkeypatch.delenv("OPENVERSE_CLIENT_SECRET")
    with pytest.raises(AuthError, match="both"):
        OpenverseEngine(OpenverseConfig(base_url=srv.url("/ov"))).search("tulip", 5)


# ------------------------------------------------------------------------------------- wikimedia


def test_wikimedia_orders_filters_and_pages(srv):
    eng = WikimediaEngine(WikimediaConfig(base_url=srv.url("/wm/w/api.php"), per_page=4))
    hits = eng.search("sunflower", 5)
    # page 1 holds 0..3 with 1 an SVG (dropped); page 2 holds 4..7 with 5 an SVG
    assert [h.extra["pageid"] for h in hits] == [500, 502, 503, 504, 506]
    h = hits[0]
    assert h.url.endswith("/wm/thumb/0.jpg") and h.extra["original_url"].endswith("/wm/orig/0.jpg")
    assert h.caption == "A sunflower 0" and h.creator == "Artist&0" and h.licence == "CC BY-SA 4.0"
    assert h.landing_page.endswith("File:Sunflower_0.jpg")
    q = parse_qs([r for r in srv.log if r["path"].startswith("/wm/")][-1]["path"].split("?", 1)[1])
    assert q["gsroffset"] == ["4"] and q["gsrnamespace"] == ["6"] and q["generator"] == ["search"]
    assert q["gsrsearch"] == ["sunflower filetype:bitmap"]
    pd = WikimediaEngine(WikimediaConfig(base_url=srv.url("/wm/w/api.php"), per_page=4,
                                         licenses=["public domain"], max_pages=2))
    assert [x.extra["pageid"] for x in pd.search("sunflower", 10)] == [502, 506]


def test_wikimedia_errors_and_empty_answers(srv):
    eng = WikimediaEngine(WikimediaConfig(base_url=srv.url("/wm/w/api.php")))
    with pytest.raises(QuotaError, match="maxlag"):
        eng.search("lagged", 3)
    assert eng.search("nothing", 3) == []


# ------------------------------------------------------------------------------------- clip retrieval


def test_clip_retrieval_posts_text_queries(srv):
    eng = ClipRetrievalEngine(ClipRetrievalConfig(base_url=srv.url("/knn"), overfetch=2.0))
    hits = eng.search("a photo of a fox", 5)
    assert [h.caption for h in hits] == [f"a photo of a fox {i}" for i in range(5)]
    assert hits[0].extra == {"id": 0, "similarity": 0.5}
    body = json.loads([r for r in srv.log if r["path"] == "/knn/knn-service"][-1]["body"])
    assert body["text"] == "a photo of a fox" and body["num_images"] == 10 and body["modality"] == "image"


def test_clip_retrieval_tolerates_non_json(srv):
    eng = ClipRetrievalEngine(ClipRetrievalConfig(base_url=srv.url("/knn")))
    assert eng.search("html", 5) == []
    assert [h.caption for h in eng.search("wrapped", 5)] == ["wrapped 0", "wrapped 1"]
    assert eng.stats == {"searches": 2, "non_json": 2}
    with pytest.raises(ValueError):
        ClipRetrievalConfig().validate()


def test_http_failures_map_to_engine_errors(srv):
    eng = ClipRetrievalEngine(ClipRetrievalConfig(base_url=srv.url("/status?code=503&x="), retries=1))
    with pytest.raises(EngineError, match="HTTP 404|HTTP 503"):
        eng.search("x", 3)
    dead = ClipRetrievalEngine(ClipRetrievalConfig(base_url="http://127.0.0.1:1", retries=0, timeout=2))
    with pytest.raises(EngineError, match="request failed"):
        dead.search("x", 3)


# ------------------------------------------------------------------------------------- registry


def test_registry_builds_engines_and_rejects_bad_config(srv, tmp_path, monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", FLICKR_KEY)
    eng = make_engine("wikimedia", {"base_url": srv.url("/wm/w/api.php")})
    assert eng.name == "wikimedia" and len(eng.search("sunflower", 2)) == 2
    with pytest.raises(ConfigError, match="valid engines"):
        make_engine("google", {})
    with pytest.raises(ConfigError, match="per_pagee"):
        make_engine("flickr", {"per_pagee": 3})
    with pytest.raises(ConfigError):
        make_engine("flickr", {"per_page": 0})
    with pytest.raises(ConfigError, match="snapshot"):
        make_engine("replay", {})
    rec = make_engine("flickr", {"base_url": srv.url("/flickr/rest/"), "per_page": 5},
                      record_to=str(tmp_path / "snap.jsonl"))
    assert rec.name == "flickr" and len(rec.search("red robin", 3)) == 3
    text = (tmp_path / "snap.jsonl").read_text()
    assert "red robin" in text and FLICKR_KEY not in text
