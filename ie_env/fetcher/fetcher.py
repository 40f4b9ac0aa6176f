"""The image fetcher: concurrent, polite, and safe against hostile servers.

``Fetcher.fetch_many(hits)`` downloads search hits on a thread pool and returns one ``FetchResult``
per hit, in order, never raising for a bad URL or server: every failure is a ``reason`` code (see
``Reason``). Per image:

1. **Address.** http/https only; each hop's host is resolved once and every address checked
   (private, loopback, link-local, multicast, reserved are refused unless the literal ``HOST[:PORT]``
   is allow-listed); the connection goes to the checked address (``transport.PinnedAdapter``).
2. **Exchange.** At most ``max_redirects`` redirects, loops refused; per-host concurrency, rate and
   ``Retry-After`` cool-downs; retries with exponential backoff on 429/5xx/connection errors; one
   wall-clock ``deadline_s`` over all attempts, hops and bytes, enforced by a watchdog that shuts
   the socket; ``X-Robots-Tag`` ``noai``/``noimageai`` honoured; non-image content types refused
   before the body; ``Content-Length`` and a streamed byte cap (``max_bytes``); no content decoding.
3. **Image.** Pillow with a format allowlist and the pixel-count bomb guard; RGB, resized; decoded
   under a process-wide budget of pixel bytes in flight (``decode_budget_bytes``), so that memory
   stays bounded whatever the concurrency.
4. **Store.** sha256 exact-copy and dHash near-copy dedup, the target-test leakage guard, then an
   atomic write into the content-addressed store with metadata alongside.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urljoin

import requests
import urllib3.exceptions
from PIL import Image

from ie_env.engines.base import SearchHit, parse_retry_after
from ie_env.fetcher.addresses import AddressGuard, Resolver
from ie_env.fetcher.budget import shared_budget
from ie_env.fetcher.config import FetchConfig, FetchError, Reason
from ie_env.fetcher.decode import configure_pillow_memory, decode_image, dhash, dhash_hex, encode_image
from ie_env.fetcher.dedup import LeakageGuard
from ie_env.fetcher.limits import HostLimiter, backoff_delay
from ie_env.fetcher.robots import blocked_by_robots
from ie_env.fetcher.store import ImageStore, StoreError
from ie_env.fetcher.transport import WATCHDOG, PinnedAdapter, split_target

log = logging.getLogger(__name__)

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
#: Content types that are certainly not an image: refused before the body is read.
_NON_IMAGE_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
                    "application/xhtml", "application/pdf", "application/zip", "video/", "audio/",
                    "font/", "multipart/")
_CHUNK = 64 * 1024


@dataclass
class FetchRequest:
    """A URL to fetch and what to remember about where it came from."""

    url: str
    query: str = ""
    engine: str = ""
    licence: str | None = None
    creator: str | None = None
    landing_page: str | None = None
    caption: str = ""

    @classmethod
    def coerce(cls, item: "FetchRequest | SearchHit | Mapping[str, Any] | str", query: str = "",
               engine: str = "") -> "FetchRequest":
        if isinstance(item, FetchRequest):
            return item
        if isinstance(item, str):
            return cls(url=item, query=query, engine=engine)
        if isinstance(item, SearchHit):
            return cls(url=item.url, query=query, engine=item.engine or engine, licence=item.licence,
                       creator=item.creator, landing_page=item.landing_page, caption=item.caption)
        if isinstance(item, Mapping):
            return cls(url=str(item.get("url", "")), query=str(item.get("query", query) or ""),
                       engine=str(item.get("engine", engine) or ""), licence=item.get("licence"),
                       creator=item.get("creator"), landing_page=item.get("landing_page"),
                       caption=str(item.get("caption", "") or ""))
        raise TypeError(f"cannot fetch a {type(item).__name__}")


@dataclass
class FetchResult:
    url: str
    status: str  # "ok" | "error"
    reason: str
    detail: str = ""
    sha256: str | None = None
    dhash: str | None = None
    path: str | None = None
    final_url: str | None = None
    http_status: int | None = None
    bytes: int = 0
    width: int | None = None
    height: int | None = None
    format: str | None = None
    redirects: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0
    cached: bool = False
    duplicate_of: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        meta = d.pop("meta")
        out = {k: v for k, v in d.items() if v is not None and v != "" and v is not False}
        out.setdefault("reason", self.reason)
        out.update({k: v for k, v in meta.items() if v not in (None, "")})
        return out


@dataclass
class _Body:
    data: bytes
    status: int
    content_type: str
    final_url: str


class _Retry(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.status, self.retry_after = reason, detail, status, retry_after


class Fetcher:
    """Download images into an ``ImageStore``; see the module docstring for the pipeline."""

    def __init__(self, out_dir: str | None = None, config: FetchConfig | None = None, *,
                 store: ImageStore | None = None, leakage: LeakageGuard | None = None,
                 resolver: Resolver | None = None, recorder: Any = None, seed: int = 0) -> None:
        self.config = config or FetchConfig()
        self.config.validate()
        # The pixel-count guard here is stricter than Pillow's warning threshold; silence the warning
        # (its error at twice the threshold still fires and is mapped to decompression_bomb).
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        configure_pillow_memory()
        if store is None:
            if out_dir is None:
                raise ValueError("Fetcher needs out_dir or store")
            store = ImageStore(out_dir, fsync=self.config.fsync)
        self.store = store
        self.leakage = leakage
        self.recorder = recorder
        self.guard = AddressGuard(self.config.allow_private, resolver=resolver)
        self.adapter = PinnedAdapter(self.guard, pool_maxsize=self.config.concurrency,
                                     proxy=self.config.proxy)
        self.limiter = HostLimiter(self.config.per_host_concurrency, self.config.per_host_rate)
        #: Decoded pixel bytes in flight, shared with every fetcher of this process on the same budget.
        self.decode_budget = shared_budget(self.config.decode_budget_bytes)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._readers: list[tuple[str, Callable[[str], bytes]]] = []

    # ---------------------------------------------------------------- plumbing
    def register_reader(self, prefix: str, reader: Callable[[str], bytes]) -> None:
        """Serve URLs starting with ``prefix`` (e.g. ``corpus://<id>/``) from ``reader(url)``."""
        if prefix.lower().startswith(("http://", "https://")):
            raise ValueError("local readers cannot take over http(s) URLs")
        self._readers.append((prefix, reader))

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.trust_env = False  # proxies only from config; no .netrc
            s.mount("http://", self.adapter)
            s.mount("https://", self.adapter)
            s.headers.clear()
            s.headers.update({"User-Agent": self.config.user_agent,
                              "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
                              "Accept-Encoding": "identity", "Connection": "keep-alive"})
            self._local.session = s
            with self._stats_lock:
                self._sessions.append(s)
        return s

    def _count(self, *keys: str, n: int = 1) -> None:
        with self._stats_lock:
            for k in keys:
                self.stats[k] += n

    def close(self) -> None:
        """Finish queued work and release threads, connections and the store."""
        if self.leakage is not None and self.leakage.dropped:
            log.info("leakage guard: %d near-copies of target test images dropped", self.leakage.dropped)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for s in self._sessions:
            s.close()
        self.adapter.close()
        self.store.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- public API
    def fetch_many(self, items: Iterable[Any], query: str = "", engine: str = "") -> list[FetchResult]:
        return list(self.iter_fetch(items, query=query, engine=engine))

    def iter_fetch(self, items: Iterable[Any], query: str = "", engine: str = "") -> Iterator[FetchResult]:
        """Results in input order, fetched ``concurrency`` at a time."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.config.concurrency,
                                                thread_name_prefix="ie-fetch")
        window = self.config.concurrency * 4  # bounded look-ahead: any number of items, little memory
        pending: deque[Future] = deque()
        for it in items:
            pending.append(self._executor.submit(self.fetch, it, query, engine))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def fetch(self, item: Any, query: str = "", engine: str = "") -> FetchResult:
        """Fetch one image; never raises for anything a server or URL can do."""
        t0 = time.monotonic()
        state = {"attempts": 0, "redirects": 0, "final_url": None, "http_status": None}
        try:
            req = FetchRequest.coerce(item, query=query, engine=engine)
        except TypeError as exc:
            req = FetchRequest(url=repr(item)[:200])
            return self._error(req, Reason.BAD_URL, str(exc), state)
        try:
            result = self._fetch(req, state)
        except FetchError as exc:
            result = self._error(req, exc.reason, exc.detail, state, http_status=exc.http_status)
        except Exception as exc:  # a bug or an environment failure: report, never crash the batch
            log.exception("fetcher: unexpected error on %s", req.url)
            result = self._error(req, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", state)
        result.elapsed_s = round(time.monotonic() - t0, 4)
        self._count("total", result.reason)
        if result.ok:
            self._count("bytes", n=result.bytes)
        if self.recorder is not None:
            try:
                self.recorder.record_image({k: v for k, v in result.to_dict().items() if k != "path"})
            except Exception:  # recording must not break fetching
                log.exception("fetcher: could not record %s", req.url)
        return result

    # ---------------------------------------------------------------- pipeline
    def _error(self, req: FetchRequest, reason: str, detail: str, state: Mapping[str, Any],
               http_status: int | None = None, **kw: Any) -> FetchResult:
        return FetchResult(url=req.url, status="error", reason=reason, detail=detail[:300],
                           final_url=state.get("final_url"),
                           http_status=http_status or state.get("http_status"),
                           redirects=state.get("redirects", 0), attempts=state.get("attempts", 0),
                           meta=self._meta(req), **kw)

    @staticmethod
    def _meta(req: FetchRequest) -> dict[str, Any]:
        return {"query": req.query, "engine": req.engine, "licence": req.licence,
                "creator": req.creator, "landing_page": req.landing_page}

    def _fetch(self, req: FetchRequest, state: dict[str, Any]) -> FetchResult:
        url = req.url
        if not isinstance(url, str) or not url.strip():
            raise FetchError(Reason.BAD_URL, "empty url")
        url = url.strip()
        for prefix, reader in self._readers:
            if url.startswith(prefix):
                try:
                    data = reader(url)
                except Exception as exc:  # a reader may name the reason (``fetch_reason``)
                    raise FetchError(getattr(exc, "fetch_reason", Reason.BAD_URL), f"local reader: {exc}") from None
                return self._process(req, data, "", url, None, state)
        if self.config.reuse_stored:
            rec = self.store.lookup_url(url)
            if rec is not None:
                return FetchResult(url=url, status="ok", reason=Reason.OK, sha256=rec["sha256"],
                                   dhash=rec.get("dhash"), path=str(self.store.abspath(rec)),
                                   cached=True, meta=self._meta(req))
        body = self._download(url, state)
        return self._process(req, body.data, body.content_type, body.final_url, body.status, state)

    def _process(self, req: FetchRequest, data: bytes, content_type: str, final_url: str,
                 http_status: int | None, state: dict[str, Any]) -> FetchResult:
        cfg = self.config
        sha = hashlib.sha256(data).hexdigest()
        existing = self.store.get(sha)
        if existing is not None:
            return self._error(req, Reason.DUPLICATE, "same bytes as a stored image", state,
                               sha256=sha, dhash=existing.get("dhash"),
                               path=str(self.store.abspath(existing)), duplicate_of=sha,
                               bytes=len(data))
        dec = decode_image(data, cfg, self.decode_budget)
        dh = dhash(dec.image)
        if self.leakage is not None:
            leak, dist, target = self.leakage.check(dh)
            if leak:
                self._count("leak_dropped")
                return self._error(req, Reason.TARGET_LEAK,
                                   f"dHash distance {dist} to target test image {target}", state,
                                   sha256=sha, dhash=dhash_hex(dh), bytes=len(data))
        kind, other = self.store.reserve(sha, dh, cfg.dedup_hamming)
        if kind != "new":
            other = other or {}
            path = str(self.store.abspath(other)) if other.get("path") else None
            return self._error(req, Reason.DUPLICATE,
                               "same bytes as a stored image" if kind == "sha256"
                               else f"near-copy (dHash distance {other.get('distance', 0)})", state,
                               sha256=sha, dhash=dhash_hex(dh), path=path,
                               duplicate_of=other.get("sha256"), bytes=len(data))
        try:
            encoded, ext = encode_image(dec.image, cfg.store_format, cfg.quality)
            w, h = dec.image.size
            meta = {"url": req.url, "final_url": final_url, "query": req.query, "engine": req.engine,
                    "licence": req.licence, "creator": req.creator, "landing_page": req.landing_page,
                    "caption": req.caption, "dhash": dhash_hex(dh), "width": w, "height": h,
                    "orig_width": dec.orig_width, "orig_height": dec.orig_height,
                    "format": dec.format, "bytes": len(data), "content_type": content_type,
                    "fetched_at": round(time.time(), 3)}
            rec = self.store.put(sha, encoded, ext, meta)
        except StoreError as exc:
            raise FetchError(Reason.STORE_ERROR, str(exc)) from None
        except BaseException:
            self.store.release(sha)
            raise
        return FetchResult(url=req.url, status="ok", reason=Reason.OK, sha256=sha, dhash=dhash_hex(dh),
                           path=str(self.store.abspath(rec)), final_url=final_url,
                           http_status=http_status, bytes=len(data), width=w, height=h,
                           format=dec.format, redirects=state["redirects"],
                           attempts=state["attempts"], meta=self._meta(req))

    # ---------------------------------------------------------------- network
    def _download(self, url: str, state: dict[str, Any]) -> _Body:
        cfg = self.config
        start = time.monotonic()
        deadline: float | None = None
        current = url
        visited = {url}
        retries = 0
        while True:
            scheme, host, port = split_target(current)
            hostkey = f"{host}:{port}"
            wait_until = deadline if deadline is not None else start + cfg.queue_timeout_s
            try:
                with self.limiter.slot(hostkey, wait_until):
                    if deadline is None:
                        deadline = time.monotonic() + cfg.deadline_s
                    state["attempts"] += 1
                    state["final_url"] = current
                    outcome = self._exchange(current, deadline, state)
            except _Retry as r:
                if retries >= cfg.max_retries:
                    raise FetchError(r.reason, f"{r.detail} (after {retries} retries)", r.status) from None
                wait = self._backoff(retries)
                if r.retry_after is not None:
                    if r.retry_after > cfg.max_retry_after_s:
                        raise FetchError(r.reason, f"Retry-After {r.retry_after:.0f}s is too long",
                                         r.status) from None
                    self.limiter.cooldown(hostkey, r.retry_after)
                    wait = max(wait, r.retry_after)
                if time.monotonic() + wait >= deadline:
                    raise FetchError(r.reason, f"{r.detail}; no time left to retry", r.status) from None
                self._count("retries")
                time.sleep(wait)
                retries += 1
                continue
            if isinstance(outcome, _Body):
                return outcome
            # a redirect
            state["redirects"] += 1
            if state["redirects"] > cfg.max_redirects:
                raise FetchError(Reason.TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects}")
            try:
                nxt = urljoin(current, outcome)
            except ValueError as exc:
                raise FetchError(Reason.BAD_REDIRECT, str(exc)) from None
            if nxt in visited:
                raise FetchError(Reason.TOO_MANY_REDIRECTS, f"redirect loop at {nxt[:120]}")
            visited.add(nxt)
            current = nxt

    def _backoff(self, attempt: int) -> float:
        with self._rng_lock:
            return backoff_delay(attempt, self.config.backoff_s, self.config.backoff_max_s, self._rng)

    def _exchange(self, url: str, deadline: float, state: dict[str, Any]) -> _Body | str:
        """One request: a body, a redirect target (str), or ``_Retry`` / ``FetchError``."""
        cfg = self.config
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(Reason.TIMEOUT, "deadline passed")
        session = self._session()
        with WATCHDOG.guard(deadline) as token:
            try:
                verify = cfg.ca_bundle if (cfg.ca_bundle and cfg.verify_tls) else cfg.verify_tls
                resp = session.get(url, stream=True, allow_redirects=False, verify=verify,
                                   timeout=(min(cfg.connect_timeout_s, remaining),
                                            min(cfg.read_timeout_s, remaining)))
            except FetchError:
                raise
            except requests.exceptions.SSLError as exc:
                raise FetchError(Reason.TLS_ERROR, _short(exc)) from None
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
                if token.expired or time.monotonic() >= deadline:
                    raise FetchError(Reason.TIMEOUT, "deadline passed") from None
                reason = Reason.TIMEOUT if isinstance(exc, requests.exceptions.Timeout) else Reason.CONNECT_ERROR
                raise _Retry(reason, _short(exc)) from None
            except requests.exceptions.InvalidURL as exc:
                raise FetchError(Reason.BAD_URL, _short(exc)) from None
            except requests.RequestException as exc:
                raise FetchError(Reason.CONNECT_ERROR, _short(exc)) from None
            with resp:
                return self._read(resp, url, deadline, token, state)

    def _read(self, resp: requests.Response, url: str, deadline: float, token: Any,
              state: dict[str, Any]) -> _Body | str:
        cfg = self.config
        status = resp.status_code
        state["http_status"] = status
        if status in REDIRECT_STATUSES:
            loc = resp.headers.get("Location")
            if not loc or not loc.strip():
                raise FetchError(Reason.BAD_REDIRECT, f"HTTP {status} without Location", status)
            return loc.strip()
        if status in RETRY_STATUSES:
            raise _Retry(Reason.http(status), f"HTTP {status}", status,
                         parse_retry_after(resp.headers.get("Retry-After")))
        if status not in (200, 203):
            raise FetchError(Reason.http(status), f"HTTP {status}", status)
        if cfg.honor_noai:
            lines = resp.raw.headers.getlist("X-Robots-Tag") if hasattr(resp.raw, "headers") else []
            hit = blocked_by_robots(lines, cfg.robots_token, cfg.noai_directives)
            if hit:
                raise FetchError(Reason.NOAI, f"X-Robots-Tag {hit}", status)
        ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype.startswith(_NON_IMAGE_TYPES) or ctype == "image/svg+xml":
            raise FetchError(Reason.NOT_IMAGE, f"Content-Type {ctype}", status)
        clen = resp.headers.get("Content-Length")
        if clen is not None:
            try:
                declared = int(clen.split(",")[0].strip())
            except ValueError:
                raise FetchError(Reason.TRUNCATED, f"bad Content-Length {clen[:40]!r}", status) from None
            if declared > cfg.max_bytes:
                raise FetchError(Reason.TOO_LARGE, f"Content-Length {declared} > {cfg.max_bytes}", status)
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                chunk = resp.raw.read(_CHUNK, decode_content=False)
                if not chunk:
                    break
                total += len(chunk)
                if total > cfg.max_bytes:
                    raise FetchError(Reason.TOO_LARGE, f"body over {cfg.max_bytes} bytes", status)
                if time.monotonic() >= deadline or token.expired:
                    raise FetchError(Reason.TIMEOUT, f"deadline passed after {total} bytes", status)
                chunks.append(chunk)
        except FetchError:
            raise
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise FetchError(Reason.TIMEOUT, _short(exc), status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if token.expired or time.monotonic() >= deadline:
                raise FetchError(Reason.TIMEOUT, f"deadline passed after {total} bytes", status) from None
            raise FetchError(Reason.TRUNCATED, f"body ended early after {total} bytes: {_short(exc)}",
                             status) from None
        if token.expired:  # a shut-down socket reads as EOF
            raise FetchError(Reason.TIMEOUT, f"deadline passed after {total} bytes", status)
        if total == 0:
            raise FetchError(Reason.NOT_IMAGE, "empty body", status)
        return _Body(b"".join(chunks), status, ctype, url)


def _short(exc: BaseException, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]
