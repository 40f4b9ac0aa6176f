"""Search engines behind one interface: ``search(query, n) -> list[SearchHit]``."""

from ie_env.engines.base import SearchHit
from ie_env.engines.registry import make_engine

__all__ = ["SearchHit", "make_engine"]
