"""Per-host politeness: a concurrency cap, a request-rate cap, and cool-downs after ``429``.

``HostLimiter.slot(host, wait_until)`` is a context manager held for one HTTP exchange (request,
headers and body). It waits for the host's cool-down, its rate spacing and a free slot, never past
``wait_until`` (then ``FetchError(timeout)``).
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ie_env.fetcher.config import FetchError, Reason


class _Host:
    __slots__ = ("active", "next_start", "cooldown_until")

    def __init__(self) -> None:
        self.active = 0
        self.next_start = 0.0
        self.cooldown_until = 0.0


class HostLimiter:
    def __init__(self, per_host_concurrency: int, per_host_rate: float) -> None:
        self.max_active = per_host_concurrency
        self.interval = 1.0 / per_host_rate if per_host_rate > 0 else 0.0
        self._hosts: dict[str, _Host] = {}
        self._cond = threading.Condition()

    def cooldown(self, host: str, seconds: float) -> None:
        """Hold new requests to ``host`` back for ``seconds`` (a 429's Retry-After)."""
        with self._cond:
            h = self._hosts.setdefault(host, _Host())
            h.cooldown_until = max(h.cooldown_until, time.monotonic() + seconds)

    @contextmanager
    def slot(self, host: str, wait_until: float) -> Iterator[None]:
        with self._cond:
            h = self._hosts.setdefault(host, _Host())
            while True:
                now = time.monotonic()
                ready_at = max(h.cooldown_until, h.next_start if self.interval else 0.0)
                if h.active < self.max_active and now >= ready_at:
                    break
                if now >= wait_until:
                    raise FetchError(Reason.TIMEOUT, f"no slot for {host} in time")
                wake = wait_until if h.active >= self.max_active else min(ready_at, wait_until)
                self._cond.wait(timeout=max(0.001, wake - now))
            h.active += 1
            if self.interval:
                h.next_start = max(now, h.next_start) + self.interval
        try:
            yield
        finally:
            with self._cond:
                h.active -= 1
                self._cond.notify_all()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt`` scaled into [0.5, 1], capped."""
    return min(cap, base * (2 ** attempt)) * (0.5 + 0.5 * rng.random())
