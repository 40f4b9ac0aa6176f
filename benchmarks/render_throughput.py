"""Renderer throughput: images per second at 32 and 64 px on the calling thread; prints one JSON object.

    python benchmarks/render_throughput.py [--images 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ie_env.worlds.render import RenderConfig, Renderer  # noqa: E402


def measure(size: int, images: int, repeats: int) -> float:
    """Best-of-``repeats`` images/s for rendering ``images`` images at ``size`` px."""
    renderer = Renderer(RenderConfig(image_size=size))
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((images, 16)).astype(np.float32)
    seeds = rng.integers(0, 2**62, size=images, dtype=np.int64)
    renderer.render(lat[:256], seeds[:256])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        renderer.render(lat, seeds)
        best = min(best, time.perf_counter() - t0)
    return images / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    result = {
        "benchmark": "render_throughput",
        "images": args.images,
        "images_per_second_32px": round(measure(32, args.images, args.repeats), 1),
        "images_per_second_64px": round(measure(64, args.images, args.repeats), 1),
        "threads": "1 (numpy elementwise, single-threaded)",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
