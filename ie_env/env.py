"""``InternetExplorerEnv``: one step = one query; every ``queries_per_iteration`` steps, an SSL update.

Data flow of a step: concept index -> query text (``"{descriptor} {lemma}"``) -> search -> images
-> features under the current encoder -> image rewards (mean cosine similarity to the k=15 nearest
target features) -> query reward (mean of the top-10). When an iteration closes the learner trains
on the iteration's new images plus ``pcr`` x as many drawn from replay buffer and target train set,
the best half of the new images joins the replay buffer, target features are refreshed, the
``gain`` of each query is measured and k-NN accuracy on the target test split is evaluated.

``action_mode`` (``vocab`` | ``embedding`` | ``slate``, :mod:`ie_env.actions`) chooses the action and
observation spaces; ``targets`` (:mod:`ie_env.target_sampling`) can draw a fresh hidden target at every
``reset`` from a train or held-out split. In the ``latent`` fidelity a lean path scores a query's
image latents in one product and a compiled top-k (:mod:`ie_env.latent_fast`), keeps each query's
result list in a per-world bank, and with ``info_level="minimal"`` leaves out the costly info fields
(per-image rewards, per-query gains unless the reward needs them, k-NN after each iteration).

``engine`` (:mod:`ie_env.web_search`) swaps the embedded world for a real engine (flickr, openverse,
wikimedia, clip_retrieval, local_corpus, or replay of a recorded run): the query text goes to the
engine, hits are fetched and decoded at the world's image size, and scoring and training are the
pixel path's. Ground truth is unknown there: ``true_relevance`` and ``image_true_relevance`` are NaN,
and ``info["fetch"]`` counts hits, images and failed downloads by reason.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from ie_env.actions import ACTION_MODES, ActionConfig, EpisodeHistory, make_action_mode
from ie_env.config import ConfigError, from_dict, merge
from ie_env.evaluation.knn import knn_accuracies
from ie_env.learner.base import Learner
from ie_env.learner.ssl import SSLConfig, SSLLearner
from ie_env.latent_fast import (LatentScorer, array_mean, latent_close, latent_step, segment_top_means, step_kernel,
                                top_mean)
from ie_env.learner.surrogate import SurrogateConfig, WhiteningSurrogate
from ie_env.query_store import QueryStore, query_key
from ie_env.replay import ReplayBuffer
from ie_env.reward import image_rewards, query_reward
from ie_env.score import episode_gap_closed
from ie_env.target_sampling import TargetSampler, TargetSamplingConfig
from ie_env.targets import TargetConfig, TargetSet, load_target
from ie_env.vocab.descriptors import DescriptorConfig, NoDescriptors, make_descriptor_source
from ie_env.vocab.text_embed import concept_embeddings
from ie_env.web_search import EngineConfig, WebSearch, decode_stats, encode_stats, miss_counts
from ie_env.worlds.embedded import NS_WEB, EmbeddedWorld, WorldConfig, load_vocabulary
from ie_env.worlds.shared import shared_concept_embeddings


@dataclass
class EnvConfig:
    """Everything an episode depends on; paper values in comments."""

    world: WorldConfig = field(default_factory=WorldConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    descriptors: DescriptorConfig = field(default_factory=DescriptorConfig)
    images_per_query: int = 50  # paper 100
    min_images: int = 10  # paper: keep queries with >= 10 images
    queries_per_iteration: int = 16  # paper 256
    iterations: int = 8  # query budget = iterations x queries_per_iteration
    reward: Literal["query", "gain"] = "query"
    k: int = 15  # nearest target images per image reward
    top_images: int = 10  # image rewards averaged into a query reward
    pcr: float = 2.0  # replayed + target images per new image
    replay_fraction: float = 0.5  # share of new images kept in the replay buffer
    replay_capacity: int = 0  # 0 = unbounded
    warmup_images: int = 2560  # target-only SSL before exploring (the paper's start point)
    history: int = 4  # past queries in the observation
    action_mode: Literal["vocab", "embedding", "slate"] = "vocab"
    actions: ActionConfig = field(default_factory=ActionConfig)
    targets: TargetSamplingConfig = field(default_factory=TargetSamplingConfig)
    target: TargetConfig = field(default_factory=TargetConfig)  # the labeled target set (default: the world's)
    engine: EngineConfig = field(default_factory=EngineConfig)  # where images come from (default: the world)
    info_level: Literal["full", "minimal"] = "full"  # minimal: no per-image lists, gains or k-NN
    # numpy BLAS threads of the whole process, set when an env is built (0 = leave as is). The latent
    # fidelity's products are tiny: on a busy machine waking BLAS worker threads costs more than them.
    blas_threads: int = 0
    mask_queried: bool = False  # action_masks() forbids concepts already queried
    knn_k: list[int] = field(default_factory=lambda: [20, 10, 200])
    knn_t: float = 0.07
    evaluate: bool = True  # k-NN on the target test split after every iteration
    # Not in the paper: at each iteration close, score every earlier query of the episode again under
    # the updated encoder (info["iteration_stats"]["rescored_rewards"]), so that a sampler can refit on
    # rewards from one encoder instead of a mix of stale ones (the GP sampler does when they are there).
    rescore_history: bool = False

    @property
    def query_budget(self) -> int:
        return self.iterations * self.queries_per_iteration

    def validate(self) -> None:
        for name in ("images_per_query", "queries_per_iteration", "iterations", "k", "top_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.reward not in ("query", "gain"):
            raise ConfigError(f"reward must be 'query' or 'gain', got {self.reward!r}")
        if self.action_mode not in ACTION_MODES:
            raise ConfigError(f"action_mode {self.action_mode!r} is not supported; valid: {', '.join(ACTION_MODES)}")
        if self.info_level not in ("full", "minimal"):
            raise ConfigError(f"info_level must be 'full' or 'minimal', got {self.info_level!r}")
        if self.history < 0:
            raise ConfigError(f"history must be >= 0, got {self.history}")
        if self.pcr < 0 or not 0 <= self.replay_fraction <= 1:
            raise ConfigError("pcr must be >= 0 and replay_fraction in [0, 1]")
        if self.target.kind != "embedded":
            if self.world.fidelity != "pixels":
                raise ConfigError(f"target.kind={self.target.kind} needs world.fidelity=pixels")
            if self.targets.mode != "fixed":
                raise ConfigError(f"target.kind={self.target.kind} needs targets.mode=fixed")
            if self.target.image_size not in (None, self.world.image_size):
                raise ConfigError(f"target.image_size ({self.target.image_size}) must equal world.image_size ({self.world.image_size})")
        if self.engine.name != "embedded" and (self.target.kind == "embedded" or self.world.fidelity != "pixels"):
            raise ConfigError(f"engine.name={self.engine.name} needs world.fidelity=pixels and a target set "
                              "(target.kind=imagefolder or torchvision): ground truth is unknown on the web")


RESCORE_QUERIES_PER_BATCH = 64  # rescore_history with pixels: queries whose images share a forward batch
_NO_FRESH = (np.zeros((0, 1), np.float32), np.zeros(0, np.float32), -1)  # the lean step's "no new finds" buffer


def _mean(values: list[float]) -> float:
    """Mean of a list of floats from an exactly rounded sum (``math.fsum``); NaN for an empty list.
    Cheaper than a NumPy reduction on the iteration close, where its code runs cold."""
    return math.fsum(values) / len(values) if values else float("nan")


def make_config(config: EnvConfig | dict | None = None, **overrides: Any) -> EnvConfig:
    cfg = config if isinstance(config, EnvConfig) else from_dict(EnvConfig, config or {})
    return merge(cfg, overrides) if overrides else cfg


def env_spaces(config: EnvConfig | dict) -> tuple[gym.Space, gym.Space]:
    """``(observation_space, action_space)`` of an env of ``config``, without building its world."""
    cfg = make_config(config)
    emb = shared_concept_embeddings(load_vocabulary(cfg.world.vocabulary))
    mode = make_action_mode(cfg.action_mode, cfg.actions, emb, cfg.history, cfg.query_budget, cfg.mask_queried)
    return mode.observation_space, mode.action_space


class InternetExplorerEnv(gym.Env):
    """Targeted exploration of an image search engine, as a Gymnasium environment.

    ``config`` is an :class:`EnvConfig` or a (partial, nested) dict of its fields.
    """

    #: ``rgb_array``: the last query's images under its concept, query reward and ``g``
    #: (:mod:`ie_env.rendering`; the latent fidelity draws its images as the pixels fidelity would).
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, config: EnvConfig | dict | None = None, store_dir: str | None = None,
                 render_mode: str | None = None, **overrides: Any) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ConfigError(f"render_mode {render_mode!r} is not supported; valid: None, "
                              f"{', '.join(self.metadata['render_modes'])}")
        self.render_mode = render_mode
        self.config = make_config(config, **overrides)
        cfg = self.config
        if cfg.blas_threads > 0:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=cfg.blas_threads, user_api="blas")
        self.vocabulary = load_vocabulary(cfg.world.vocabulary)
        self.concept_embeddings = shared_concept_embeddings(self.vocabulary)  # one read-only copy per process
        self.world = EmbeddedWorld(cfg.world, self.vocabulary, self.concept_embeddings)
        self.store = QueryStore(store_dir) if store_dir else None
        self._web = (None if cfg.engine.name == "embedded" else
                     WebSearch(cfg.engine, cfg.world.image_size, store_dir, leak_images=lambda: self.test_images))
        self._descriptors = make_descriptor_source(cfg.descriptors)
        self._plain_queries = isinstance(self._descriptors, NoDescriptors)
        self._latent = cfg.world.fidelity == "latent"
        self._full_info = cfg.info_level == "full"
        self.action_mode = make_action_mode(
            cfg.action_mode, cfg.actions, self.concept_embeddings, cfg.history, cfg.query_budget, cfg.mask_queried
        )
        self.action_space = self.action_mode.action_space
        self.observation_space = self.action_mode.observation_space
        self.obs_dim = self.action_mode.context_dim
        self.target_sampler = (
            TargetSampler(self.vocabulary, cfg.world.num_targets, cfg.targets) if cfg.targets.mode != "fixed" else None
        )
        self.target_theme = cfg.world.target_theme if self.target_sampler is None else ""
        self.counters = {"materialized_images": 0, "scored_images": 0, "ssl_updates": 0}
        # Query results (latent fidelity): shared by episodes and by every env of this process on an equal world.
        self._bank: dict[tuple[int, int, int], dict[str, np.ndarray]] = self.world.result_bank() if self._latent else {}
        self._splits: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._keys: dict[int, tuple[str, str, str]] = {}
        self._target_feats: torch.Tensor | None = None
        self._scorer: LatentScorer | None = None
        self._warm_cache: tuple | None = None
        self._ready = False
        self._budget = cfg.query_budget
        self._top_images = cfg.top_images
        # The lean step (``_lean_step``): latent, embedded world, plain queries, minimal info.
        self._lean = (self._latent and self._web is None and self._plain_queries and not self._full_info
                      and self.store is None)
        self._names = [c.name for c in self.vocabulary]
        self._plain_ctx = self.action_mode.plain_context
        self._lean_queries: dict[int, tuple] = {}  # concept -> what the lean step needs of its query
        self._step_kernel = None  # the compiled one-query kernel once it has run (``_lean_score``)
        self._rel_of, self._rel = None, []  # world.relevance and its values as a list (info)
        self._oracle_memo: tuple | None = None  # (relevance array, n, mean of its n largest)

    # --- public helpers ---------------------------------------------------------------------
    def ground_truth_relevance(self) -> np.ndarray:
        """g(c) for every concept (embedded world only; never part of an observation)."""
        if self._web is not None:
            raise RuntimeError(f"ground-truth relevance is unknown with engine {self.config.engine.name}; "
                               "it exists in the embedded world only")
        return self.world.relevance.copy()

    def peek_query_rewards(self, concepts: np.ndarray | list[int] | None = None) -> np.ndarray:
        """The query reward each concept (every concept by default) would get now, under the current
        encoder and target features, queried without a descriptor: what a step would return (0.0 below
        ``min_images`` hits), but no step is taken (no budget, history, cache or training data change).
        Embedded world only; for analyses such as the sampler ceilings of ``ie_experiments.ceiling``."""
        if self._web is not None:
            raise RuntimeError(f"peek_query_rewards runs in the embedded world only, not with engine {self.config.engine.name}")
        if not self._ready:
            raise RuntimeError("call reset() before peek_query_rewards()")
        ids = np.arange(len(self.vocabulary)) if concepts is None else np.asarray(concepts, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocabulary)):
            raise ValueError(f"concepts must lie in [0, {len(self.vocabulary)})")
        out = np.zeros(len(ids), dtype=np.float64)
        sc = self._latent_scorer() if self._latent else None
        state = sc._state.copy() if sc is not None else None  # the threshold search's warm start
        for i, c in enumerate(ids):
            images = self._download(int(c), "", count=False)["images"]
            if len(images) >= self.config.min_images:
                out[i] = self._score_query(images)[1]
        if sc is not None:
            sc._state[:] = state
        return out

    def render(self) -> np.ndarray | None:
        """``render_mode="rgb_array"``: an ``(H, W, 3)`` uint8 frame of the last query (its images under
        the concept, query reward, ``g`` and budget spent; a blank grid before the first query). None
        without a render mode."""
        if self.render_mode != "rgb_array":
            return None
        from ie_env.rendering import query_frame

        size = self.config.world.image_size
        h = getattr(self, "history", None)
        if not self._ready or h is None or h.t == 0:
            return query_frame(None, ["no query yet", f"budget {self.config.query_budget} queries"], size)
        concept = int(h.actions[h.t - 1])
        g = float("nan") if self._web is not None else float(self.world.relevance[concept])
        caption = [self.vocabulary[concept].name[:60],
                   f"reward {float(h.rewards[h.t - 1]):.3f}   g {g:.2f}   query {self.steps}/{self.config.query_budget}"]
        return query_frame(self._last_query_pixels(concept), caption, size)

    def _last_query_pixels(self, concept: int) -> np.ndarray:
        """The last query's images as pixels: the cached ones (pixels fidelity, web engines), else the
        concept's plain-query images drawn as the pixels fidelity draws them."""
        keys = self._episode_keys
        if not self._latent and keys and keys[-1] in self.cache:
            return self.cache[keys[-1]]["images"]
        concepts, indices = self.world.search(concept, 0, self.config.images_per_query)
        return self.world.pixels(concepts, indices, NS_WEB)

    def close(self) -> None:
        """Release the search engine, fetcher and snapshot recorder (web engines)."""
        if self._web is not None:
            self._web.close()

    def action_masks(self) -> np.ndarray:
        """Allowed actions (sb3-contrib's MaskablePPO convention); all allowed in ``embedding`` mode."""
        if not self._ready:
            n = self.action_space.n if isinstance(self.action_space, gym.spaces.Discrete) else 1
            return np.ones(n, dtype=bool)
        mask = self.action_mode.action_masks(self.history)
        return np.ones(1, dtype=bool) if mask is None else mask

    @property
    def queried(self) -> np.ndarray:
        """Distinct concepts queried this episode (sorted)."""
        return np.flatnonzero(self.history.queried)

    @property
    def target_feats(self) -> torch.Tensor:
        if isinstance(self._target_feats, np.ndarray):  # the latent close keeps them as numpy
            self._target_feats = torch.from_numpy(self._target_feats)
        return self._target_feats

    @target_feats.setter
    def target_feats(self, value: torch.Tensor) -> None:
        self._target_feats = value
        self._scorer = None

    # --- episode --------------------------------------------------------------------------
    def _make_learner(self) -> Learner:
        if self._latent:
            return WhiteningSurrogate(self.config.world.latent_dim, self.config.surrogate)
        ssl_cfg = copy.deepcopy(self.config.ssl)
        ssl_cfg.image_size = self.config.world.image_size
        ssl_cfg.seed = int(self._episode_seed)
        rebuild = ""
        if ssl_cfg.init == "pretrained":
            ssl_cfg.init, rebuild = self._pretrained_start()
        learner = SSLLearner(ssl_cfg, init_rebuild=rebuild)
        if self.config.ssl.init == "pretrained":
            learner.init_record["init"] = "pretrained"
        return learner

    def _pretrained_start(self) -> tuple[str, str]:
        """``(path, rebuild command)`` of the ``ssl.init: pretrained`` artifact of this env's world,
        backbone and recipe (resolved once per env)."""
        if self._web is not None or self.config.target.kind != "embedded":
            raise ConfigError("ssl.init: 'pretrained' is the embedded world's start; for a corpus or real target, "
                              "build one with `ie-pretrain --source FOLDER_OR_CORPUS` and set ssl.init to its path")
        if getattr(self, "_pretrained_memo", None) is None:
            from ie_env.learner.pretrained import BUILD_COMMAND, world_artifact_path

            path, _ = world_artifact_path(self.config)
            task = getattr(self, "task_id", "")
            how = f"{BUILD_COMMAND} --task {task}" if task else f"{BUILD_COMMAND} with this env's config (--config/--set)"
            self._pretrained_memo = (str(path), how)
        return self._pretrained_memo

    def _external_target(self) -> TargetSet:
        """The configured image-folder / torchvision target set, loaded once."""
        if getattr(self, "_target_set", None) is None:
            self._target_set = load_target(self.config.target, self.config.world.image_size,
                                           max_pixels=self.config.engine.fetch.max_pixels)
        return self._target_set

    @property
    def target_class_names(self) -> list[str]:
        """Names of the target classes (label i = name i)."""
        if self.config.target.kind != "embedded":
            return list(self._external_target().class_names)
        return list(self.world.target_names)

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if self.config.target.kind != "embedded":
            ts = self._external_target()
            return (ts.train_images, ts.train_labels) if split == "train" else (ts.test_images, ts.test_labels)
        key = (split, self.world.target_ids.tobytes())
        hit = self._splits.get(key)
        if hit is None:
            if len(self._splits) >= 16:
                self._splits.clear()
            images, labels, _ = self.world.target_split(split)
            hit = self._splits[key] = (images, labels)
        return hit

    @property
    def test_images(self) -> np.ndarray:
        return self._split("test")[0]

    @property
    def test_labels(self) -> np.ndarray:
        return self._split("test")[1]

    def _draw_target(self) -> None:
        """A fresh hidden target from the configured split (``targets.mode`` train / heldout)."""
        split = "heldout" if self.config.targets.mode == "heldout" else "train"
        theme, ids = self.target_sampler.sample(split, np.random.default_rng([self._episode_seed, 5]))
        if not np.array_equal(ids, self.world.target_ids):
            self.world.set_targets(ids)
        self.target_theme = theme

    def _init_episode(self) -> None:
        self.rng = np.random.default_rng(self._episode_seed)
        if self.target_sampler is not None:
            self._draw_target()
        self.learner = self._make_learner()
        self.replay = ReplayBuffer(self.config.replay_capacity)
        self.train_images, self.train_labels = self._split("train")
        self.cache: dict[str, dict[str, np.ndarray]] = {}
        self._scored: dict[str, np.ndarray] = {}
        self.history = EpisodeHistory(len(self.vocabulary), self.config.query_budget)
        mode = self.action_mode
        mode.reset(np.random.default_rng([self._episode_seed, 7]) if mode.uses_rng else mode.rng)
        self.steps = 0
        self.iteration = 0
        self._pending: list[dict[str, Any]] = []
        self._episode_keys: list[str] = []  # each step's query key, in order
        self._start_fresh()
        self.knn_history: list[dict[int, float]] = []
        self.last_iteration: dict[str, Any] = {}
        self._ready = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._episode_seed = int(self.np_random.integers(2**31))
        self._init_episode()
        warm = self.config.warmup_images
        if warm > 0:
            self.learner.update(self._warmup_batch(warm))
            self.counters["ssl_updates"] += 1
        self._refresh_targets()
        if self.config.evaluate and self._full_info:
            self.knn_history.append(self.evaluate())
        info: dict[str, Any] = {"knn_accuracy": self.knn_history[-1] if self.knn_history else None}
        if not self._latent:
            info["ssl_init"] = dict(self.learner.init_record)
        if self.target_sampler is not None:
            info["target_theme"] = self.target_theme
        return self._observe(), info

    def _warmup_batch(self, warm: int) -> np.ndarray:
        """The target train images tiled to ``warm`` images. In the latent fidelity it is built once per
        target set and read-only, so the surrogate computes its moments once (``batch_moments``)."""
        train = self.train_images
        hit = self._warm_cache if self._latent else None
        if hit is not None and hit[0] is train and hit[1] == warm:
            return hit[2]
        reps = int(np.ceil(warm / len(train)))
        batch = train[np.tile(np.arange(len(train)), reps)[:warm]]
        if self._latent:
            batch.setflags(write=False)
            self._warm_cache = (train, warm, batch)
        return batch

    def _refresh_targets(self) -> None:
        if self._latent and isinstance(self.learner, WhiteningSurrogate):
            # The target features and the scorer of this iteration, in one compiled pass.
            self._scorer, self._target_feats = LatentScorer.for_targets(self.learner, self.train_images, self.config.k)
            return
        self.target_feats = self.learner.features(self.train_images)

    def evaluate(self) -> dict[int, float]:
        """Weighted k-NN accuracy on the target test split for every ``knn_k``."""
        tr = self.target_feats
        te = self.learner.features(self.test_images)
        return knn_accuracies(
            tr, torch.as_tensor(self.train_labels), te, torch.as_tensor(self.test_labels),
            ks=tuple(self.config.knn_k), T=self.config.knn_t,
        )

    def _observe(self) -> Any:
        """The observation after the latest step (slate mode draws the next slate here)."""
        self._last_obs = self.action_mode.observation(self.history)
        return self._last_obs

    def _obs(self) -> Any:
        return self._last_obs

    # --- one query ------------------------------------------------------------------------
    def _query(self, action: int) -> tuple[str, str, str]:
        if self._plain_queries:
            hit = self._keys.get(action)
            if hit is None:
                concept = self.vocabulary[action]
                hit = self._keys[action] = (concept.lemma, "", query_key(concept.name, "", self.config.images_per_query))
            return hit
        concept = self.vocabulary[action]
        descriptor = self._descriptors.descriptor(concept.lemma, self.rng)
        text = f"{descriptor} {concept.lemma}" if descriptor else concept.lemma
        return text, descriptor, query_key(concept.name, descriptor, self.config.images_per_query)

    def _download(self, action: int, descriptor: str, count: bool = True) -> dict[str, np.ndarray]:
        if self._web is not None:
            return self._web_download(action, descriptor)
        qk = zlib.crc32(descriptor.encode()) if descriptor else 0
        n = self.config.images_per_query
        entry = self._bank.get((action, qk, n)) if self._latent else None
        if entry is None:
            concepts, indices = self.world.search(action, qk, n)
            images = self.world.images(concepts, indices, NS_WEB)
            entry = {"images": images, "concepts": concepts}
            if self._latent:
                entry["images"].setflags(write=False)
                entry["concepts"].setflags(write=False)
                self._bank[(action, qk, n)] = entry
        if count:
            self.counters["materialized_images"] += len(entry["images"])
        return entry

    def _web_download(self, action: int, descriptor: str) -> dict[str, np.ndarray]:
        """Search the configured engine for the query text and fetch its images (see ``web_search``)."""
        lemma = self.vocabulary[action].lemma
        res = self._web.search_images(f"{descriptor} {lemma}" if descriptor else lemma, self.config.images_per_query)
        self.counters["materialized_images"] += len(res.images)
        return {"images": res.images, "fetch": encode_stats(res.stats)}

    def replay_misses(self) -> dict[str, Any] | None:
        """With ``engine.name=replay``: this episode's queries the snapshot does not hold and hit images
        it could not serve (``web_search.miss_counts``, one count per distinct query); else None."""
        if self._web is None or not self._web.replay:
            return None
        entries = (self.cache.get(k) for k in dict.fromkeys(self._episode_keys))
        stats = [decode_stats(e["fetch"]) for e in entries if e is not None and "fetch" in e]
        return miss_counts(stats, self._web.store.refused_paths)

    def _web_info(self, entry: dict[str, np.ndarray]) -> dict[str, Any]:
        """What a web query's info says instead of ground truth (unknown: NaN) and its fetch counts."""
        fetch = decode_stats(entry["fetch"]) if "fetch" in entry else {}
        return {"engine": self.config.engine.name, "fetch": fetch, "image_true_relevance": float("nan"),
                "new_relevant_images": 0, "target_classes_hit": []}

    def _latent_scorer(self) -> LatentScorer:
        if self._scorer is None:
            feats = self._target_feats.numpy() if isinstance(self._target_feats, torch.Tensor) else self._target_feats
            self._scorer = LatentScorer.from_learner(self.learner, feats, self.config.k)
        return self._scorer

    def _score(self, images: np.ndarray) -> np.ndarray:
        """Image rewards under the current encoder: the paper's mean similarity to the k nearest targets."""
        if self._latent:
            return self._latent_scorer().image_rewards(images)
        feats = self.learner.features(images)
        return image_rewards(feats, self.target_feats, self.config.k).numpy()

    def _score_query(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        """Image rewards and the query reward (mean of the ``top_images`` best) of one query."""
        if self._latent:
            return self._latent_scorer().score(images, self.config.top_images)
        rewards = self._score(images)
        return rewards, query_reward(rewards, self.config.top_images)

    def step(self, action):
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        concept = self.action_mode.to_concept(action, self.history)
        if self.steps >= self._budget:
            raise RuntimeError("the query budget is spent; call reset()")
        if self._lean:
            return self._lean_step(concept)
        text, descriptor, key = self._query(concept)
        entry = self.cache.get(key)
        cached = entry is not None
        if not cached:
            entry = self.store.get(key) if self.store is not None else None
            if entry is None:
                entry = self._download(concept, descriptor)
                if self.store is not None:
                    self.store.put(key, **entry)
            self.cache[key] = entry
        scored = self._scored.get(key)
        if scored is None:
            scored = self._score_query(entry["images"])
            self.counters["scored_images"] += len(scored[0])
            self._scored[key] = scored  # same images, same encoder: same rewards until the update
        return self._record(concept, text, descriptor, key, cached, scored[0], scored[1])

    def _lean_step(self, concept: int):
        """:meth:`step` of the latent fidelity with plain queries, the embedded world and no store: the
        same images, rewards and info, with the key lookup, bank, scorer and record inlined, and the
        iteration's new finds written into one buffer as they come (no concatenation at the close)."""
        lean = self._lean_queries.get(concept)
        if lean is None:
            lean = self._lean_query(concept)
        key, entry, images, n, fits, valid, out = lean  # fits: float32 rows of the new-finds buffer's width
        cache = self.cache
        cached = key in cache
        if not cached:
            cache[key] = entry
            self.counters["materialized_images"] += n
        scored = self._scored.get(key)
        observed = False
        if scored is None:
            fresh = not cached and fits and self._n_fresh + n <= len(self._fresh_x)
            if not cached and not fresh:
                self._fresh_ok = False
            kernel = self._step_kernel
            h = self.history
            pos = h.t
            if kernel is not None and fits and pos < h.budget:  # score, record, next observation, new finds: one call
                sc = self._scorer or self._latent_scorer()
                mode = self.action_mode
                obs = np.empty(self.obs_dim, np.float32)
                was = h.queried[concept]
                q = float(kernel(images, sc.mu, sc.Maug, sc.t, sc.k, sc.fbound, sc._state, self._top_images, out,
                                 self.config.min_images, concept, h.actions, h.rewards, h.last_reward, h.queried, pos, obs,
                                 mode.E, mode.history_len, 1.0 - (pos + 1) / h.budget,
                                 *((self._fresh_x, self._fresh_r, self._n_fresh) if fresh else _NO_FRESH)))
                h.t = pos + 1
                if not was:
                    h.n_distinct += 1
                scored = (out, q)
                self._last_obs = obs
                observed = True
            else:
                scored = self._lean_score(concept, images, fresh)
                observed = scored[2]
                scored = scored[:2]
            if fresh and valid:
                self._n_fresh += n
            self._scored[key] = scored
            self.counters["scored_images"] += n
        rewards, q = scored
        if not valid:
            q = 0.0
        if not observed:
            self.history.record(concept, q)
        self._pending.append({"key": key, "action": concept, "cached": cached, "valid": valid, "rewards": rewards, "q": q})
        self._episode_keys.append(key)
        self.steps += 1
        rel = self._relevance_list()
        info: dict[str, Any] = {
            "action": concept, "concept": self._names[concept], "query_reward": q, "true_relevance": rel[concept],
            "hits": n, "new_images": 0 if cached or not valid else n, "cached": cached,
            "iteration": self.iteration, "iteration_closed": False,
        }
        return self._finish_step(info, q, observed)

    def _relevance_list(self) -> list[float]:
        """The world's ground-truth relevance as a list of floats, rebuilt when the world's array changes."""
        rel = self.world.relevance
        if rel is not self._rel_of:
            self._rel_of, self._rel = rel, rel.tolist()
        return self._rel

    def _lean_query(self, concept: int) -> tuple:
        """What the lean step keeps of a concept's query (across episodes): its key, bank entry, images,
        their count, whether they fit the new-finds buffer's rows, whether the query is valid, and the
        array its image rewards are scored into. That array is the concept's own: a query is scored at
        most once an iteration (repeats reuse ``_scored``) and nothing outside the iteration keeps it."""
        key = self._query(concept)[2]
        entry = self._download(concept, "", count=False)
        images = entry["images"]
        n = len(images)
        fits = images.dtype == np.float32 and images.ndim == 2 and images.shape[1:] == self._fresh_x.shape[1:]
        lean = self._lean_queries[concept] = (key, entry, images, n, fits, n >= self.config.min_images, np.empty(n, np.float32))
        return lean

    def _lean_score(self, concept: int, images: np.ndarray, fresh: bool) -> tuple[np.ndarray, float, bool]:
        """The lean step's query scored without the ready compiled kernel: :func:`latent_step` where the
        context is plain (it builds the kernel on its first call), else the scorer; ``(rewards, q,
        observed)``, observed meaning the history and next observation are done."""
        cfg = self.config
        n = len(images)
        buf = (self._fresh_x, self._fresh_r, self._n_fresh) if fresh else None
        if self._plain_ctx:
            obs = np.empty(self.obs_dim, np.float32)
            mode = self.action_mode
            scored = latent_step(self._latent_scorer(), images, self._top_images, cfg.min_images, concept, self.history, obs,
                                 mode.E, mode.history_len, buf)
            if scored is not None:
                self._last_obs = obs
                self._step_kernel = step_kernel()
                return scored[0], scored[1], True
        rewards, q = self._latent_scorer().score(images, self._top_images)
        if fresh and n >= cfg.min_images:
            self._fresh_x[self._n_fresh : self._n_fresh + n] = images
            self._fresh_r[self._n_fresh : self._n_fresh + n] = rewards
        return rewards, q, False

    def restore_step(self, record: dict[str, Any]):
        """Re-apply a logged query (from ``queries.jsonl``) without downloading or scoring again.

        Used when a killed run resumes mid-iteration: images come from the run's store, rewards
        from the record. Returns what ``step`` returned for it.
        """
        action = int(record["action"])
        text, descriptor, key = self._query(action)
        if key != record["key"]:
            raise RuntimeError(f"resume diverged at step {self.steps}: query {text!r} is not the logged one")
        entry = self.cache.get(key) or (self.store.get(key) if self.store is not None else None)
        if entry is None:
            raise RuntimeError(f"resume: the images of logged query {text!r} are missing from the store")
        self.cache[key] = entry
        rewards = np.asarray(record["image_rewards"], dtype=np.float32)
        # The logged query reward, bit for bit: a recomputed top-mean can round differently.
        q = record.get("query_reward")
        q = None if q is None else float(q)
        self._scored.setdefault(key, (rewards, q))  # a repeat later in this iteration reuses it, as in step
        return self._record(action, text, descriptor, key, bool(record["cached"]), rewards, q)

    def _record(self, action, text, descriptor, key, cached, rewards, q_reward=None):
        cfg = self.config
        self._fresh_ok = False  # this iteration's new finds are not in the lean step's buffer
        n = len(rewards)
        valid = n >= cfg.min_images
        if not valid:
            q_reward = 0.0
        elif q_reward is None:
            q_reward = top_mean(rewards, cfg.top_images)
        self.history.record(action, q_reward)
        web = self._web is not None  # on the web ground truth is unknown: NaN
        g = float("nan") if web else float(self.world.relevance[action])
        self._episode_keys.append(key)
        self._pending.append(
            {"key": key, "action": action, "cached": cached, "valid": valid, "rewards": rewards, "q": q_reward}
        )
        self.steps += 1
        info: dict[str, Any] = {
            "action": action,
            "concept": self.vocabulary[action].name,
            "query_reward": q_reward,
            "true_relevance": g,
            "hits": n,
            "new_images": 0 if cached or not valid else n,
            "cached": cached,
            "iteration": self.iteration,
            "iteration_closed": False,
        }
        if self._full_info:
            entry = self.cache[key]
            hit_rel = self.world.relevance[entry["concepts"]] if not web else np.zeros(0)
            is_new = valid and not cached
            relevant = hit_rel >= 0.5
            classes_hit = np.unique(self.world.nearest_target[entry["concepts"][relevant]]) if is_new and not web else []
            info.update(
                {
                    "query": text,
                    "descriptor": descriptor,
                    "key": key,
                    "image_rewards": rewards.tolist(),
                    "failures": 0 if valid else n,
                    "image_true_relevance": float(hit_rel.mean()) if len(hit_rel) else 0.0,
                    "new_relevant_images": int(relevant.sum()) if is_new else 0,
                    "target_classes_hit": [int(c) for c in classes_hit],
                }
            )
        if web:
            info.update(self._web_info(self.cache[key]))
        return self._finish_step(info, q_reward)

    def _finish_step(self, info: dict[str, Any], q_reward: float, observed: bool = False):
        """Close the iteration when it is full, then the step's return (reward per ``config.reward``);
        ``observed``: the next observation is already in ``_last_obs``."""
        cfg = self.config
        reward = q_reward
        if len(self._pending) == cfg.queries_per_iteration:
            stats = self._close_iteration()
            info["iteration_closed"] = True
            info["iteration_stats"] = stats
            if "gains" in stats:
                info["gain"] = stats["gains"]
            if cfg.reward == "gain":
                reward = float(np.sum(stats["gains"]))
        elif cfg.reward == "gain":
            reward = 0.0
        truncated = self.steps >= self._budget
        if truncated:
            info["ie_episode"] = self._episode_summary()
        return (self._last_obs if observed else self._observe()), float(reward), False, truncated, info

    def episode_summary(self) -> dict[str, float]:
        """``info["ie_episode"]`` of the episode so far (what the last step of a full episode returns)."""
        return self._episode_summary()

    def _episode_summary(self) -> dict[str, float]:
        """Figures of the finished episode: ``gap_closed`` (the score every tool reports,
        :mod:`ie_env.score`) and its second half, mean ground-truth relevance per query, the oracle's
        (the budget's best distinct concepts) and their ratio (NaN scores on a web engine)."""
        h = self.history
        rel = self.world.relevance if self._web is None else np.full(len(self.world.relevance), np.nan)
        g = float(array_mean(rel[h.actions[: h.t]])) if h.t else 0.0
        n = min(h.t, len(rel))
        oracle = self._oracle_relevance(rel, n)
        score = episode_gap_closed(rel, h.actions[: h.t])
        return {"gap_closed": score["gap_closed"], "gap_closed_second_half": score["gap_closed_second_half"],
                "random_expected_relevance": score["random_expected_relevance"],
                "mean_true_relevance": g, "oracle_relevance": oracle, "oracle_fraction": g / oracle if oracle else 0.0,
                "mean_query_reward": float(array_mean(h.rewards[: h.t])) if h.t else 0.0,
                "distinct_relevant_concepts": int((rel[h.queried] >= 0.5).sum())}

    def _oracle_relevance(self, rel: np.ndarray, n: int) -> float:
        """Mean of the ``n`` largest of ``rel`` (0.0 for none), kept while the world's array is the same."""
        memo = self._oracle_memo
        if memo is None or memo[0] is not rel or memo[1] != n:
            value = float(np.partition(rel, len(rel) - n)[len(rel) - n :].mean()) if n else 0.0
            memo = self._oracle_memo = (rel, n, value)
        return memo[2]

    # --- the SSL iteration ----------------------------------------------------------------
    def _training_batch(self, fresh: np.ndarray, n_new: int) -> np.ndarray:
        """The iteration's new images plus ``pcr`` x as many drawn from target train set and replay."""
        pool_parts = [self.train_images] + ([self.replay.images] if len(self.replay) else [])
        pool = np.concatenate(pool_parts) if len(pool_parts) > 1 else pool_parts[0]
        n_mix = int(round(self.config.pcr * n_new))
        mixed = pool[self.rng.integers(0, len(pool), size=n_mix)] if n_mix else pool[:0]
        train = np.concatenate([fresh, mixed])
        if self._latent:  # the whitening surrogate sees only the batch's mean and covariance
            return train
        return train[self.rng.permutation(len(train))]

    def _start_fresh(self) -> None:
        """An empty buffer of the iteration's new finds (image latents and rewards), which the lean step
        fills and the iteration close reads: one array instead of a concatenation of every query's."""
        self._n_fresh = 0
        self._fresh_ok = self._lean
        if self._lean and getattr(self, "_fresh_x", None) is None:
            rows = self.config.queries_per_iteration * self.config.images_per_query
            self._fresh_x = np.empty((rows, self.train_images.shape[1]), np.float32)
            self._fresh_r = np.empty(rows, np.float32)

    def _latent_close(self, fresh: np.ndarray, rewards: np.ndarray, idx: np.ndarray):
        """:func:`ie_env.latent_fast.latent_close` where it applies (the whitening surrogate past its
        warm-up, the embedded target set, a replay of latent vectors); else None."""
        learner, replay = self.learner, self.replay
        if (not isinstance(learner, WhiteningSurrogate) or learner.steps < 1 or not len(fresh) or fresh.dtype != np.float32
                or (replay.images is not None and (replay.images.ndim != 2 or replay.images.dtype != fresh.dtype))):
            return None
        keep = math.ceil(len(fresh) * self.config.replay_fraction)
        return latent_close(learner, fresh, rewards, self.train_images, replay.images, idx, keep, self.config.k)

    def _gains(self, before: list[float]) -> list[float]:
        cfg = self.config
        pend = self._pending
        if self._latent:
            imgs = [self.cache[p["key"]]["images"] for p in pend]
            after = self._score(np.concatenate(imgs)) if imgs else np.zeros(0, np.float32)
            q_after = segment_top_means(after, [len(x) for x in imgs], cfg.top_images)
        else:
            q_after = []
            for p in pend:
                imgs = self.cache[p["key"]]["images"]
                after = image_rewards(self.learner.features(imgs), self.target_feats, cfg.k).numpy()
                q_after.append(query_reward(after, cfg.top_images))
        return [qa - b if p["valid"] else 0.0 for p, b, qa in zip(pend, before, q_after)]

    def _rescore_history(self) -> dict[str, list] | None:
        """Every query of the episode so far scored again under the current encoder: ``actions`` and
        ``rewards`` in step order (a repeated query appears once per step; fewer than ``min_images``
        images: 0.0, as when it was made). With pixels this is a forward pass over every image found
        so far: after i iterations i x queries x images per query (25,600 an iteration in the paper)."""
        cfg = self.config
        h = self.history
        if len(self._episode_keys) != h.t:  # a state from before keys were kept: nothing to re-score
            return None
        keys = list(dict.fromkeys(self._episode_keys))
        q: dict[str, float] = {}
        valid = [k for k in keys if len(self.cache[k]["images"]) >= cfg.min_images]
        if self._latent:
            sc = self._latent_scorer()
            q.update((k, sc.score(self.cache[k]["images"], cfg.top_images)[1]) for k in valid)
        else:
            step = RESCORE_QUERIES_PER_BATCH
            for start in range(0, len(valid), step):
                keys_b = valid[start : start + step]
                batch = [self.cache[k]["images"] for k in keys_b]
                rw = self._score(np.concatenate(batch))
                q.update(zip(keys_b, segment_top_means(rw, [len(x) for x in batch], cfg.top_images)))
        return {"actions": [int(a) for a in h.actions[: h.t]], "rewards": [q.get(k, 0.0) for k in self._episode_keys]}

    def _close_iteration(self) -> dict[str, Any]:
        cfg = self.config
        pend = self._pending
        if self._fresh_ok:  # the lean step wrote every new find into the buffer, in step order
            n_new = self._n_fresh
        else:
            new = [p for p in pend if not p["cached"] and p["valid"]]
            new_images = [self.cache[p["key"]]["images"] for p in new]
            n_new = sum(len(x) for x in new_images)
        stats: dict[str, Any] = {"iteration": self.iteration + 1, "new_images": n_new}
        before = [p["q"] for p in pend]
        refreshed = False
        if n_new:
            if self._fresh_ok:
                fresh, rewards = self._fresh_x[:n_new], self._fresh_r[:n_new]
            else:
                fresh = np.concatenate(new_images)
                rewards = np.concatenate([p["rewards"] for p in new])
            if self._latent and hasattr(self.learner, "update_rows"):
                # The batch _training_batch would build (the same draw from self.rng), never built.
                n_mix = int(round(cfg.pcr * n_new))
                idx = self.rng.integers(0, len(self.train_images) + len(self.replay), size=n_mix) if n_mix else np.zeros(0, np.int64)
                fused = self._latent_close(fresh, rewards, idx)
                if fused is not None:  # update, replay choice and next scorer in one compiled call
                    upd, refreshed = {"loss": 0.0, "steps": 1.0}, True
                    self._scorer, self._target_feats, top, top_rw = fused
                else:
                    upd = self.learner.update_rows(fresh, self.train_images, self.replay.images, idx)
            else:
                upd = self.learner.update(self._training_batch(fresh, n_new))
            self.counters["ssl_updates"] += 1
            stats.update({f"ssl_{k}": float(v) for k, v in upd.items()})
            if refreshed:
                self.replay.add_sorted(top, top_rw)
                stats["replay_added"] = len(top)
            else:
                stats["replay_added"] = self.replay.add_top(fresh, rewards, cfg.replay_fraction)
        if not refreshed:
            self._refresh_targets()
        self._scored = {}
        if cfg.reward == "gain" or self._full_info:
            stats["gains"] = self._gains(before)
        if cfg.rescore_history:
            stats["rescored_rewards"] = self._rescore_history()
        stats["replay_size"] = len(self.replay)
        stats["mean_query_reward"] = _mean(before)
        if self._web is None:
            rel = self._relevance_list()
            stats["mean_true_relevance"] = _mean([rel[p["action"]] for p in pend])
        else:
            stats["mean_true_relevance"] = float("nan")
        if cfg.evaluate and self._full_info:
            self.knn_history.append(self.evaluate())
            stats["knn_accuracy"] = self.knn_history[-1]
        self.iteration += 1
        self._pending = []
        self._start_fresh()
        self.last_iteration = stats
        return stats

    # --- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Episode state at an iteration boundary (the learner, replay, caches, RNG)."""
        if self._pending:
            raise RuntimeError("state_dict() is taken at iteration boundaries only")
        mode = self.action_mode
        return {
            "episode_seed": self._episode_seed,
            "rng": self.rng.bit_generator.state,
            "np_random": self.np_random.bit_generator.state,
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict(),
            "cache_keys": list(self.cache),
            "cache": None if self.store is not None else dict(self.cache),  # a copy: no aliasing
            "history": self.history.state_dict(),
            "action_mode": {
                "rng": mode.rng.bit_generator.state,
                "candidates": getattr(mode, "candidates", None),
                "from_neighbors": getattr(mode, "from_neighbors", None),
            },
            "target_ids": self.world.target_ids.copy(),
            "steps": self.steps,
            "episode_keys": list(self._episode_keys),
            "iteration": self.iteration,
            "knn_history": self.knn_history,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._episode_seed = state["episode_seed"]
        self._init_episode()
        if "target_ids" in state and not np.array_equal(state["target_ids"], self.world.target_ids):
            self.world.set_targets(np.asarray(state["target_ids"]))
            self.train_images, self.train_labels = self._split("train")
        self.rng.bit_generator.state = state["rng"]
        self.np_random.bit_generator.state = state["np_random"]
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        if state["cache"] is not None:
            self.cache = dict(state["cache"])
        else:
            self.cache = {}
            for k in state["cache_keys"]:
                entry = self.store.get(k)
                if entry is None:
                    raise RuntimeError(f"checkpoint refers to query {k} missing from the store")
                self.cache[k] = entry
        self.history = EpisodeHistory.from_state(len(self.vocabulary), state["history"])
        mode_state = state.get("action_mode") or {}
        if mode_state.get("rng") is not None:
            self.action_mode.rng.bit_generator.state = mode_state["rng"]
        self.steps, self.iteration = state["steps"], state["iteration"]
        self._episode_keys = list(state.get("episode_keys", []))
        self.knn_history = state["knn_history"]
        self._pending = []
        self._refresh_targets()
        if mode_state.get("candidates") is not None:  # the slate the agent saw: no new draw
            self.action_mode.candidates = np.asarray(mode_state["candidates"])
            self.action_mode.from_neighbors = np.asarray(mode_state["from_neighbors"])
            self._last_obs = {"context": self.action_mode.context(self.history),
                              "candidates": self.action_mode.candidate_features(self.history)}
        else:
            self._last_obs = self.action_mode.context(self.history)
