"""One search interface for every image source.

An engine answers ``search(query, n) -> list[SearchHit]`` and has a ``name``. Each hit keeps what a
downloader and a paper trail need: the image URL, its caption or title, licence, creator and landing
page, the engine and rank, plus an engine-specific ``extra`` dict.

Errors are typed so a caller can tell a spent quota from a bad key from a broken answer:
``QuotaError`` (HTTP 429 or an engine's "rate limit" answer), ``AuthError`` (missing or rejected
credentials), ``EngineResponseError`` (an answer that cannot be read). All derive from
``EngineError``.

``JsonHttpClient`` is the small HTTP helper the web engines share: a ``requests`` session that ignores
proxy environment variables (unless a proxy is configured), retries 5xx with backoff, maps status
codes to the errors above, and keeps a credential-free trace of the requests of the last search for
the recorder.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

log = logging.getLogger(__name__)

USER_AGENT = "ie-env/0.1 (Internet Explorer reproduction; research image search; honours X-Robots-Tag noai)"

#: Query-parameter names whose values are credentials; they never reach a recorded trace.
SECRET_PARAM_NAMES = frozenset({
    "api_key", "apikey", "key", "token", "access_token", "auth", "auth_token", "client_id",
    "client_secret", "secret", "password", "passwd", "sig", "signature", "oauth_token",
    "oauth_signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
})
REDACTED = "REDACTED"


class EngineError(RuntimeError):
    """A search failed; ``engine`` names the engine."""

    kind = "engine_error"

    def __init__(self, engine: str, message: str) -> None:
        super().__init__(f"{engine}: {message}")
        self.engine = engine
        self.message = message


class QuotaError(EngineError):
    """The engine refused for rate or quota reasons (HTTP 429 or an equivalent answer)."""

    kind = "quota"

    def __init__(self, engine: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(engine, message)
        self.retry_after = retry_after


class AuthError(EngineError):
    """Credentials are missing, malformed or rejected."""

    kind = "auth"


class EngineResponseError(EngineError):
    """The engine answered something that is not a valid search answer."""

    kind = "bad_response"


ERROR_KINDS: dict[str, type[EngineError]] = {
    cls.kind: cls for cls in (EngineError, QuotaError, AuthError, EngineResponseError)
}


@dataclass
class SearchHit:
    """One image found by an engine."""

    url: str
    caption: str = ""
    licence: str | None = None
    creator: str | None = None
    landing_page: str | None = None
    engine: str = ""
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """Alias of ``caption`` (engines that return titles put them there)."""
        return self.caption

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchHit":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SearchHit fields: {sorted(unknown)}")
        if not isinstance(data.get("url"), str) or not data.get("url"):
            raise ValueError("a SearchHit needs a non-empty string url")
        return cls(**{k: data[k] for k in data})


class SearchEngine(abc.ABC):
    """Base class: ``search(query, n)`` returns at most ``n`` hits ranked 0, 1, ..."""

    name: str = "engine"

    @abc.abstractmethod
    def search(self, query: str, n: int) -> list[SearchHit]:
        """Up to ``n`` hits for ``query``, best first."""

    # Engines that talk HTTP fill this with the (credential-free) requests of the last search,
    # per thread, so a recorder can keep them beside the answer.
    def last_trace(self) -> list[dict[str, Any]]:
        http = getattr(self, "http", None)
        return http.trace() if http is not None else []

    def secrets(self) -> list[str]:
        """Credential values this engine holds (scrubbed from anything recorded)."""
        return []

    def close(self) -> None:
        """Release sessions and files."""

    @staticmethod
    def check_args(query: str, n: int) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")


def finalize_hits(hits: Iterable[SearchHit], n: int, engine: str) -> list[SearchHit]:
    """Drop empty and repeated URLs, keep the first ``n``, number ranks 0.."""
    out: list[SearchHit] = []
    seen: set[str] = set()
    for h in hits:
        if not h.url or h.url in seen:
            continue
        seen.add(h.url)
        h.engine = engine
        h.rank = len(out)
        out.append(h)
        if len(out) >= n:
            break
    return out


# ------------------------------------------------------------------------------------- redaction


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """``url`` with credential-like query parameters and known secret values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url, secrets)
    query = [(k, REDACTED if k.lower() in SECRET_PARAM_NAMES else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    netloc = parts.netloc
    if "@" in netloc:  # userinfo
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    out = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
    return scrub(out, secrets)


def redact_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: (REDACTED if str(k).lower() in SECRET_PARAM_NAMES else v) for k, v in (params or {}).items()}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (4+ characters) in ``text``."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return text


# ------------------------------------------------------------------------------------- HTTP client


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
        return max(0.0, secs) if secs == secs else None  # NaN guard
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class JsonHttpClient:
    """A polite JSON-over-HTTP client for search APIs (not for image bytes: that is the fetcher)."""

    def __init__(self, engine: str, timeout: float = 20.0, retries: int = 2, backoff: float = 0.5,
                 max_retry_after: float = 10.0, proxy: str | None = None,
                 user_agent: str = USER_AGENT, rng: random.Random | None = None) -> None:
        self.engine = engine
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.session = requests.Session()
        self.session.trust_env = False  # ignore *_PROXY variables and .netrc
        if proxy:
            self.session.proxies = {"http": proxy, "https": proxy}
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Accept"] = "application/json"
        self._rng = rng or random.Random(0)
        self._local = threading.local()
        self.secrets: list[str] = []

    # -- trace of the current search (per thread) --
    def start_trace(self) -> None:
        self._local.trace = []

    def trace(self) -> list[dict[str, Any]]:
        return list(getattr(self._local, "trace", []))

    def _note(self, method: str, url: str, params: Mapping[str, Any] | None, status: int | None) -> None:
        trace = getattr(self._local, "trace", None)
        if trace is None:
            return
        entry = {"method": method, "url": redact_url(url, self.secrets),
                 "params": {k: scrub(str(v), self.secrets) for k, v in redact_params(params).items()},
                 "status": status}
        trace.append(entry)

    def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                json_body: Any = None, data: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, parse_json: bool = True) -> Any:
        """Send one request with retries; return parsed JSON (or the text when ``parse_json=False``)."""
        attempt = 0
        while True:
            try:
                resp = self.session.request(method, url, params=params, json=json_body, data=data,
                                            headers=dict(headers or {}), timeout=self.timeout,
                                            allow_redirects=True)
            except requests.RequestException as exc:
                self._note(method, url, params, None)
                if attempt < self.retries:
                    self._sleep(attempt, None)
                    attempt += 1
                    continue
                raise EngineError(self.engine, f"request failed: {type(exc).__name__}: "
                                               f"{scrub(str(exc), self.secrets)}") from None
            self._note(method, url, params, resp.status_code)
            status = resp.status_code
            if status == 429:
                wait = parse_retry_after(resp.headers.get("Retry-After"))
                if attempt < self.retries and wait is not None and wait <= self.max_retry_after:
                    self._sleep(attempt, wait)
                    attempt += 1
                    continue
                raise QuotaError(self.engine, f"rate limited or quota spent (HTTP 429){_short(resp)}",
                                 retry_after=wait)
            if status in (401, 403):
                raise AuthError(self.engine, f"credentials rejected (HTTP {status}){_short(resp)}")
            if status >= 500:
                if attempt < self.retries:
                    self._sleep(attempt, parse_retry_after(resp.headers.get("Retry-After")))
                    attempt += 1
                    continue
                raise EngineError(self.engine, f"server error HTTP {status}{_short(resp)}")
            if status >= 400:
                raise EngineError(self.engine, f"HTTP {status}{_short(resp)}")
            if not parse_json:
                return resp.text
            try:
                return resp.json()
            except ValueError:
                raise EngineResponseError(self.engine, f"answer is not JSON{_short(resp)}") from None

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        delay = self.backoff * (2 ** attempt) * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        time.sleep(delay)

    def close(self) -> None:
        self.session.close()


def _short(resp: requests.Response, limit: int = 160) -> str:
    try:
        text = resp.text[:limit].strip().replace("\n", " ")
    except Exception:  # pragma: no cover - undecodable body
        return ""
    return f": {text}" if text else ""


def as_text(value: Any) -> str:
    """A display string from a JSON value (None -> "")."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
