"""Openverse ``/v1/images/``: anonymous (``page_size`` <= 20) or OAuth2 client credentials.

With ``$OPENVERSE_CLIENT_ID`` and ``$OPENVERSE_CLIENT_SECRET`` set (names configurable) the engine
gets a bearer token from ``/v1/auth_tokens/token/`` (``grant_type=client_credentials``), caches it
until shortly before it expires, and may ask for up to 500 results a page; anonymous use is capped at
20 a page, as the API requires. Licence filters map to the ``license`` / ``license_type`` parameters.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ie_env.engines.base import (AuthError, EngineError, EngineResponseError, JsonHttpClient,
                                 SearchEngine, SearchHit, as_text, finalize_hits)

ANON_MAX_PAGE_SIZE = 20
AUTH_MAX_PAGE_SIZE = 500


@dataclass
class OpenverseConfig:
    base_url: str = "https://api.openverse.org"
    client_id_env: str = "OPENVERSE_CLIENT_ID"
    client_secret_env: str = "OPENVERSE_CLIENT_SECRET"
    #: Licence codes accepted, e.g. ["by", "by-sa", "cc0", "pdm"]; empty = any.
    licenses: list[str] = field(default_factory=list)
    #: "commercial", "modification" or "all-cc" (comma-joined if several); empty = any.
    license_type: str = ""
    page_size: int = 20
    max_pages: int = 10
    mature: bool = False
    #: Extra query parameters passed as is (e.g. {"source": "wikimedia"}).
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 20.0
    retries: int = 2
    proxy: str | None = None

    def validate(self) -> None:
        if not 1 <= self.page_size <= AUTH_MAX_PAGE_SIZE:
            raise ValueError(f"openverse page_size must be in 1..{AUTH_MAX_PAGE_SIZE}")
        if self.max_pages < 1:
            raise ValueError("openverse max_pages must be >= 1")


def licence_name(code: str, version: str | None) -> str | None:
    """Openverse (``by-sa``, ``4.0``) -> ``CC BY-SA 4.0``; ``cc0`` -> ``CC0 1.0``; ``pdm`` -> PDM."""
    code = (code or "").lower()
    if not code:
        return None
    if code == "cc0":
        return "CC0 1.0"
    if code == "pdm":
        return "Public Domain Mark 1.0"
    name = "CC " + code.upper()
    return f"{name} {version}" if version else name


class OpenverseEngine(SearchEngine):
    name = "openverse"

    def __init__(self, config: OpenverseConfig | None = None, client_id: str | None = None,
                 client_secret: str | None = None) -> None:
        self.config = config or OpenverseConfig()
        self.config.validate()
        self._client_id = client_id
        self._client_secret = client_secret
        self.http = JsonHttpClient(self.name, timeout=self.config.timeout,
                                   retries=self.config.retries, proxy=self.config.proxy)
        self._token: str | None = None
        self._token_expiry = 0.0
        self._lock = threading.Lock()
        self.http.secrets = self.secrets()

    # ---------------------------------------------------------------- credentials
    def _credentials(self) -> tuple[str, str] | None:
        cid = self._client_id or os.environ.get(self.config.client_id_env, "")
        sec = self._client_secret or os.environ.get(self.config.client_secret_env, "")
        if cid and sec:
            return cid.strip(), sec.strip()
        if cid or sec:
            raise AuthError(self.name, f"OAuth needs both ${self.config.client_id_env} and "
                                       f"${self.config.client_secret_env}")
        return None

    def secrets(self) -> list[str]:
        vals = [self._client_id or os.environ.get(self.config.client_id_env, ""),
                self._client_secret or os.environ.get(self.config.client_secret_env, ""),
                self._token or ""]
        return [v for v in vals if v]

    @property
    def authenticated(self) -> bool:
        return self._credentials() is not None

    def _bearer(self, force: bool = False) -> str | None:
        creds = self._credentials()
        if creds is None:
            return None
        with self._lock:
            if force or self._token is None or time.time() >= self._token_expiry:
                self.http.secrets = self.secrets()
                data = self.http.request(
                    "POST", self.config.base_url.rstrip("/") + "/v1/auth_tokens/token/",
                    data={"grant_type": "client_credentials", "client_id": creds[0],
                          "client_secret": creds[1]})
                token = data.get("access_token") if isinstance(data, dict) else None
                if not isinstance(token, str) or not token:
                    raise AuthError(self.name, "token endpoint returned no access_token")
                try:
                    ttl = float(data.get("expires_in", 3600))
                except (TypeError, ValueError):
                    ttl = 3600.0
                self._token = token
                self._token_expiry = time.time() + max(0.0, ttl - 60.0)
                self.http.secrets = self.secrets()
            return self._token

    # ---------------------------------------------------------------- search
    def search(self, query: str, n: int) -> list[SearchHit]:
        self.check_args(query, n)
        self.http.start_trace()
        if n == 0:
            return []
        cfg = self.config
        token = self._bearer()
        cap = AUTH_MAX_PAGE_SIZE if token else ANON_MAX_PAGE_SIZE
        page_size = max(1, min(cfg.page_size, cap, n))
        hits: list[SearchHit] = []
        page = 1
        retried_auth = False
        while len(hits) < n and page <= cfg.max_pages:
            params: dict[str, Any] = {"q": query, "page": page, "page_size": page_size,
                                      "mature": "true" if cfg.mature else "false", **cfg.params}
            if cfg.licenses:
                params["license"] = ",".join(cfg.licenses)
            if cfg.license_type:
                params["license_type"] = cfg.license_type
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                data = self.http.request("GET", cfg.base_url.rstrip("/") + "/v1/images/",
                                         params=params, headers=headers)
            except AuthError:
                if token and not retried_auth:  # expired token: get a fresh one once
                    retried_auth = True
                    token = self._bearer(force=True)
                    continue
                raise
            except EngineError as exc:
                # Past the last page the API answers 400; keep what was found.
                if hits and "HTTP 400" in str(exc):
                    break
                raise
            results, page_count = self._parse(data)
            hits.extend(h for h in (self._hit(r) for r in results) if h is not None)
            if not results or page >= page_count:
                break
            page += 1
        return finalize_hits(hits, n, self.name)

    def _parse(self, data: Any) -> tuple[list[dict], int]:
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise EngineResponseError(self.name, "answer has no results list")
        try:
            pages = int(data.get("page_count") or 1)
        except (TypeError, ValueError):
            pages = 1
        return [r for r in data["results"] if isinstance(r, dict)], pages

    def _hit(self, r: dict) -> SearchHit | None:
        url = r.get("url")
        if not isinstance(url, str) or not url:
            return None
        extra = {k: r.get(k) for k in ("id", "provider", "source", "license_url", "filetype",
                                       "width", "height", "thumbnail", "creator_url", "attribution")
                 if r.get(k) is not None}
        extra["license_code"] = as_text(r.get("license"))
        return SearchHit(url=url, caption=as_text(r.get("title")),
                         licence=licence_name(as_text(r.get("license")), r.get("license_version")),
                         creator=as_text(r.get("creator")) or None,
                         landing_page=as_text(r.get("foreign_landing_url")) or None, extra=extra)

    def close(self) -> None:
        self.http.close()
