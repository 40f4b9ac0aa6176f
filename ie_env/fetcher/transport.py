"""The HTTP transport: connect to the address that was checked, and enforce a wall-clock deadline.

``PinnedAdapter`` is a ``requests`` transport adapter. For every request it sends (every hop of a
redirect chain goes through ``send``) it parses the URL as ``requests`` does, asks the
``AddressGuard`` for the one address to use (resolving the name once), and opens the urllib3 pool on
that IP literal, with the ``Host`` header, TLS SNI and certificate check set to the name. urllib3
then connects to the IP with no second lookup, so a name cannot rebind between check and connect.
Pools are keyed by (IP, name), so a connection is only reused for the address it was checked for.

``Watchdog`` bounds a whole exchange: sockets opened or reused inside ``watchdog.guard(deadline)``
are registered, and when the deadline passes they are shut down, which ends any blocked connect,
TLS handshake, header or body read (slow-drip servers included).
"""

from __future__ import annotations

import heapq
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ie_env.fetcher.addresses import AddressGuard, Target
from ie_env.fetcher.config import FetchError, Reason

DEFAULT_PORTS = {"http": 80, "https": 443}


# ------------------------------------------------------------------------------------- watchdog


class _Token:
    __slots__ = ("deadline", "socks", "expired", "done", "lock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.socks: list[socket.socket] = []
        self.expired = False
        self.done = False
        self.lock = threading.Lock()

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            if self.expired:
                _kill(sock)
            elif sock not in self.socks:
                self.socks.append(sock)


def _kill(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Watchdog:
    """One daemon thread that shuts down the sockets of exchanges past their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Token]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ie-fetch-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, token = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._cond.wait(timeout=deadline - now)
                    continue
                heapq.heappop(self._heap)
                with token.lock:
                    if not token.done:
                        token.expired = True
                        for s in token.socks:
                            _kill(s)

    @contextmanager
    def guard(self, deadline: float) -> Iterator[_Token]:
        token = _Token(deadline)
        with self._cond:
            self._ensure_thread()
            self._seq += 1
            # Wake the watchdog only when this deadline comes before everything it waits for
            # (deadlines mostly grow, so this is rare and saves a thread switch per request).
            earlier = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, self._seq, token))
            if earlier:
                self._cond.notify()
        prev = getattr(self._local, "token", None)
        self._local.token = token
        try:
            yield token
        finally:
            self._local.token = prev
            with token.lock:
                token.done = True

    def register(self, sock: socket.socket | None) -> None:
        token = getattr(self._local, "token", None)
        if token is not None:
            token.add(sock)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


WATCHDOG = Watchdog()


# ------------------------------------------------------------------------------------- connections


class _GuardedMixin:
    def _new_conn(self):  # type: ignore[no-untyped-def]
        sock = super()._new_conn()  # type: ignore[misc]
        WATCHDOG.register(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # reused connections
        WATCHDOG.register(getattr(self, "sock", None))
        return super().request(*args, **kwargs)  # type: ignore[misc]


class GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


# ------------------------------------------------------------------------------------- adapter


def split_target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url`` as ``requests`` reads it; ``FetchError`` if unusable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(Reason.BAD_URL, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise FetchError(Reason.BAD_SCHEME, f"scheme {scheme!r} is not http or https")
    host = parts.hostname or ""
    if not host:
        raise FetchError(Reason.BAD_URL, "no host")
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def host_header(host: str, port: int, scheme: str) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port == DEFAULT_PORTS[scheme] else f"{h}:{port}"


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that checks and pins the address of every request it sends."""

    def __init__(self, guard: AddressGuard, pool_maxsize: int = 32, proxy: str | None = None) -> None:
        self.guard = guard
        self.proxy = proxy
        self._pins = threading.local()
        super().__init__(pool_connections=64, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": GuardedHTTPConnectionPool,
                                                   "https": GuardedHTTPSConnectionPool}

    def send(self, request, **kwargs: Any):  # type: ignore[no-untyped-def, override]
        scheme, host, port = split_target(request.url)
        self._pins.target = self.guard.resolve(host, port)
        if not self.proxy:
            request.headers["Host"] = host_header(host, port, scheme)
            kwargs["proxies"] = {}
        else:
            kwargs["proxies"] = {"http": self.proxy, "https": self.proxy}
        try:
            return super().send(request, **kwargs)
        finally:
            self._pins.target = None

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):  # type: ignore[no-untyped-def]
        target: Target | None = getattr(self._pins, "target", None)
        if self.proxy or target is None:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        host_params = {"scheme": host_params["scheme"], "host": target.ip, "port": target.port}
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = target.host
            pool_kwargs["assert_hostname"] = target.host
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)
