"""Peak memory of the fetcher on maximal-size images at full concurrency; prints one JSON object.

    python benchmarks/fetch_memory.py [--images 32] [--concurrency 32] [--side 7999]
                                      [--budget-mib 1024] [--out results.json]

A loopback HTTP server (its own process, 127.0.0.1 only, so its memory is not counted) serves
``--images`` distinct ``--side`` x ``--side`` RGB PNGs -- the largest the default ``max_pixels``
(64 MP) admits, each a couple of hundred kB compressed and 256 MB decoded. The fetcher downloads
them all with ``--concurrency`` threads (per-host limits opened to the same concurrency, rate limit
off; near-copy dedup off because the images share pixels by construction) and decodes, resizes and
stores each one.

Memory is read from ``/proc/self/status``: ``VmRSS`` before the fetch (the interpreter, libraries
and the fetcher: the baseline), and the peak, the larger of ``VmHWM`` (reset through
``/proc/self/clear_refs`` just before the fetch) and a sampling thread reading ``VmRSS`` every 5 ms.
The JSON gives the peak, the peak above the baseline, the configured ``decode_budget_bytes``, the
most bytes the budget ever charged at once and the most decodes it let run at once. The fetch is
bounded when the peak above the baseline stays under the budget.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import struct
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ie_env.fetcher import FetchConfig, Fetcher, Reason  # noqa: E402 - after the sys.path entry

MIB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _png_variants(side: int, n: int) -> list[bytes]:
    """``n`` PNGs of one ``side`` x ``side`` picture, each with its own tEXt chunk (distinct bytes)."""
    from PIL import Image

    img = Image.new("RGB", (side, side), (90, 140, 200))
    for i in range(0, side, 97):  # a little structure, still highly compressible
        img.paste((200, 60, 40), (i, 0, min(side, i + 3), side))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    del img
    base = buf.getvalue()
    head, rest = base[:33], base[33:]  # signature + IHDR
    out = []
    for i in range(n):
        payload = b"Comment\x00ie-env memory benchmark %06d" % i
        chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF)
        out.append(head + chunk + rest)
    return out


def _serve(side: int, n: int, port_q: mp.Queue[int]) -> None:
    blobs = _png_variants(side, n)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                body = blobs[int(self.path.rsplit("/", 1)[-1].split(".")[0])]
            except (ValueError, IndexError):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--side", type=int, default=7999)
    p.add_argument("--budget-mib", type=int, default=FetchConfig().decode_budget_bytes // MIB)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.side, args.images, port_q), daemon=True)
    server.start()
    port = port_q.get(timeout=300)
    urls = [f"http://127.0.0.1:{port}/img/{i}.png" for i in range(args.images)]
    cfg = FetchConfig(concurrency=args.concurrency, per_host_concurrency=args.concurrency, per_host_rate=0,
                      allow_private=[f"127.0.0.1:{port}"], dedup_hamming=-1, leak_hamming=-1,
                      decode_budget_bytes=args.budget_mib * MIB, deadline_s=600, read_timeout_s=600,
                      queue_timeout_s=600)
    peak_sampled = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_sampled
        while not stop.is_set():
            peak_sampled = max(peak_sampled, _status_kib("VmRSS"))
            stop.wait(0.005)

    with tempfile.TemporaryDirectory() as tmp, Fetcher(tmp, cfg) as fetcher:
        baseline_kib = _status_kib("VmRSS")
        hwm_reset = _reset_hwm()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        results = fetcher.fetch_many(urls)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        hwm_kib = _status_kib("VmHWM")
        budget = fetcher.decode_budget
    server.terminate()
    peak_kib = max(peak_sampled, hwm_kib if hwm_reset else 0)
    reasons: dict[str, int] = {}
    for r in results:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    out = {
        "benchmark": "fetch_memory",
        "images": args.images, "side": args.side, "concurrency": args.concurrency,
        "decoded_mib_per_image": round(args.side * args.side * 4 / MIB, 1),
        "png_kib_per_image": None,
        "decode_budget_mib": args.budget_mib,
        "baseline_rss_mib": round(baseline_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_above_baseline_mib": round((peak_kib - baseline_kib) / 1024, 1),
        "peak_above_baseline_within_budget": (peak_kib - baseline_kib) * 1024 <= args.budget_mib * MIB,
        "peak_within_budget": peak_kib * 1024 <= args.budget_mib * MIB,
        "budget_peak_charged_mib": round(budget.peak / MIB, 1),
        "budget_peak_concurrent_decodes": budget.peak_holders,
        "peak_source": "max(VmHWM after clear_refs, VmRSS sampled every 5 ms)" if hwm_reset
                       else "VmRSS sampled every 5 ms (clear_refs unavailable)",
        "ok": reasons.get(Reason.OK, 0), "reasons": reasons,
        "seconds": round(seconds, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    out["png_kib_per_image"] = round(sum(r.bytes or 0 for r in results) / max(1, len(results)) / 1024, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if out["ok"] == args.images else 1


if __name__ == "__main__":
    sys.exit(main())
