"""``ie-fetch``: download image URLs safely into a content-addressed folder.

    ie-fetch --out DIR [--allow-private HOST[:PORT]]... [options] URL...
    cat urls.txt | ie-fetch --out DIR

Prints one JSON line per URL, in input order: ``url``, ``status`` (``ok``/``error``), ``reason``
(a stable code: ``ok``, ``private_address``, ``too_large``, ``timeout``, ``not_image``,
``decompression_bomb``, ``noai``, ``http_404``, ``too_many_redirects``, ``duplicate``, ...) and, when
ok, ``sha256`` and ``path``. A summary goes to stderr. Exit status 0 when at least one URL was fetched
(or none was given), 1 when every URL failed (the reasons are on stdout), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from ie_env.config import ConfigError, apply_overrides, load_yaml, merge
from ie_env.fetcher.config import FetchConfig
from ie_env.fetcher.dedup import LeakageGuard
from ie_env.fetcher.fetcher import Fetcher

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ie-fetch", description=__doc__.split("\n\n")[0])
    p.add_argument("urls", nargs="*", help="image URLs (read from stdin, one per line, when none)")
    p.add_argument("--out", required=True, help="store folder (created if missing)")
    p.add_argument("--allow-private", action="append", default=[], metavar="HOST[:PORT]",
                   help="exempt this literal host (and port) from the private-address check; for tests")
    p.add_argument("--concurrency", type=int, help="download threads")
    p.add_argument("--max-bytes", type=int, help="byte cap per image")
    p.add_argument("--deadline", type=float, help="seconds per image, all attempts included")
    p.add_argument("--image-size", type=int, help="stored size (shorter side by default)")
    p.add_argument("--query", default="", help="query recorded in each image's metadata")
    p.add_argument("--engine", default="", help="engine recorded in each image's metadata")
    p.add_argument("--target-images", metavar="DIR",
                   help="target test images: downloads that are near-copies of them are dropped")
    p.add_argument("--config", help="YAML file with FetchConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a FetchConfig field (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _config(args: argparse.Namespace) -> FetchConfig:
    cfg = FetchConfig()
    if args.config:
        cfg = merge(cfg, load_yaml(args.config))
    cfg = apply_overrides(cfg, args.set)
    direct = {"concurrency": args.concurrency, "max_bytes": args.max_bytes,
              "deadline_s": args.deadline, "image_size": args.image_size}
    cfg = merge(cfg, {k: v for k, v in direct.items() if v is not None})
    if args.allow_private:
        cfg = merge(cfg, {"allow_private": list(cfg.allow_private) + list(args.allow_private)})
    cfg.validate()
    return cfg


def _leakage(folder: str | None, hamming: int) -> LeakageGuard | None:
    if not folder:
        return None
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_EXTS)
    if not paths:
        raise ConfigError(f"--target-images {folder}: no images found")
    return LeakageGuard.from_images(paths, max_distance=hamming)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = _config(args)
        leakage = _leakage(args.target_images, cfg.leak_hamming)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"ie-fetch: {exc}", file=sys.stderr)
        return 2
    urls = list(args.urls) or [line.strip() for line in sys.stdin if line.strip()]
    out = sys.stdout
    counts: dict[str, int] = {}
    try:
        fetcher = Fetcher(args.out, cfg, leakage=leakage)
    except (ValueError, OSError) as exc:
        print(f"ie-fetch: {exc}", file=sys.stderr)
        return 2
    with fetcher:
        for res in fetcher.iter_fetch(urls, query=args.query, engine=args.engine):
            out.write(json.dumps(res.to_dict(), ensure_ascii=False) + "\n")
            out.flush()
            counts[res.reason] = counts.get(res.reason, 0) + 1
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"ie-fetch: {len(urls)} urls: {summary or 'none'}"
          + (f"; leakage guard dropped {leakage.dropped}" if leakage else ""), file=sys.stderr)
    return 1 if urls and not counts.get("ok") else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
