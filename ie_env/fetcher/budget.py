"""A process-wide budget of decoded pixel bytes: a semaphore counted in bytes, not in holders.

Each image is decoded under ``ByteBudget.hold(cost)``, where ``cost`` estimates the bytes its decode
allocates at once (``decode.decode_cost``). A thread waits until its cost fits beside the bytes
other threads hold, so the pixels held by all decoding threads together never exceed the budget,
whatever the number of threads. Waiters are served first come, first served (a large image is not
starved by a stream of small ones). An image whose cost alone exceeds the budget is charged the
whole budget: it waits until it can be decoded alone. ``shared_budget(capacity)`` hands every
fetcher (and the target loader) of a process configured with the same capacity one budget.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class ByteBudget:
    """At most ``capacity`` bytes held at once across threads; FIFO among waiters."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"byte budget must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.held = 0
        self.holders = 0
        self.peak = 0  # most bytes ever held at once
        self.peak_holders = 0  # most holders at once
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._tickets = itertools.count()

    @property
    def waiting(self) -> int:
        """Threads waiting for room (for tests and progress reports)."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[int]:
        """Hold ``min(nbytes, capacity)`` bytes for the block; yields the bytes charged."""
        n = max(0, min(int(nbytes), self.capacity))
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while self._queue[0] != ticket or self.held + n > self.capacity:
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now
            self.held += n
            self.holders += 1
            self.peak = max(self.peak, self.held)
            self.peak_holders = max(self.peak_holders, self.holders)
        try:
            yield n
        finally:
            with self._cond:
                self.held -= n
                self.holders -= 1
                self._cond.notify_all()


_SHARED: dict[int, ByteBudget] = {}
_SHARED_LOCK = threading.Lock()


def shared_budget(capacity: int) -> ByteBudget:
    """The process's one budget of ``capacity`` bytes (created on first use)."""
    with _SHARED_LOCK:
        budget = _SHARED.get(int(capacity))
        if budget is None:
            budget = _SHARED[int(capacity)] = ByteBudget(capacity)
        return budget
