"""Any clip-retrieval-compatible knn service: ``POST {base_url}/knn-service`` with a text query.

The request body follows clip-retrieval's back end (``text``, ``modality``, ``num_images``,
``indice_name``, dedup / safety switches); the answer is a JSON list of ``{url, caption, id,
similarity}``. Such services are often behind proxies that answer HTML or plain text when they are
overloaded: a non-JSON answer is tolerated (a JSON list embedded in the text is salvaged, otherwise
the search returns no hits) and counted in ``stats["non_json"]``.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ie_env.engines.base import JsonHttpClient, SearchEngine, SearchHit, as_text, finalize_hits

log = logging.getLogger(__name__)


@dataclass
class ClipRetrievalConfig:
    #: Root of the service (the engine posts to ``{base_url}/knn-service``); required.
    base_url: str = ""
    indice_name: str = "laion5B-L-14"
    modality: str = "image"
    deduplicate: bool = True
    use_safety_model: bool = True
    use_violence_detector: bool = True
    aesthetic_score: str = ""
    aesthetic_weight: float = 0.5
    #: Ask for this many times ``n`` (dedup and safety filters drop some answers).
    overfetch: float = 1.5
    max_results: int = 10_000
    timeout: float = 60.0
    retries: int = 2
    proxy: str | None = None

    def validate(self) -> None:
        if not self.base_url:
            raise ValueError("clip_retrieval needs base_url (the knn service root)")
        if self.overfetch < 1.0 or self.max_results < 1:
            raise ValueError("clip_retrieval overfetch must be >= 1 and max_results >= 1")


def _salvage_list(text: str) -> list | None:
    """A JSON list inside ``text`` (e.g. wrapped in HTML), or None."""
    try:
        value = json.loads(text)
        return value if isinstance(value, list) else None
    except ValueError:
        pass
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            value = json.loads(text[start:end + 1])
            return value if isinstance(value, list) else None
        except ValueError:
            return None
    return None


class ClipRetrievalEngine(SearchEngine):
    name = "clip_retrieval"

    def __init__(self, config: ClipRetrievalConfig | None = None) -> None:
        self.config = config or ClipRetrievalConfig()
        self.config.validate()
        self.http = JsonHttpClient(self.name, timeout=self.config.timeout,
                                   retries=self.config.retries, proxy=self.config.proxy)
        self.stats = {"searches": 0, "non_json": 0}
        self._lock = threading.Lock()

    def search(self, query: str, n: int) -> list[SearchHit]:
        self.check_args(query, n)
        self.http.start_trace()
        if n == 0:
            return []
        cfg = self.config
        ask = min(cfg.max_results, max(n, int(round(n * cfg.overfetch))))
        body = {"text": query, "image": None, "image_url": None, "embedding_input": None,
                "modality": cfg.modality, "num_images": ask, "indice_name": cfg.indice_name,
                "num_result_ids": ask, "use_mclip": False, "deduplicate": cfg.deduplicate,
                "use_safety_model": cfg.use_safety_model,
                "use_violence_detector": cfg.use_violence_detector,
                "aesthetic_score": cfg.aesthetic_score, "aesthetic_weight": cfg.aesthetic_weight}
        text = self.http.request("POST", cfg.base_url.rstrip("/") + "/knn-service",
                                 json_body=body, parse_json=False)
        items = _salvage_list(text)
        with self._lock:
            self.stats["searches"] += 1
            if items is None or not _strict_json_list(text):
                self.stats["non_json"] += 1
        if items is None:
            log.warning("clip_retrieval: non-JSON answer for %r (%d chars); no hits", query, len(text))
            return []
        hits = []
        for it in items:
            if not isinstance(it, dict) or not isinstance(it.get("url"), str):
                continue
            extra = {k: it[k] for k in ("id", "similarity") if k in it}
            hits.append(SearchHit(url=it["url"], caption=as_text(it.get("caption")),
                                  licence=as_text(it.get("license")) or None,
                                  creator=as_text(it.get("creator")) or None,
                                  landing_page=as_text(it.get("landing_page")) or None,
                                  extra=extra))
        return finalize_hits(hits, n, self.name)

    def close(self) -> None:
        self.http.close()


def _strict_json_list(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False
