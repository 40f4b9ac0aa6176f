"""Hardened, concurrent image fetcher: address checks on every hop, byte caps and deadlines,
``X-Robots-Tag`` opt-outs, safe decoding, a content-addressed store with dedup and a leakage guard."""

from ie_env.fetcher.config import FetchConfig, FetchError, Reason
from ie_env.fetcher.dedup import LeakageGuard
from ie_env.fetcher.fetcher import Fetcher, FetchRequest, FetchResult
from ie_env.fetcher.store import ImageStore

__all__ = ["FetchConfig", "FetchError", "Reason", "LeakageGuard", "Fetcher", "FetchRequest",
           "FetchResult", "ImageStore"]
