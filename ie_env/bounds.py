"""Documented limits of every size in the config: a value outside them is refused at load.

A config value that sets a size (a count of images, queries, threads, bytes, pixels, a width or a
number of steps) has a minimum and a maximum here. The maxima are generous -- well above the paper's
settings (256 queries x 100 images per iteration, batch 224, 224 px) -- yet keep what one value can
make the process allocate bounded: ``env.images_per_query=100000000`` is refused at load, naming the
key, the value and the maximum, before anything is allocated or a run directory is made.

``BOUNDS`` maps a config dataclass (by class name, so that this module imports nothing of the
project; config class names are unique, which a test checks) to ``{field: Bound}``.
``ie_env.config.from_dict`` checks them before the class's own ``validate`` (so that the message
names the whole dotted key). A list or tuple of sizes (``env.knn_k``, ``tier_sizes``) is checked
item by item; ``None`` (where a field allows it) passes. ``DERIVED`` holds limits on products of
several fields (the memory one setting alone cannot bound). ``docs/config.md`` is generated from
both tables (``python -m ie_experiments.config_doc``), and a test keeps the page and the code in
agreement.

Seeds are identifiers, not sizes, and have no bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

#: The largest image (width x height) the fetcher decodes and ImageFolder targets load; larger ones
#: are refused as decompression bombs (64 MP = 256 MB of decoded RGB).
DEFAULT_MAX_PIXELS = 64_000_000
#: Decoded pixel bytes the fetcher holds in flight across all its threads (``fetch.decode_budget_bytes``).
DEFAULT_DECODE_BUDGET = 1 * GIB
#: Bytes read from one local-corpus image file (``engine.options.max_image_bytes``).
DEFAULT_CORPUS_MAX_BYTES = 20 * MIB


@dataclass(frozen=True)
class Bound:
    """Inclusive limits of one size; ``why`` says what the size counts (shown in docs/config.md)."""

    lo: float
    hi: float
    why: str = ""


@dataclass(frozen=True)
class Derived:
    """A limit on a product of several fields of one config object."""

    name: str
    formula: str  # as shown in messages and docs
    value: Callable[[Any], float]
    hi: float
    why: str = ""


_TIMEOUT = Bound(0, 86_400, "seconds (one day)")
_RETRIES = Bound(0, 20)
_THREADS = Bound(0, 1024, "0 = library default")
_DIM = Bound(1, 65_536)
_STEPS = Bound(0, 100_000_000)

BOUNDS: dict[str, dict[str, Bound]] = {
    "RunConfig": {
        "keep_checkpoints": Bound(1, 1000),
        "threads": _THREADS,
        "reward_quality": Bound(-1, 1_000_000, "panel sample size; 0 = off, -1 = the whole vocabulary"),
    },
    "PretrainConfig": {
        "steps": Bound(1, 100_000_000, "measured probe 1,425"),
        "images_per_concept": Bound(1, 100_000),
    },
    "TrainConfig": {
        "total_timesteps": Bound(1, 10_000_000_000),
        "n_envs": Bound(1, 1024),
        "eval_freq": Bound(0, 10_000_000_000, "0 = off"),
        "eval_episodes": Bound(0, 100_000),
        "checkpoint_freq": Bound(0, 10_000_000_000, "0 = off"),
        "heldout_episodes": Bound(0, 100_000, "0 = off"),
        "threads": _THREADS,
    },
    "CompareSettings": {
        "seeds": Bound(1, 10_000),
        "retrieval_per_concept": Bound(1, 1000, "pool renders per concept of the retrieval row"),
    },
    "EnvConfig": {
        "images_per_query": Bound(1, 10_000, "paper 100"),
        "min_images": Bound(0, 10_000, "paper 10"),
        "queries_per_iteration": Bound(1, 100_000, "paper 256"),
        "iterations": Bound(1, 100_000),
        "k": Bound(1, 10_000, "paper 15"),
        "top_images": Bound(1, 10_000),
        "pcr": Bound(0, 1000, "replayed + target images per new image"),
        "replay_capacity": Bound(0, 100_000_000, "images; 0 = unbounded"),
        "warmup_images": Bound(0, 100_000_000),
        "history": Bound(0, 4096),
        "blas_threads": _THREADS,
        "knn_k": Bound(1, 10_000, "each k"),
    },
    "WorldConfig": {
        "latent_dim": Bound(1, 4096),
        "image_size": Bound(16, 1024, "pixels; paper 224"),
        "num_targets": Bound(2, 100_000),
        "target_train_per_class": Bound(0, 100_000),
        "target_test_per_class": Bound(1, 100_000),
        "num_neighbors": Bound(0, 10_000),
    },
    "SSLConfig": {
        "image_size": Bound(8, 1024, "pixels; paper 224"),
        "batch_size": Bound(2, 16_384, "paper 224"),
        "lr_warmup_steps": _STEPS,
        "momentum_schedule_steps": Bound(1, 100_000_000),
        "proj_dim": _DIM,
        "hidden_dim": _DIM,
        "proj_layers": Bound(1, 64),
        "pred_layers": Bound(0, 64),
        "dino_out_dim": Bound(1, 262_144),
        "dino_hidden_dim": _DIM,
        "dino_bottleneck_dim": _DIM,
        "dino_warmup_teacher_temp_steps": _STEPS,
        "dino_local_crops": Bound(0, 64),
        "dino_local_size": Bound(8, 1024),
        "epochs_per_iteration": Bound(0, 10_000, "paper 10"),
        "min_steps": _STEPS,
        "max_steps": Bound(1, 100_000_000),
        "eval_batch_size": Bound(1, 65_536),
        "num_threads": Bound(1, 1024),
    },
    "DescriptorConfig": {
        "max_new_tokens": Bound(1, 4096),
        "max_resamples": Bound(0, 1000),
    },
    "ActionConfig": {
        "embed_dim": Bound(0, 65_536, "0 = the full text embedding"),
        "slate_size": Bound(2, 4096),
        "slate_seeds": Bound(1, 4096),
        "slate_neighbors": Bound(1, 4096),
    },
    "TargetConfig": {
        "image_size": Bound(8, 1024, "pixels"),
        "max_per_class": Bound(1, 10_000_000),
    },
    "FetchConfig": {
        "concurrency": Bound(1, 512),
        "per_host_concurrency": Bound(1, 512),
        "per_host_rate": Bound(0, 100_000, "requests per second; 0 = no limit"),
        "queue_timeout_s": _TIMEOUT,
        "max_redirects": Bound(0, 20),
        "max_bytes": Bound(1 * KIB, 1 * GIB, "bytes per downloaded image"),
        "deadline_s": _TIMEOUT,
        "connect_timeout_s": _TIMEOUT,
        "read_timeout_s": _TIMEOUT,
        "max_retries": _RETRIES,
        "backoff_s": _TIMEOUT,
        "backoff_max_s": _TIMEOUT,
        "max_retry_after_s": _TIMEOUT,
        "max_pixels": Bound(1, 1_000_000_000, "width x height of one image"),
        "decode_budget_bytes": Bound(64 * MIB, 256 * GIB, "decoded pixel bytes in flight, all threads"),
        "min_side": Bound(1, 65_535),
        "image_size": Bound(1, 8192, "pixels of a stored image"),
        "quality": Bound(1, 100),
        "dedup_hamming": Bound(-1, 64, "-1 = off"),
        "leak_hamming": Bound(-1, 64, "-1 = off"),
    },
    "LocalCorpusConfig": {
        "ivf_threshold": Bound(1, 10_000_000_000),
        "nlist": Bound(0, 10_000_000, "0 = about 4 sqrt(N)"),
        "nprobe": Bound(1, 10_000_000),
        "train_size": Bound(1, 100_000_000),
        "embed_batch": Bound(1, 65_536),
        "search_chunk": Bound(1, 10_000_000),
        "max_image_bytes": Bound(1 * KIB, 1 * GIB, "bytes read from one image file"),
    },
    "FlickrConfig": {
        "per_page": Bound(1, 500),
        "max_pages": Bound(1, 10_000),
        "safe_search": Bound(1, 3),
        "content_type": Bound(1, 7),
        "timeout": _TIMEOUT,
        "retries": _RETRIES,
    },
    "OpenverseConfig": {
        "page_size": Bound(1, 500),
        "max_pages": Bound(1, 10_000),
        "timeout": _TIMEOUT,
        "retries": _RETRIES,
    },
    "WikimediaConfig": {
        "per_page": Bound(1, 500),
        "max_pages": Bound(1, 10_000),
        "thumb_width": Bound(0, 100_000, "0 = original file"),
        "timeout": _TIMEOUT,
        "retries": _RETRIES,
    },
    "ClipRetrievalConfig": {
        "overfetch": Bound(1, 100),
        "max_results": Bound(1, 1_000_000),
        "timeout": _TIMEOUT,
        "retries": _RETRIES,
    },
    "GPSamplerConfig": {
        "tier_sizes": Bound(1, 100_000_000, "each tier"),
    },
    "GPPriorConfig": {
        "fit_max_points": Bound(1, 100_000),
        "fit_steps": Bound(0, 100_000),
        "exact_max_points": Bound(0, 50_000, "an n x n Cholesky: 50k = 20 GB in float64"),
        "exact_max_flops": Bound(0, 1e16),
        "num_inducing": Bound(1, 65_536),
        "inducing_candidates": Bound(1, 10_000_000),
        "cache_max_bytes": Bound(0, 256 * GIB),
        "chunk_size": Bound(1, 10_000_000),
        "num_threads": _THREADS,
    },
    "OracleConfig": {
        "top_k": Bound(1, 100_000_000),
    },
}

#: Bytes above which one derived product is refused (the images one setting makes the env hold).
DERIVED_MAX_BYTES = 64 * GIB

DERIVED: dict[str, list[Derived]] = {
    "EnvConfig": [
        Derived(
            "iteration_image_bytes",
            "images_per_query x queries_per_iteration x world.image_size^2 x 3",
            lambda c: c.images_per_query * c.queries_per_iteration * c.world.image_size**2 * 3,
            DERIVED_MAX_BYTES,
            "one iteration's new images, uint8 (paper: 3.9 GB)",
        ),
        Derived(
            "target_image_bytes",
            "world.num_targets x (world.target_train_per_class + world.target_test_per_class) x world.image_size^2 x 3",
            lambda c: (
                c.world.num_targets
                * (c.world.target_train_per_class + c.world.target_test_per_class)
                * c.world.image_size**2
                * 3
            ),
            DERIVED_MAX_BYTES,
            "the embedded world's target images, uint8",
        ),
    ],
    "SSLConfig": [
        Derived(
            "batch_bytes",
            "batch_size x image_size^2 x 3 x 4 x 2",
            lambda c: c.batch_size * c.image_size**2 * 3 * 4 * 2,
            DERIVED_MAX_BYTES,
            "one training batch of two float32 views (paper: 0.3 GB)",
        ),
    ],
}

#: Integer fields that are not sizes (identifiers): no bounds, by design.
EXEMPT = frozenset({"seed", "split_seed", "heldout_seed", "first_seed"})


def class_key(cls: type) -> str:
    """The key of ``cls`` in ``BOUNDS``: its name (the same when its module runs as ``__main__``)."""
    return cls.__qualname__


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def bound_violations(obj: Any, prefix: str = "") -> list[str]:
    """Messages for every bounded field of config ``obj`` outside its limits (empty when all fit).

    ``prefix`` is the dotted path of ``obj`` in the whole config (``"env.world."``), so that a message
    names the key as the user writes it in ``--set``."""
    key = class_key(type(obj))
    see = f"see {key} in docs/config.md"
    out: list[str] = []
    for name, b in BOUNDS.get(key, {}).items():
        raw = getattr(obj, name, None)
        many = isinstance(raw, (list, tuple))
        for v in _items(raw):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue  # types are the coercion's job
            if not math.isnan(v) and b.lo <= v <= b.hi:  # NaN fails too
                continue
            above = not math.isnan(v) and v > b.hi
            what = f"{prefix}{name}" + (f" item {v!r}" if many else f"={v!r}")
            out.append(
                f"{what} is "
                f"{'above its maximum ' + fmt_number(b.hi) if above else 'below its minimum ' + fmt_number(b.lo)}"
                f" (allowed {fmt_number(b.lo)}..{fmt_number(b.hi)}{'; ' + b.why if b.why else ''}; {see})"
            )
            break
    if out:
        return out
    for d in DERIVED.get(key, []):
        v = d.value(obj)
        if v > d.hi:
            out.append(
                f"{prefix}{d.name} = {d.formula} = {v!r} bytes is above its maximum {fmt_number(d.hi)} bytes "
                f"({d.why}; {see})"
            )
    return out


def fmt_number(v: float) -> str:
    """A limit as messages and docs show it: ``10_000``, ``4096``, ``0.5``."""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:g}"
    return f"{int(v):,}".replace(",", "_") if abs(v) >= 10_000 else str(int(v))


def out_of_memory_message(prog: str) -> str:
    """What a CLI prints (then exits 2) when a ``MemoryError`` reaches it."""
    return (
        f"{prog}: error: out of memory. Lower the sizes in the config (limits and products: "
        "docs/config.md) or give the process more memory; a run directory already started keeps "
        "its queries and checkpoints and continues with --resume."
    )
