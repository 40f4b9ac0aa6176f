"""The embedded synthetic web: a real vocabulary, visual latents tied to text, hidden targets.

Every concept ``c`` gets a visual latent ``z_c`` (``latent_dim``-d, unit variance per dimension):
``z_c = a * T(e_c) + sqrt(1 - a^2) * xi_c`` where ``e_c`` is the concept's text embedding, ``T`` a
fixed map (principal directions of the vocabulary's embeddings, then a seeded rotation,
standardised), ``xi_c`` concept-private noise and ``a`` the text-visual alignment (a difficulty knob:
at 0 text says nothing about looks). Image ``i`` of concept ``c`` has latent
``x = z_c + image_noise * eps(c, i)``, with ``eps`` drawn from a counter-based hash, so any image can
be produced on its own, in any order, bit-identically.

Hidden target concepts (from a theme) define the labeled target set. The ground-truth relevance
``g(c) = max_t exp(-|z_c - z_t|^2 / (2 rho^2))`` is 1 for a target, ~0 for concepts unlike every
target; it comes from the latents only, never from the agent-facing reward.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ie_env.vocab.base import Vocabulary
from ie_env.worlds.hashing import hash_normal, hash_uniform, mix64
from ie_env.worlds import shared

# Namespaces that keep web images, target-train and target-test images disjoint.
NS_WEB, NS_TRAIN, NS_TEST, NS_JUNK = 0, 1, 2, 3


@dataclass
class WorldConfig:
    """The embedded world. Defaults: few-shot targets (DESIGN §3a), sized for a 2-core CPU."""

    vocabulary: str = "embedded"  # "embedded" (shipped list) or "wordnet"
    seed: int = 0
    latent_dim: int = 16
    alignment: float = 0.95  # text-visual alignment a in [0, 1]
    image_noise: float = 0.5  # per-image latent noise, in units of the between-concept std
    relevance_radius: float = 1.6  # rho of the ground-truth relevance kernel (latent units)
    fidelity: Literal["latent", "pixels"] = "pixels"
    image_size: int = 32
    target_theme: str = "bird"  # "" = drawn from the seed
    num_targets: int = 20  # ~0.8% of the embedded vocabulary is a target (DESIGN §3a; README "Calibration")
    target_train_per_class: int = 10
    target_test_per_class: int = 30
    junk_fraction: float = 0.1  # off-topic results per query
    neighbor_fraction: float = 0.15  # results from the query's text neighbours
    num_neighbors: int = 5
    target_concepts: list[str] = field(default_factory=list)  # explicit target names (overrides theme)

    def validate(self) -> None:
        if not 0.0 <= self.alignment <= 1.0:
            raise ValueError(f"world.alignment must be in [0, 1], got {self.alignment}")
        if self.fidelity not in ("latent", "pixels"):
            raise ValueError(f"world.fidelity must be 'latent' or 'pixels', got {self.fidelity!r}")
        if self.num_targets < 2:
            raise ValueError("world.num_targets must be at least 2 (k-NN needs classes)")
        if not 0 <= self.junk_fraction + self.neighbor_fraction <= 1:
            raise ValueError("world.junk_fraction + world.neighbor_fraction must lie in [0, 1]")
        if self.image_size < 16:
            raise ValueError("world.image_size must be at least 16")


def load_vocabulary(name: str) -> Vocabulary:
    if name == "embedded":
        from ie_env.vocab.embedded import load_embedded_vocabulary

        return load_embedded_vocabulary()
    if name == "wordnet":
        from ie_env.vocab.wordnet import load_wordnet_vocabulary

        return load_wordnet_vocabulary()
    raise ValueError(f"unknown vocabulary {name!r}; valid: 'embedded', 'wordnet'")


_LATENT_MAPS: dict[tuple, np.ndarray] = {}


def text_to_latent_map(embeddings: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Fixed map of text embeddings to ``dim``-d, unit-variance coordinates (PCA + seeded rotation).

    Memoised per process (the SVD dominates building a world; every env of a vector env shares it).
    """
    key = (hashlib.sha1(np.ascontiguousarray(embeddings).view(np.uint8)).hexdigest(), embeddings.shape,
           str(embeddings.dtype), int(dim), int(seed))
    hit = _LATENT_MAPS.get(key)
    if hit is None:
        if len(_LATENT_MAPS) >= 8:
            _LATENT_MAPS.clear()
        hit = _LATENT_MAPS[key] = _text_to_latent_map(embeddings, dim, seed)
        hit.setflags(write=False)
    return hit


def _text_to_latent_map(embeddings: np.ndarray, dim: int, seed: int) -> np.ndarray:
    # One BLAS thread: a multi-threaded SVD / product differs in the last bits with the thread count,
    # and so would the world (its hash, every reward) between processes with different thread settings.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _latent_projection(embeddings, dim, seed)


def _latent_projection(embeddings: np.ndarray, dim: int, seed: int) -> np.ndarray:
    x = embeddings.astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    # Principal directions from a deterministic subsample keep this fast on large vocabularies.
    sub = x if len(x) <= 20000 else x[:: max(1, len(x) // 20000)]
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    proj = x @ vt[:dim].T
    rot, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    proj = proj @ rot
    proj /= proj.std(axis=0, keepdims=True) + 1e-12
    return proj


class EmbeddedWorld:
    """Concept latents, targets, ground truth, and image production for the embedded web."""

    def __init__(self, cfg: WorldConfig, vocabulary: Vocabulary, embeddings: np.ndarray) -> None:
        cfg.validate()
        if embeddings.shape[0] != len(vocabulary):
            raise ValueError("embeddings and vocabulary differ in length")
        self.cfg = cfg
        self.vocabulary = vocabulary
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.seed = int(cfg.seed)
        self._emb_key = shared.array_key(self.embeddings)
        # Built once per process and world (ie_env.worlds.shared): every env of a vector env shares it.
        self.latents = shared.shared("latents", (self._emb_key, cfg.latent_dim, self.seed, float(cfg.alignment)),
                                     self._build_latents)
        self._lemma_index = {}
        for i, c in enumerate(vocabulary.concepts):
            self._lemma_index.setdefault(c.lemma.lower(), i)
        self._renderer = None
        self._neighbors: np.ndarray | None = None
        self.set_targets(self._choose_targets())

    def _build_latents(self) -> np.ndarray:
        a = self.cfg.alignment
        text_part = text_to_latent_map(self.embeddings, self.cfg.latent_dim, self.seed)
        private = np.random.default_rng([self.seed, 1]).standard_normal(text_part.shape)
        return (a * text_part + np.sqrt(1.0 - a * a) * private).astype(np.float32)

    # --- targets and ground truth ---------------------------------------------------------
    def _choose_targets(self) -> np.ndarray:
        cfg = self.cfg
        if cfg.target_concepts:
            try:
                return np.array([self.vocabulary.index(n) for n in cfg.target_concepts])
            except KeyError as exc:
                raise ValueError(f"unknown target concept {exc.args[0]!r}") from None
        themes = self.vocabulary.themes
        theme = cfg.target_theme or themes[np.random.default_rng([self.seed, 2]).integers(len(themes))]
        members = [i for i, c in enumerate(self.vocabulary.concepts) if c.theme == theme]
        if len(members) < cfg.num_targets:
            raise ValueError(
                f"theme {theme!r} has {len(members)} concepts, fewer than num_targets="
                f"{cfg.num_targets}; themes: {', '.join(themes)}"
            )
        rng = np.random.default_rng([self.seed, 3])
        return np.sort(rng.choice(members, size=cfg.num_targets, replace=False))

    def set_targets(self, target_ids: np.ndarray) -> None:
        """Make ``target_ids`` the hidden target classes (label = position in this array)."""
        self.target_ids = np.asarray(target_ids, dtype=np.int64)
        d2 = ((self.latents[:, None, :] - self.latents[None, self.target_ids, :]) ** 2).sum(-1)
        rho2 = 2.0 * self.cfg.relevance_radius**2
        self.relevance = np.exp(-d2 / rho2).max(axis=1).astype(np.float32)
        self.relevance[self.target_ids] = 1.0
        self.nearest_target = d2.argmin(axis=1)

    def result_bank(self) -> dict:
        """The process's bank of query results of this world (``(concept, query key, n)`` -> images and
        their concepts), shared by every env built on an equal world: results depend on the world's
        seed, config and vocabulary only, never on its targets (see :meth:`search`, :meth:`images`)."""
        key = (self._emb_key, repr(sorted(vars(self.cfg).items())))
        return shared.shared("result_bank", key, dict)

    @property
    def target_names(self) -> list[str]:
        return [self.vocabulary[int(i)].lemma for i in self.target_ids]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.vocabulary.fingerprint().encode())
        h.update(repr(sorted(vars(self.cfg).items())).encode())
        h.update(self.latents.tobytes())
        h.update(self.target_ids.tobytes())
        return h.hexdigest()[:16]

    # --- images ---------------------------------------------------------------------------
    def image_latents(self, concepts: np.ndarray, indices: np.ndarray, namespace: int) -> np.ndarray:
        """Latents of images ``indices`` of ``concepts`` (arrays of equal length)."""
        keys = mix64(np.uint64(self.seed), np.uint64(namespace), concepts.astype(np.uint64), indices.astype(np.uint64))
        noise = hash_normal(keys, self.cfg.latent_dim)
        return self.latents[concepts] + self.cfg.image_noise * noise

    def images(self, concepts: np.ndarray, indices: np.ndarray, namespace: int = NS_WEB) -> np.ndarray:
        """Images in the world's fidelity: latents (float32 (n, d)) or pixels (uint8 (n, S, S, 3))."""
        concepts = np.asarray(concepts, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        lat = self.image_latents(concepts, indices, namespace)
        if self.cfg.fidelity == "latent":
            return lat.astype(np.float32)
        return self._render(lat, concepts, indices, namespace)

    def pixels(self, concepts: np.ndarray, indices: np.ndarray, namespace: int = NS_WEB) -> np.ndarray:
        """Images as the pixels fidelity draws them (uint8 ``(n, S, S, 3)``), in either fidelity: the
        latent world's ``render_mode="rgb_array"`` frames show these."""
        concepts = np.asarray(concepts, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        return self._render(self.image_latents(concepts, indices, namespace), concepts, indices, namespace)

    def _render(self, lat: np.ndarray, concepts: np.ndarray, indices: np.ndarray, namespace: int) -> np.ndarray:
        keys = mix64(np.uint64(self.seed + 7), np.uint64(namespace), concepts.astype(np.uint64), indices.astype(np.uint64))
        return self.renderer.render(lat.astype(np.float32), keys.astype(np.int64) & np.int64(0x7FFFFFFFFFFFFFFF))

    @property
    def renderer(self):
        if self._renderer is None:
            from ie_env.worlds.render import RenderConfig, Renderer

            self._renderer = Renderer(
                RenderConfig(image_size=self.cfg.image_size, latent_dim=self.cfg.latent_dim, seed=self.seed)
            )
        return self._renderer

    def target_split(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, concept_ids)`` of the labeled target set."""
        per = self.cfg.target_train_per_class if split == "train" else self.cfg.target_test_per_class
        ns = NS_TRAIN if split == "train" else NS_TEST
        labels = np.repeat(np.arange(len(self.target_ids)), per)
        concepts = self.target_ids[labels]
        indices = np.tile(np.arange(per), len(self.target_ids))
        return self.images(concepts, indices, ns), labels, concepts

    # --- search -----------------------------------------------------------------------------
    @property
    def neighbors(self) -> np.ndarray:
        """``(N, num_neighbors)`` nearest other concepts by text embedding."""
        if self._neighbors is None:
            self._neighbors = shared.shared("neighbors", (self._emb_key, self.cfg.num_neighbors), self._build_neighbors)
        return self._neighbors

    def _build_neighbors(self) -> np.ndarray:
        k = self.cfg.num_neighbors
        out = np.empty((len(self.vocabulary), k), dtype=np.int64)
        e = self.embeddings
        for s in range(0, len(e), 4096):
            sims = e[s : s + 4096] @ e.T
            rows = np.arange(sims.shape[0])
            sims[rows, s + rows] = -np.inf
            part = np.argpartition(-sims, k, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
            out[s : s + 4096] = np.take_along_axis(part, order, 1)
        return out

    def resolve_query(self, text: str) -> int | None:
        """The concept a query text names: its last words matched to a lemma, else None."""
        words = text.lower().strip().split()
        for start in range(len(words)):
            hit = self._lemma_index.get(" ".join(words[start:]))
            if hit is not None:
                return hit
        return None

    def search(self, concept: int, query_key: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Result list of a query for ``concept``: ``(concept_ids, image_indices)`` of ``n`` hits.

        ``query_key`` (a hash of the query text) picks which images: a new descriptor brings new
        images of the same concept. A share of hits comes from the concept's text neighbours and a
        share is off-topic junk, as on a real engine.
        """
        base = mix64(np.uint64(self.seed + 11), np.uint64(concept), np.uint64(query_key & 0xFFFFFFFFFFFF))
        slots = np.arange(n, dtype=np.uint64)
        u = hash_uniform(mix64(base, slots, np.uint64(1)))
        pick = hash_uniform(mix64(base, slots, np.uint64(2)))
        concepts = np.full(n, concept, dtype=np.int64)
        junk = u < self.cfg.junk_fraction
        neigh = (~junk) & (u < self.cfg.junk_fraction + self.cfg.neighbor_fraction)
        concepts[junk] = (pick[junk] * len(self.vocabulary)).astype(np.int64)
        nb = self.neighbors[concept]
        concepts[neigh] = nb[(pick[neigh] * len(nb)).astype(np.int64)]
        offset = np.int64(query_key & 0x3FFFFFFF) * 1024 if query_key else 0
        indices = offset + np.arange(n, dtype=np.int64)
        return concepts, indices
