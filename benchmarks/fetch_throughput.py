"""Fetch throughput: this fetcher vs img2dataset at equal concurrency; prints one JSON object.

    python benchmarks/fetch_throughput.py [--images 1200] [--concurrency 16] [--latency-ms 100]
                                          [--repeats 2] [--img2dataset-python PATH]
    python benchmarks/fetch_throughput.py --setup-img2dataset   # makes .cache/img2dataset-venv

A local asyncio HTTP/1.1 server (its own process, 127.0.0.1 only) serves ``--images`` distinct JPEGs
(``--width`` x ``--height``, photo-like, about 150-250 kB) and sleeps ``--latency-ms`` before each
answer. Both downloaders fetch every URL, decode, resize so the shorter side is 256 px (never
upscaling), re-encode as JPEG quality 90 and write files:

* this fetcher: ``concurrency`` threads, the per-host limits opened to the same concurrency (one
  host serves everything) and the per-host rate limit off, since img2dataset has neither; sha256
  dedup, dHash and every safety check stay on. Only near-copy (dHash) dedup is off, because the
  benchmark images share pixels by construction.
* img2dataset: ``processes x threads = concurrency`` (tried as 2 x C/2 and 1 x C; the faster one is
  the baseline), ``resize_mode=keep_ratio``, ``resize_only_if_bigger``, ``encode_quality=90``,
  ``output_format=files``, sha256 on, EXIF extraction off, one shard per process. It runs in a
  separate interpreter (its own dependencies - wandb, opencv, albumentations, pandas - are heavy):
  this one if it imports img2dataset, else ``--img2dataset-python`` / ``$IE_IMG2DATASET_PYTHON``,
  else ``.cache/img2dataset-venv``. Its import time is not counted; its worker start-up is.

Output: images per second for both (median of ``--repeats`` interleaved runs; img2dataset's better
configuration is the baseline), ``ratio`` (ours / img2dataset), CPU milliseconds per image (for
img2dataset including its worker processes, minus one bare import), and ``failures``: this
fetcher's failures on the healthy server over all runs (must be 0). When img2dataset is unavailable
the JSON says why and ``ratio`` is null.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ie_env.fetcher import Fetcher, FetchConfig  # noqa: E402

DEFAULT_I2D_VENV = ROOT / ".cache" / "img2dataset-venv"


# ------------------------------------------------------------------------------------- images


def make_bases(n: int, w: int, h: int, seed: int = 0) -> list[bytes]:
    """``n`` photo-like JPEGs: smooth colour fields plus fine noise (realistic sizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def unique_jpeg(base: bytes, i: int) -> bytes:
    """``base`` with a JPEG comment segment holding ``i``: distinct bytes, same pixels."""
    payload = f"ie-env benchmark image {i:08d}".encode()
    seg = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return base[:2] + seg + base[2:]


# ------------------------------------------------------------------------------------- server


def _serve(port_q: "mp.Queue", stop_ev, bases: list[bytes], n: int, latency: float) -> None:
    bodies = [unique_jpeg(bases[i % len(bases)], i) for i in range(n)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                path = parts[1] if len(parts) > 1 else "/"
                close = b"connection: close" in head.lower() or line.endswith("HTTP/1.0")
                await asyncio.sleep(latency)
                try:
                    idx = int(path.rsplit("/", 1)[-1].split(".")[0])
                    body = bodies[idx]
                    status = b"200 OK"
                    ctype = b"image/jpeg"
                except (ValueError, IndexError):
                    body, status, ctype = b"not found", b"404 Not Found", b"text/plain"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype +
                             b"\r\nContent-Length: " + str(len(body)).encode() +
                             (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port_q.put(server.sockets[0].getsockname()[1])
        async with server:
            while not stop_ev.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(main())


class ImageServer:
    def __init__(self, bases: list[bytes], n: int, latency: float) -> None:
        ctx = mp.get_context("fork")
        self._q = ctx.Queue()
        self._stop = ctx.Event()
        self.proc = ctx.Process(target=_serve, args=(self._q, self._stop, bases, n, latency), daemon=True)
        self.proc.start()
        self.port = self._q.get(timeout=60)

    def urls(self, n: int) -> list[str]:
        return [f"http://127.0.0.1:{self.port}/img/{i}.jpg" for i in range(n)]

    def close(self) -> None:
        self._stop.set()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()


# ------------------------------------------------------------------------------------- runners


def run_ours(urls: list[str], port: int, concurrency: int) -> dict:
    out = tempfile.mkdtemp(prefix="ie-fetch-bench-")
    cfg = FetchConfig(concurrency=concurrency, per_host_concurrency=concurrency, per_host_rate=0.0,
                      allow_private=[f"127.0.0.1:{port}"], image_size=256, resize="shorter",
                      store_format="jpeg", quality=90, dedup_hamming=-1, leak_hamming=-1,
                      deadline_s=60.0)
    try:
        c0 = _cpu(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with Fetcher(out, cfg) as f:
            results = f.fetch_many(urls)
        dt = time.perf_counter() - t0
        cpu = _cpu(resource.RUSAGE_SELF) - c0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ok = sum(r.ok for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        if not r.ok:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {"elapsed_s": round(dt, 3), "images_per_s": round(ok / dt, 1), "ok": ok,
            "failures": len(urls) - ok, "failure_reasons": reasons,
            "cpu_ms_per_image": round(1000 * cpu / len(urls), 1)}


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


_I2D_DRIVER = r"""
import json, os, sys, time, glob, tempfile, shutil
args = json.loads(sys.argv[1])
import img2dataset
from img2dataset import download
out = tempfile.mkdtemp(prefix="i2d-bench-")
lst = os.path.join(tempfile.mkdtemp(prefix="i2d-list-"), "urls.txt")
with open(lst, "w") as fh:
    fh.write("\n".join(args["urls"]) + "\n")
t0 = time.perf_counter()
download(url_list=lst, output_folder=out + "/o", processes_count=args["processes"],
         thread_count=args["threads"], number_sample_per_shard=args["per_shard"], image_size=256,
         resize_mode="keep_ratio", resize_only_if_bigger=True, encode_quality=90, encode_format="jpg",
         output_format="files", input_format="txt", timeout=60, retries=0, extract_exif=False,
         compute_hash="sha256", enable_wandb=False, distributor="multiprocessing")
dt = time.perf_counter() - t0
ok = fail = 0
for p in glob.glob(out + "/o/*_stats.json"):
    s = json.load(open(p))
    ok += s.get("successes", 0)
    fail += s.get("failed_to_download", 0) + s.get("failed_to_resize", 0)
files = len(glob.glob(out + "/o/*/*.jpg"))
shutil.rmtree(out, ignore_errors=True)
shutil.rmtree(os.path.dirname(lst), ignore_errors=True)
print("I2D_RESULT " + json.dumps({"elapsed_s": round(dt, 3), "ok": ok, "failures": fail,
                                   "files": files, "version": getattr(img2dataset, "__version__", None)}))
"""


def find_img2dataset(explicit: str | None) -> tuple[str | None, str]:
    """(python executable with img2dataset, how it was found) or (None, why not)."""
    candidates = []
    if explicit:
        candidates.append((explicit, "--img2dataset-python"))
    if os.environ.get("IE_IMG2DATASET_PYTHON"):
        candidates.append((os.environ["IE_IMG2DATASET_PYTHON"], "$IE_IMG2DATASET_PYTHON"))
    candidates.append((sys.executable, "this interpreter"))
    candidates.append((str(DEFAULT_I2D_VENV / "bin" / "python"), str(DEFAULT_I2D_VENV)))
    tried = []
    for exe, how in candidates:
        if not Path(exe).exists():
            tried.append(f"{how}: no interpreter at {exe}")
            continue
        r = subprocess.run([exe, "-c", "import img2dataset"], capture_output=True, text=True,
                           env=_i2d_env(), timeout=300)
        if r.returncode == 0:
            return exe, how
        tried.append(f"{how}: cannot import img2dataset ({r.stderr.strip().splitlines()[-1:]})")
    return None, "; ".join(tried) + ". Run with --setup-img2dataset to create " + str(DEFAULT_I2D_VENV)


_I2D_TMP: list[str] = []  # img2dataset's temp files (wandb's too) go here; removed at exit


def _i2d_env() -> dict:
    if not _I2D_TMP:
        _I2D_TMP.append(tempfile.mkdtemp(prefix="ie-bench-i2d-tmp-"))
    env = dict(os.environ)
    env["TMPDIR"] = _I2D_TMP[0]
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["WANDB_MODE"] = "disabled"
    for k in list(env):
        if k.lower().endswith("_proxy"):
            del env[k]
    return env


def import_cpu(exe: str) -> float:
    """CPU seconds a bare ``import img2dataset`` costs in ``exe`` (subtracted from its runs)."""
    c0 = _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([exe, "-c", "from img2dataset import download"], capture_output=True,
                   env=_i2d_env(), timeout=600)
    return _cpu(resource.RUSAGE_CHILDREN) - c0


def run_img2dataset(exe: str, urls: list[str], processes: int, threads: int,
                    import_cpu_s: float = 0.0) -> dict:
    args = {"urls": urls, "processes": processes, "threads": threads,
            "per_shard": -(-len(urls) // processes)}
    c0 = _cpu(resource.RUSAGE_CHILDREN)
    r = subprocess.run([exe, "-c", _I2D_DRIVER, json.dumps(args)], capture_output=True, text=True,
                       env=_i2d_env(), timeout=1800)
    cpu = _cpu(resource.RUSAGE_CHILDREN) - c0 - import_cpu_s
    line = [x for x in r.stdout.splitlines() if x.startswith("I2D_RESULT ")]
    if r.returncode != 0 or not line:
        raise RuntimeError(f"img2dataset run failed (rc {r.returncode}): {r.stderr.strip()[-400:]}")
    res = json.loads(line[-1][len("I2D_RESULT "):])
    res["images_per_s"] = round(res["ok"] / res["elapsed_s"], 1)
    res["processes"], res["threads"] = processes, threads
    # includes its worker and logger processes (spawned, so they import its libraries again)
    res["cpu_ms_per_image"] = round(1000 * cpu / len(urls), 1)
    return res


def setup_img2dataset() -> int:
    venv = DEFAULT_I2D_VENV
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "img2dataset"])
    print(json.dumps({"img2dataset_venv": str(venv), "installed": r.returncode == 0}))
    return r.returncode


# ------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--img2dataset-python")
    ap.add_argument("--setup-img2dataset", action="store_true")
    args = ap.parse_args()
    if args.setup_img2dataset:
        return setup_img2dataset()
    if args.concurrency < 2 or args.concurrency % 2:
        ap.error("--concurrency must be an even number >= 2")

    bases = make_bases(24, args.width, args.height)
    server = ImageServer(bases, args.images, args.latency_ms / 1000.0)
    urls = server.urls(args.images)
    exe, how = find_img2dataset(args.img2dataset_python)
    configs = [(2, args.concurrency // 2), (1, args.concurrency)]
    ours_runs: list[dict] = []
    i2d_runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    i2d_error = None
    try:
        run_ours(urls[:64], server.port, args.concurrency)  # warm-up (imports, page cache)
        imp = import_cpu(exe) if exe is not None else 0.0
        for rep in range(args.repeats):
            # interleaved, order rotated each repeat, so drifting machine load hits all alike
            jobs = ["ours"] + (configs if exe is not None and i2d_error is None else [])
            for job in jobs[rep % len(jobs):] + jobs[:rep % len(jobs)]:
                if job == "ours":
                    ours_runs.append(run_ours(urls, server.port, args.concurrency))
                    continue
                try:
                    i2d_runs[job].append(run_img2dataset(exe, urls, job[0], job[1], imp))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    i2d_error = str(exc)
    finally:
        server.close()

    def med(rs: list[dict], key: str) -> float:
        return round(float(np.median([r[key] for r in rs])), 1)

    result: dict = {
        "benchmark": "fetch_throughput",
        "images": args.images, "concurrency": args.concurrency, "latency_ms": args.latency_ms,
        "image_size_px": [args.width, args.height],
        "image_kb_mean": round(float(np.mean([len(b) for b in bases])) / 1024, 1),
        "repeats": args.repeats,
        "ours": {"images_per_s": med(ours_runs, "images_per_s"),
                 "cpu_ms_per_image": med(ours_runs, "cpu_ms_per_image"),
                 "runs_images_per_s": [r["images_per_s"] for r in ours_runs],
                 "threads": args.concurrency,
                 "failure_reasons": {k: v for r in ours_runs for k, v in r["failure_reasons"].items()}},
        "failures": int(sum(r["failures"] for r in ours_runs)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
    }
    done = {c: rs for c, rs in i2d_runs.items() if rs}
    if exe is None or i2d_error is not None or not done:
        result["img2dataset"] = {"available": False, "reason": i2d_error or how}
        result["ratio"] = None
    else:
        per_cfg = [{"processes": c[0], "threads": c[1], "images_per_s": med(rs, "images_per_s"),
                    "cpu_ms_per_image": med(rs, "cpu_ms_per_image"),
                    "runs_images_per_s": [r["images_per_s"] for r in rs],
                    "failures": int(sum(r["failures"] for r in rs))} for c, rs in done.items()]
        best = max(per_cfg, key=lambda r: r["images_per_s"])
        result["img2dataset"] = {"available": True, "found_via": how, "baseline": best,
                                 "configs": per_cfg}
        result["ratio"] = round(result["ours"]["images_per_s"] / best["images_per_s"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        for d in _I2D_TMP:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(code)
