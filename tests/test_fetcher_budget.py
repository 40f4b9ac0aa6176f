"""The decoded-pixel budget: bytes in flight across decoding threads never exceed it."""

from __future__ import annotations

import io
import threading
import time

from PIL import Image

from ie_env.fetcher import FetchConfig, Fetcher, Reason
from ie_env.fetcher.budget import ByteBudget
from ie_env.fetcher.decode import decode_cost


def _wait_for(pred) -> None:
    """Block until ``pred()`` holds (a synchronisation point, not a timing assertion)."""
    while not pred():
        time.sleep(0.001)


def test_budget_blocks_what_does_not_fit_and_serves_in_order():
    budget = ByteBudget(100)
    release_a = threading.Event()
    entered: list[str] = []

    def worker(name: str, n: int, gate: threading.Event | None) -> None:
        with budget.hold(n):
            entered.append(name)
            if gate is not None:
                gate.wait()

    a = threading.Thread(target=worker, args=("a", 60, release_a))
    a.start()
    _wait_for(lambda: entered == ["a"])
    b = threading.Thread(target=worker, args=("b", 60, None))
    b.start()
    _wait_for(lambda: budget.waiting == 1)
    c = threading.Thread(target=worker, args=("c", 30, None))  # would fit beside a, but b is first in line
    c.start()
    _wait_for(lambda: budget.waiting == 2)
    assert entered == ["a"] and budget.held == 60
    release_a.set()
    for t in (a, b, c):
        t.join()
    assert entered == ["a", "b", "c"]
    assert budget.peak <= 100 and budget.held == 0 and budget.holders == 0


def test_an_image_larger_than_the_budget_is_decoded_alone():
    budget = ByteBudget(50)
    with budget.hold(10_000) as charged:
        assert charged == 50 and budget.held == 50
    assert budget.held == 0


def _png(seed: int, size=(600, 400)) -> bytes:
    img = Image.new("RGB", size, (seed * 7 % 256, seed * 13 % 256, seed * 29 % 256))
    img.putpixel((seed % size[0], 0), (255 - seed % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_fetcher_decodes_within_the_budget_whatever_the_concurrency(tmp_path):
    blobs = {f"mem://x/{i}": _png(i) for i in range(24)}
    with Image.open(io.BytesIO(blobs["mem://x/0"])) as probe:
        one = decode_cost(probe)
    assert one == 2 * 600 * 400 * 4  # RGB is held 4 bytes a pixel, plus the orientation copy
    cfg = FetchConfig(concurrency=12, decode_budget_bytes=one + 7, dedup_hamming=-1, leak_hamming=-1)
    with Fetcher(str(tmp_path / "store"), cfg) as f:
        f.register_reader("mem://x/", lambda u: blobs[u])
        results = f.fetch_many(list(blobs))
        budget = f.decode_budget
    assert [r.reason for r in results] == [Reason.OK] * len(blobs)
    assert budget.capacity == one + 7
    assert budget.peak_holders == 1  # room for one decode: twelve threads took turns
    assert 0 < budget.peak <= budget.capacity and budget.held == 0
