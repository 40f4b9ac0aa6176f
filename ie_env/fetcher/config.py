"""Fetcher settings (one dataclass) and the stable reason codes a fetch can end with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ie_env.bounds import DEFAULT_DECODE_BUDGET, DEFAULT_MAX_PIXELS
from ie_env.engines.base import USER_AGENT


class Reason:
    """Stable, short outcome codes (``status`` is ``ok`` only for ``OK``)."""

    OK = "ok"
    BAD_URL = "bad_url"
    BAD_SCHEME = "bad_scheme"
    PRIVATE_ADDRESS = "private_address"
    DNS_ERROR = "dns_error"
    CONNECT_ERROR = "connect_error"
    TLS_ERROR = "tls_error"
    TIMEOUT = "timeout"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_REDIRECT = "bad_redirect"
    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    NOT_IMAGE = "not_image"
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    NOAI = "noai"
    DUPLICATE = "duplicate"
    TARGET_LEAK = "target_leak"
    STORE_ERROR = "store_error"
    INTERNAL_ERROR = "internal_error"

    @staticmethod
    def http(status: int) -> str:
        return f"http_{int(status)}"


class FetchError(Exception):
    """A fetch ended without an image; ``reason`` is a ``Reason`` code."""

    def __init__(self, reason: str, detail: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.http_status = http_status


@dataclass
class FetchConfig:
    # -- concurrency and politeness
    concurrency: int = 32
    per_host_concurrency: int = 16
    #: Request starts per second per host (0 = no limit).
    per_host_rate: float = 50.0
    #: Longest wait for a host slot before an image is given up (reason ``timeout``).
    queue_timeout_s: float = 600.0
    user_agent: str = USER_AGENT
    #: The token an ``X-Robots-Tag: <token>: noai`` line must name to apply to this fetcher.
    robots_token: str = "ie-env"
    honor_noai: bool = True
    noai_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai"])
    # -- network safety
    #: ``HOST`` or ``HOST:PORT`` entries exempt from the private-address check (tests only). Matched
    #: on the literal host of the URL: another spelling of the same address is another host.
    allow_private: list[str] = field(default_factory=list)
    #: An explicit proxy URL; proxy environment variables are always ignored.
    proxy: str | None = None
    verify_tls: bool = True
    #: A CA bundle (PEM file) to verify TLS against instead of the default one.
    ca_bundle: str | None = None
    max_redirects: int = 5
    # -- limits per image
    max_bytes: int = 20 * 1024 * 1024
    #: Wall-clock budget for one image: every attempt, hop, wait and byte.
    deadline_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 15.0
    max_retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    #: A ``Retry-After`` longer than this ends the fetch instead of waiting.
    max_retry_after_s: float = 30.0
    # -- decoding
    formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Decoded pixel bytes held at once by all decoding threads together (a semaphore over bytes):
    #: peak memory stays bounded whatever the concurrency. An image larger than the whole budget
    #: is decoded alone.
    decode_budget_bytes: int = DEFAULT_DECODE_BUDGET
    min_side: int = 16
    # -- storing
    image_size: int = 256
    resize: Literal["shorter", "longer", "center_crop", "none"] = "shorter"
    #: Downscaling filter (Pillow's are antialiased when shrinking).
    resample: Literal["bilinear", "bicubic", "lanczos"] = "bilinear"
    store_format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = 90
    #: Drop an image whose dHash is within this Hamming distance of a stored one (-1 = off).
    dedup_hamming: int = 0
    #: Drop an image whose dHash is within this distance of a target test image (-1 = off).
    leak_hamming: int = 4
    #: Answer a URL already in the store from the store (no network).
    reuse_stored: bool = True
    #: fsync each stored file before its rename. Writes are atomic (temp file + rename) either way;
    #: fsync adds durability against power loss at a cost of milliseconds per image.
    fsync: bool = False

    def validate(self) -> None:
        if self.concurrency < 1 or self.per_host_concurrency < 1:
            raise ValueError("concurrency and per_host_concurrency must be >= 1")
        if self.per_host_rate < 0:
            raise ValueError("per_host_rate must be >= 0")
        if not 0 <= self.max_redirects <= 20:
            raise ValueError("max_redirects must be in 0..20")
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be >= 1024")
        if self.deadline_s <= 0 or self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("deadline and timeouts must be > 0")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ValueError("max_retries and backoff_s must be >= 0")
        if self.image_size < 8 and self.resize != "none":
            raise ValueError("image_size must be >= 8")
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be in 1..100")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        if self.decode_budget_bytes < 1:
            raise ValueError("decode_budget_bytes must be >= 1")
        allowed = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM"}
        bad = [f for f in self.formats if f.upper() not in allowed]
        if bad or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {sorted(allowed)}; got {self.formats}")
        self.formats = [f.upper() for f in self.formats]
        if not self.robots_token.strip():
            raise ValueError("robots_token must be non-empty")
