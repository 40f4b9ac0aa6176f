"""Flickr ``flickr.photos.search``: API key from an environment variable, licence filter, sizes via
``extras=url_*``.

The key is read from ``$FLICKR_API_KEY`` (``api_key_env`` names another variable) when the first
search runs; without one the search raises ``AuthError``. Answers are paged (``per_page`` <= 500)
until ``n`` hits with a usable size are collected or the pages run out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ie_env.engines.base import (AuthError, EngineError, EngineResponseError, JsonHttpClient,
                                 QuotaError, SearchEngine, SearchHit, as_text, finalize_hits)

#: Flickr licence ids (``flickr.photos.licenses.getInfo``).
FLICKR_LICENSES: dict[str, str] = {
    "0": "All Rights Reserved",
    "1": "CC BY-NC-SA 2.0",
    "2": "CC BY-NC 2.0",
    "3": "CC BY-NC-ND 2.0",
    "4": "CC BY 2.0",
    "5": "CC BY-SA 2.0",
    "6": "CC BY-ND 2.0",
    "7": "No known copyright restrictions",
    "8": "United States Government Work",
    "9": "CC0 1.0",
    "10": "Public Domain Mark 1.0",
    "11": "CC BY 4.0",
    "12": "CC BY-SA 4.0",
    "13": "CC BY-ND 4.0",
    "14": "CC BY-NC 4.0",
    "15": "CC BY-NC-SA 4.0",
    "16": "CC BY-NC-ND 4.0",
}
_AUTH_CODES = {98, 99, 100}  # login failed / insufficient permissions / invalid API key
_QUOTA_CODES = {105}  # service currently unavailable (also sent when a key is throttled)


@dataclass
class FlickrConfig:
    base_url: str = "https://api.flickr.com/services/rest/"
    landing_base: str = "https://www.flickr.com/photos/"
    api_key_env: str = "FLICKR_API_KEY"
    #: Licence ids to accept (see ``FLICKR_LICENSES``); empty = any licence.
    licenses: list[str] = field(default_factory=lambda: [k for k in FLICKR_LICENSES if k != "0"])
    #: Size keys in order of preference; the first one present in a photo's record is used.
    sizes: list[str] = field(default_factory=lambda: ["url_l", "url_c", "url_z", "url_b", "url_m", "url_o"])
    per_page: int = 100
    max_pages: int = 10
    sort: str = "relevance"
    safe_search: int = 1
    content_type: int = 1
    timeout: float = 20.0
    retries: int = 2
    proxy: str | None = None

    def validate(self) -> None:
        if not 1 <= self.per_page <= 500:
            raise ValueError("flickr per_page must be in 1..500")
        if self.max_pages < 1:
            raise ValueError("flickr max_pages must be >= 1")
        bad = [x for x in self.sizes if not x.startswith("url_")]
        if bad or not self.sizes:
            raise ValueError(f"flickr sizes must be url_* keys, got {self.sizes}")


class FlickrEngine(SearchEngine):
    name = "flickr"

    def __init__(self, config: FlickrConfig | None = None, api_key: str | None = None) -> None:
        self.config = config or FlickrConfig()
        self.config.validate()
        self._api_key = api_key
        self.http = JsonHttpClient(self.name, timeout=self.config.timeout,
                                   retries=self.config.retries, proxy=self.config.proxy)

    def _key(self) -> str:
        key = self._api_key or os.environ.get(self.config.api_key_env, "")
        if not key.strip():
            raise AuthError(self.name, f"no API key: set ${self.config.api_key_env}")
        self.http.secrets = [key]
        return key.strip()

    def secrets(self) -> list[str]:
        key = self._api_key or os.environ.get(self.config.api_key_env, "")
        return [key] if key else []

    def search(self, query: str, n: int) -> list[SearchHit]:
        self.check_args(query, n)
        self.http.start_trace()
        if n == 0:
            return []
        key = self._key()
        cfg = self.config
        per_page = min(cfg.per_page, max(n, 1), 500)
        hits: list[SearchHit] = []
        page = 1
        while len(hits) < n and page <= cfg.max_pages:
            params: dict[str, Any] = {
                "method": "flickr.photos.search", "api_key": key, "text": query,
                "per_page": per_page, "page": page, "sort": cfg.sort, "media": "photos",
                "content_type": cfg.content_type, "safe_search": cfg.safe_search,
                "extras": ",".join(["license", "owner_name", "description", "tags", *cfg.sizes]),
                "format": "json", "nojsoncallback": 1,
            }
            if cfg.licenses:
                params["license"] = ",".join(str(x) for x in cfg.licenses)
            data = self.http.request("GET", cfg.base_url, params=params)
            photos, pages = self._parse_page(data)
            for p in photos:
                hit = self._hit(p)
                if hit is not None:
                    hits.append(hit)
            if not photos or page >= pages:
                break
            page += 1
        return finalize_hits(hits, n, self.name)

    def _parse_page(self, data: Any) -> tuple[list[dict], int]:
        if not isinstance(data, dict):
            raise EngineResponseError(self.name, "answer is not a JSON object")
        if data.get("stat") != "ok":
            code = data.get("code")
            msg = as_text(data.get("message")) or "unknown error"
            if code in _AUTH_CODES:
                raise AuthError(self.name, f"{msg} (code {code})")
            if code in _QUOTA_CODES:
                raise QuotaError(self.name, f"{msg} (code {code})")
            raise EngineError(self.name, f"{msg} (code {code})")
        block = data.get("photos")
        if not isinstance(block, dict) or not isinstance(block.get("photo", []), list):
            raise EngineResponseError(self.name, "answer has no photos.photo list")
        try:
            pages = int(block.get("pages", 1) or 1)
        except (TypeError, ValueError):
            pages = 1
        return [p for p in block.get("photo", []) if isinstance(p, dict)], pages

    def _hit(self, p: dict) -> SearchHit | None:
        url, size_key = None, None
        for key in self.config.sizes:
            if isinstance(p.get(key), str) and p[key]:
                url, size_key = p[key], key
                break
        if url is None:
            return None
        lic = str(p.get("license", ""))
        owner, pid = p.get("owner"), p.get("id")
        desc = p.get("description")
        if isinstance(desc, dict):
            desc = desc.get("_content", "")
        suffix = size_key[4:]
        extra = {"id": as_text(pid), "owner": as_text(owner), "size": suffix,
                 "width": p.get(f"width_{suffix}"), "height": p.get(f"height_{suffix}"),
                 "licence_id": lic, "tags": as_text(p.get("tags")), "description": as_text(desc)}
        return SearchHit(
            url=url, caption=as_text(p.get("title")),
            licence=FLICKR_LICENSES.get(lic, f"flickr-license-{lic}" if lic else None),
            creator=as_text(p.get("ownername")) or as_text(owner) or None,
            landing_page=(f"{self.config.landing_base.rstrip('/')}/{owner}/{pid}"
                          if owner and pid else None),
            extra=extra)

    def close(self) -> None:
        self.http.close()
