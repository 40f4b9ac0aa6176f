"""Wikimedia Commons through the MediaWiki API: a file-namespace search as a generator, with
``imageinfo`` (URL, scaled thumbnail, MIME, licence and author from ``extmetadata``).

One request: ``action=query&generator=search&gsrnamespace=6&gsrsearch=<q> filetype:bitmap&
prop=imageinfo&iiprop=url|mime|size|extmetadata&iiurlwidth=<w>``; paging follows ``continue``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from ie_env.engines.base import (EngineError, EngineResponseError, JsonHttpClient, QuotaError,
                                 SearchEngine, SearchHit, as_text, finalize_hits)

_TAG = re.compile(r"<[^>]+>")


def strip_html(text: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", text or "")).split())


@dataclass
class WikimediaConfig:
    base_url: str = "https://commons.wikimedia.org/w/api.php"
    per_page: int = 50
    max_pages: int = 10
    #: Thumbnail width asked for (the hit URL is the thumbnail); 0 = original file.
    thumb_width: int = 1024
    #: Appended to every query (restricts to raster images).
    query_suffix: str = "filetype:bitmap"
    mime_types: list[str] = field(default_factory=lambda: ["image/jpeg", "image/png", "image/webp",
                                                           "image/gif"])
    #: Substrings of ``LicenseShortName`` to accept (case-insensitive), e.g. ["CC BY", "CC0",
    #: "Public domain"]; empty = any.
    licenses: list[str] = field(default_factory=list)
    timeout: float = 20.0
    retries: int = 2
    proxy: str | None = None

    def validate(self) -> None:
        if not 1 <= self.per_page <= 500:
            raise ValueError("wikimedia per_page must be in 1..500")
        if self.max_pages < 1 or self.thumb_width < 0:
            raise ValueError("wikimedia max_pages must be >= 1 and thumb_width >= 0")


class WikimediaEngine(SearchEngine):
    name = "wikimedia"

    def __init__(self, config: WikimediaConfig | None = None) -> None:
        self.config = config or WikimediaConfig()
        self.config.validate()
        self.http = JsonHttpClient(self.name, timeout=self.config.timeout,
                                   retries=self.config.retries, proxy=self.config.proxy)

    def search(self, query: str, n: int) -> list[SearchHit]:
        self.check_args(query, n)
        self.http.start_trace()
        if n == 0:
            return []
        cfg = self.config
        text = f"{query} {cfg.query_suffix}".strip() if cfg.query_suffix else query
        hits: list[SearchHit] = []
        cont: dict[str, Any] = {}
        for _ in range(cfg.max_pages):
            params: dict[str, Any] = {
                "action": "query", "format": "json", "formatversion": 2,
                "generator": "search", "gsrsearch": text, "gsrnamespace": 6,
                "gsrlimit": min(cfg.per_page, max(n, 1)), "prop": "imageinfo",
                "iiprop": "url|mime|size|extmetadata", "maxlag": 5, **cont,
            }
            if cfg.thumb_width:
                params["iiurlwidth"] = cfg.thumb_width
            data = self.http.request("GET", cfg.base_url, params=params)
            pages = self._parse(data)
            hits.extend(h for h in (self._hit(p) for p in pages) if h is not None)
            nxt = data.get("continue")
            if len(hits) >= n or not isinstance(nxt, dict) or not pages:
                break
            cont = {k: v for k, v in nxt.items() if isinstance(v, (str, int))}
        return finalize_hits(hits, n, self.name)

    def _parse(self, data: Any) -> list[dict]:
        if not isinstance(data, dict):
            raise EngineResponseError(self.name, "answer is not a JSON object")
        err = data.get("error")
        if isinstance(err, dict):
            code = as_text(err.get("code"))
            info = as_text(err.get("info"))
            if code in ("maxlag", "ratelimited"):
                raise QuotaError(self.name, f"{code}: {info}")
            raise EngineError(self.name, f"{code}: {info}")
        query = data.get("query")
        if query is None:  # no results at all
            return []
        pages = query.get("pages") if isinstance(query, dict) else None
        if isinstance(pages, dict):  # formatversion=1 style
            pages = list(pages.values())
        if not isinstance(pages, list):
            raise EngineResponseError(self.name, "answer has no query.pages list")
        pages = [p for p in pages if isinstance(p, dict)]
        return sorted(pages, key=lambda p: p.get("index", 1 << 30))

    def _hit(self, page: dict) -> SearchHit | None:
        infos = page.get("imageinfo")
        if not isinstance(infos, list) or not infos or not isinstance(infos[0], dict):
            return None
        info = infos[0]
        mime = as_text(info.get("mime"))
        if self.config.mime_types and mime not in self.config.mime_types:
            return None
        url = info.get("thumburl") or info.get("url")
        if not isinstance(url, str) or not url:
            return None
        meta = info.get("extmetadata") if isinstance(info.get("extmetadata"), dict) else {}

        def field_(name: str) -> str:
            v = meta.get(name)
            return strip_html(as_text(v.get("value"))) if isinstance(v, dict) else ""

        licence = field_("LicenseShortName") or None
        if self.config.licenses:
            low = (licence or "").lower()
            if not any(x.lower() in low for x in self.config.licenses):
                return None
        title = as_text(page.get("title"))
        caption = field_("ImageDescription") or re.sub(r"^File:|\.\w+$", "", title)
        return SearchHit(url=url, caption=caption, licence=licence,
                         creator=field_("Artist") or None,
                         landing_page=as_text(info.get("descriptionurl")) or None,
                         extra={"title": title, "pageid": page.get("pageid"), "mime": mime,
                                "original_url": as_text(info.get("url")),
                                "width": info.get("width"), "height": info.get("height"),
                                "licence_url": field_("LicenseUrl") or None})

    def close(self) -> None:
        self.http.close()
