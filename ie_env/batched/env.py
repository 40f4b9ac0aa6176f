"""``BatchedLatentVectorEnv``: N latent-fidelity episodes stepped as torch tensor operations (CPU or CUDA).

The same dynamics as :class:`ie_env.env.InternetExplorerEnv` in the ``latent`` fidelity with plain
queries and the embedded world (what every ``IELatent-*`` id is): one step = one query per episode,
its 50 image latents scored against the episode's target features (mean of the ``k`` largest cosine
similarities under the whitening surrogate), the query reward the mean of the ``top_images`` best; every
``queries_per_iteration`` steps the surrogate of each episode is refit on its new finds plus rows drawn
from target train and replay, the best half of the new finds joins the replay, and the target features
are refreshed.

What is shared once: the world's query results for every concept (an ``(N, n, d)`` tensor: results never
depend on the target), the concept embeddings of the observation and the slate's text neighbours. What
is per episode: the target's train images, the surrogate's running moments and map, the replay pool,
the history, and its random generators. Equality with the scalar env for the same seeds and actions
needs the same random draws, so each episode keeps ``numpy`` Generators seeded as the scalar env seeds
its own (the episode seed from the reset seed; the target draw ``[seed, 5]``; the mixing draw at each
iteration close; the slate ``[seed, 7]``) and draws the same numbers in the same order; the arithmetic
(scoring, the surrogate's moments and Cholesky refit, target features, observation and slate features)
runs batched in torch.

Autoreset is Gymnasium's ``SAME_STEP``: the step that ends an episode returns the next episode's first
observation, with the final one in ``info["final_obs"]`` (mask ``info["_final_obs"]``) and the finished
episode's figures in ``info["ie_episode"]``. :meth:`step` takes and returns numpy arrays (the Gymnasium
API); :meth:`step_tensors` takes and returns tensors on ``device`` (what a torch trainer uses).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ie_env.actions import make_action_mode
from ie_env.batched.slate import propose
from ie_env.config import ConfigError
from ie_env.worlds.embedded import NS_TRAIN, NS_WEB, EmbeddedWorld, load_vocabulary
from ie_env.worlds.shared import shared_concept_embeddings

__all__ = ["BatchedLatentVectorEnv", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refused (ValueError naming it) when this machine cannot run it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for, but CUDA is not available on this machine (use device='cpu')"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _check_config(cfg: Any) -> None:
    """Refuse configs whose dynamics this backend does not implement (it would silently differ)."""
    problems = []
    if cfg.world.fidelity != "latent":
        problems.append(f"world.fidelity={cfg.world.fidelity!r} (needs 'latent')")
    if cfg.engine.name != "embedded":
        problems.append(f"engine.name={cfg.engine.name!r} (needs 'embedded')")
    if cfg.descriptors.kind != "none":
        problems.append(f"descriptors.kind={cfg.descriptors.kind!r} (needs 'none')")
    if cfg.reward != "query":
        problems.append(f"reward={cfg.reward!r} (needs 'query')")
    if cfg.target.kind != "embedded":
        problems.append(f"target.kind={cfg.target.kind!r} (needs 'embedded')")
    if cfg.replay_capacity != 0:
        problems.append(f"replay_capacity={cfg.replay_capacity} (needs 0, unbounded)")
    if cfg.rescore_history:
        problems.append("rescore_history=True (not supported)")
    if problems:
        raise ConfigError("the batched latent env does not support " + "; ".join(problems))


class BatchedLatentVectorEnv(VectorEnv):
    """``num_envs`` latent episodes of one config, batched on ``device`` (see the module doc)."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self, config: Any, num_envs: int, device: str | torch.device = "cpu", task_id: str | None = None
    ) -> None:
        from ie_env.env import make_config
        from ie_env.target_sampling import TargetSampler

        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.device = resolve_device(device)
        cfg = self.config = make_config(config)
        _check_config(cfg)
        if cfg.blas_threads > 0 and self.device.type == "cpu":
            # As the scalar env does for numpy's BLAS: the config's thread count for torch's CPU ops too.
            # The products here are small; on a busy machine more threads spin more than they compute.
            torch.set_num_threads(cfg.blas_threads)
        self.task_id = task_id
        self.num_envs = B = int(num_envs)
        dev = self.device
        vocab = self.vocabulary = load_vocabulary(cfg.world.vocabulary)
        emb = shared_concept_embeddings(vocab)
        self.world = EmbeddedWorld(cfg.world, vocab, emb)
        self.mode = mode = make_action_mode(
            cfg.action_mode, cfg.actions, emb, cfg.history, cfg.query_budget, cfg.mask_queried
        )
        self.mode_name = cfg.action_mode
        self.single_observation_space = mode.observation_space
        self.single_action_space = mode.action_space
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)
        self.sampler = TargetSampler(vocab, cfg.world.num_targets, cfg.targets) if cfg.targets.mode != "fixed" else None
        self.split = "heldout" if cfg.targets.mode == "heldout" else "train"

        N, ld, n = len(vocab), cfg.world.latent_dim, cfg.images_per_query
        self.N, self.ld, self.n_img = N, ld, n
        self.budget, self.qpi, self.H = cfg.query_budget, cfg.queries_per_iteration, cfg.history
        self.d = mode.d
        self.T = cfg.world.num_targets * cfg.world.target_train_per_class
        self.bias = float(cfg.surrogate.bias)
        self.shrink = float(cfg.surrogate.shrinkage)
        self.valid_query = n >= cfg.min_images
        # Every concept's query results: shared by all episodes (they never depend on the target).
        parts = [self.world.search(c, 0, n) for c in range(N)]
        concepts = np.concatenate([p[0] for p in parts])
        indices = np.concatenate([p[1] for p in parts])
        bank = self.world.images(concepts, indices, NS_WEB).reshape(N, n, ld)
        self.bank = torch.as_tensor(bank, device=dev)
        self.E = torch.as_tensor(np.ascontiguousarray(mode.E), device=dev)
        self.latents64 = torch.as_tensor(np.array(self.world.latents, np.float64), device=dev)
        self._rho2 = 2.0 * cfg.world.relevance_radius**2
        # The warm-up batch is the target train images tiled to warmup_images rows: row i appears counts[i] times.
        warm = cfg.warmup_images
        reps = int(np.ceil(warm / self.T)) if warm > 0 else 0
        tiled = np.tile(np.arange(self.T), reps)[:warm]
        self._warm_counts = torch.as_tensor(np.bincount(tiled, minlength=self.T), dtype=torch.float64, device=dev)
        # Storage of the iteration's new finds and the replay pool (train rows first, then replay rows).
        self.fresh_rows = self.qpi * n
        self.keep_per_iter = math.ceil(self.fresh_rows * cfg.replay_fraction)
        self.P = self.T + cfg.iterations * self.keep_per_iter
        f32, f64 = torch.float32, torch.float64
        self.pool = torch.zeros(B, self.P, ld, dtype=f32, device=dev)
        self.fresh_x = torch.zeros(B, self.fresh_rows, ld, dtype=f32, device=dev)
        self.fresh_r = torch.zeros(B, self.fresh_rows, dtype=f32, device=dev)
        self.F = torch.zeros(B, self.T, ld + 1, dtype=f32, device=dev)
        self.W32 = torch.zeros(B, ld, ld, dtype=f32, device=dev)
        self.M = torch.zeros(B, ld, self.T + ld, dtype=f32, device=dev)
        self.offset = torch.zeros(B, self.T + ld, dtype=f32, device=dev)
        self.mu32 = torch.zeros(B, ld, dtype=f32, device=dev)
        self.mean = torch.zeros(B, ld, dtype=f64, device=dev)
        self.m2 = torch.zeros(B, ld, ld, dtype=f64, device=dev)
        self.count = torch.zeros(B, dtype=f64, device=dev)
        self.relevance = torch.zeros(B, N, dtype=f32, device=dev)
        self.actions_t = torch.zeros(B, self.budget, dtype=torch.int64, device=dev)
        self.rewards_t = torch.zeros(B, self.budget, dtype=f32, device=dev)
        # Host state: what the per-episode random draws read, and the counters.
        self.np_random: list[np.random.Generator | None] = [None] * B
        self.rng: list[np.random.Generator | None] = [None] * B
        self.mode_rng: list[np.random.Generator | None] = [None] * B
        self.episode_seed = np.zeros(B, np.int64)
        self.target_ids = np.zeros((B, cfg.world.num_targets), np.int64)
        self.queried = np.zeros((B, N), bool)
        self.last_reward = np.zeros((B, N), np.float32)
        self.t = np.zeros(B, np.int64)
        self.actions = np.zeros((B, self.budget), np.int64)  # host copy of actions_t (the slate draws read it)
        self.n_distinct = np.zeros(B, np.int64)
        self.pending = np.zeros(B, np.int64)
        self.n_fresh = np.zeros(B, np.int64)
        self.replay_len = np.zeros(B, np.int64)
        self.iteration = np.zeros(B, np.int64)
        self.K = getattr(mode, "K", 0)
        self.candidates = np.zeros((B, max(self.K, 1)), np.int64)
        self.n_nb = np.zeros(B, np.int64)
        self._ar = np.arange(B)
        self._ar_t = torch.arange(B, device=dev)
        self._ready = False

    # --- episode start ---------------------------------------------------------------------
    def _train_images(self, ids: np.ndarray) -> np.ndarray:
        """The target train split of target ``ids`` (``EmbeddedWorld.target_split('train')``)."""
        per = self.config.world.target_train_per_class
        labels = np.repeat(np.arange(len(ids)), per)
        return self.world.images(ids[labels], np.tile(np.arange(per), len(ids)), NS_TRAIN)

    def _start(self, envs: np.ndarray, seeds: list[int | None]) -> None:
        """Start a new episode in each of ``envs`` (reset seeds ``seeds``; None keeps the env's generator)."""
        cfg, dev = self.config, self.device
        trains = []
        for e, s in zip(envs.tolist(), seeds, strict=False):
            if s is not None or self.np_random[e] is None:
                self.np_random[e] = seeding.np_random(s)[0]
            seed = int(self.np_random[e].integers(2**31))
            self.episode_seed[e] = seed
            self.rng[e] = np.random.default_rng(seed)
            if self.sampler is not None:
                _, ids = self.sampler.sample(self.split, np.random.default_rng([seed, 5]))
            else:
                ids = self.world.target_ids
            self.target_ids[e] = ids
            if self.mode.uses_rng:
                self.mode_rng[e] = np.random.default_rng([seed, 7])
            trains.append(self._train_images(np.asarray(ids)))
        idx = torch.as_tensor(envs, device=dev)
        train = torch.as_tensor(np.stack(trains), device=dev)
        self.pool[idx, : self.T] = train
        # The surrogate's prior, then its warm-up update on the tiled train images.
        R, ld = len(envs), self.ld
        eye = torch.eye(ld, dtype=torch.float64, device=dev)
        count = torch.full((R,), float(cfg.surrogate.prior_count), dtype=torch.float64, device=dev)
        mean = torch.zeros(R, ld, dtype=torch.float64, device=dev)
        m2 = eye.expand(R, ld, ld) * float(cfg.surrogate.prior_count)
        if cfg.warmup_images > 0:
            w = self._warm_counts
            x = train.double()
            n = float(cfg.warmup_images)
            bmean = (w[None, :, None] * x).sum(1) / n
            xc = x - bmean[:, None, :]
            C = (xc * w[None, :, None]).transpose(1, 2) @ xc
            count, mean, m2 = self._update(count, mean, m2, torch.full_like(count, n), bmean, C)
        self.count[idx], self.mean[idx], self.m2[idx] = count, mean, m2
        self._refit(idx)
        # Ground-truth relevance g(c) of every concept for the episode's target (info only).
        tids = torch.as_tensor(self.target_ids[envs], device=dev)
        tl = self.latents64[tids]  # (R, nt, ld)
        lat = self.latents64
        d2 = (
            (lat * lat).sum(1)[None, :, None]
            + (tl * tl).sum(2)[:, None, :]
            - 2.0 * torch.einsum("nd,rtd->rnt", lat, tl)
        )
        rel = torch.exp(-d2.clamp(min=0.0) / self._rho2).amax(2).float()
        rel.scatter_(1, tids, 1.0)
        self.relevance[idx] = rel
        # An empty history, new-finds buffer and replay.
        self.queried[envs] = False
        self.last_reward[envs] = 0.0
        self.t[envs] = 0
        self.n_distinct[envs] = 0
        self.pending[envs] = 0
        self.n_fresh[envs] = 0
        self.replay_len[envs] = 0
        self.iteration[envs] = 0
        self.actions_t[idx] = 0
        self.rewards_t[idx] = 0.0

    # --- the whitening surrogate -----------------------------------------------------------
    @staticmethod
    def _update(count, mean, m2, n, bmean, C):
        """``WhiteningSurrogate.update_moments`` for a batch of learners (float64)."""
        delta = bmean - mean
        total = count + n
        m2 = m2 + C + delta[:, :, None] * delta[:, None, :] * (count * n / total)[:, None, None]
        mean = mean + delta * (n / total)[:, None]
        return total, mean, m2

    def _refit(self, idx: torch.Tensor) -> None:
        """The whitening map ``W = L^-T`` of ``(1 - s) m2 / max(count - 1, 1) + s I`` and the target features
        ``normalize([(train - mu) W, bias])`` of the learners ``idx``."""
        s, ld = self.shrink, self.ld
        eye = torch.eye(ld, dtype=torch.float64, device=self.device)
        denom = (self.count[idx] - 1.0).clamp(min=1.0)
        cov = (1.0 - s) * (self.m2[idx] / denom[:, None, None]) + s * eye
        L, info = torch.linalg.cholesky_ex(cov)
        ok = (info == 0) & (torch.diagonal(L, dim1=1, dim2=2) > 1e-6).all(1)
        W = torch.linalg.solve_triangular(torch.where(ok[:, None, None], L, eye), eye.expand_as(L), upper=False)
        W = W.transpose(1, 2)
        if not bool(ok.all()):  # not positive definite: the eigen-decomposition's whitening
            vals, vecs = torch.linalg.eigh(cov[~ok])
            W[~ok] = (vecs / torch.sqrt(vals.clamp(min=1e-8))[:, None, :]) @ vecs.transpose(1, 2)
        W32 = W.float()
        mu32 = self.mean[idx].float()
        self.W32[idx], self.mu32[idx] = W32, mu32
        f = (self.pool[idx, : self.T] - mu32[:, None, :]) @ W32
        nrm = torch.sqrt((f * f).sum(2, keepdim=True) + self.bias * self.bias) + 1e-12
        F = self.F[idx] = torch.cat([f / nrm, (self.bias / nrm)], dim=2)
        # The scorer's operands (LatentScorer's Maug): M = [W F_w^T | W], offset = [bias F_c | 0].
        self.M[idx] = torch.cat([W32 @ F[:, :, : self.ld].transpose(1, 2), W32], dim=2)
        self.offset[idx, : self.T] = self.bias * F[:, :, self.ld]

    # --- one step --------------------------------------------------------------------------
    def _score(self, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, image rewards, query rewards)`` of one query per episode: raw similarities
        ``(x - mu) [W F_w^T | W] + [bias F_c | 0]`` in one product (the scalar scorer's association), the
        sum of each image's ``k`` largest scaled once by its feature norm, the mean of the best images."""
        cfg = self.config
        X = self.bank[concepts]  # (B, n, ld)
        Z = torch.baddbmm(self.offset[:, None, :], X - self.mu32[:, None, :], self.M)  # (B, n, T + ld)
        T = self.T
        G = Z[:, :, T:]
        g = torch.sqrt((G * G).sum(2) + self.bias * self.bias)
        k = min(cfg.k, T)
        r = _top_sum(Z[:, :, :T], k) / float(k) / (g + 1e-12)
        m = min(cfg.top_images, self.n_img)
        q = _top_sum(r, m) / float(m)
        if not self.valid_query:
            q = torch.zeros_like(q)
        return X, r, q

    def _to_concepts(self, actions: Any) -> np.ndarray:
        """Each episode's action as a concept index (host array), checked."""
        if self.mode_name == "embedding":
            a = torch.as_tensor(
                np.asarray(actions, np.float32) if not torch.is_tensor(actions) else actions,
                dtype=torch.float32,
                device=self.device,
            )
            if a.shape != (self.num_envs, self.d) or not bool(torch.isfinite(a).all()):
                raise ValueError(
                    f"embedding actions must be ({self.num_envs}, {self.d}) finite numbers, got shape {tuple(a.shape)}"
                )
            s = a @ self.E.T
            if self.mode.cfg.embedding_unqueried:
                ex = torch.as_tensor(self.queried, device=self.device)
                use = (self.n_distinct > 0) & ~self.queried.all(1)
                ex &= torch.as_tensor(use, device=self.device)[:, None]
                s = s.masked_fill(ex, -torch.inf)
            return s.argmax(1).cpu().numpy()
        a = (actions.cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)).reshape(-1).astype(np.int64)
        if a.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {np.shape(actions)}")
        hi = self.K if self.mode_name == "slate" else self.N
        if (a < 0).any() or (a >= hi).any():
            bad = a[(a < 0) | (a >= hi)][0]
            raise ValueError(f"action {bad} outside [0, {hi})")
        return self.candidates[self._ar, a] if self.mode_name == "slate" else a

    def step_tensors(self, actions: Any) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One query per episode; observations, rewards (float32), terminations and truncations as tensors
        on ``device``; autoreset in the same step (see the module doc)."""
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        dev, ar = self.device, self._ar
        c = self._to_concepts(actions)
        ct = torch.as_tensor(c, device=dev)
        X, r, q = self._score(ct)
        was = self.queried[ar, c]
        new = np.flatnonzero(~was) if self.valid_query else np.zeros(0, np.int64)
        if len(new):  # the iteration's new finds (a concept already queried this episode brings none)
            rows = torch.as_tensor(self.n_fresh[new][:, None] + np.arange(self.n_img)[None, :], device=dev)
            nt = torch.as_tensor(new, device=dev)
            self.fresh_x[nt[:, None], rows] = X[nt]
            self.fresh_r[nt[:, None], rows] = r[nt]
            self.n_fresh[new] += self.n_img
        q_host = q.cpu().numpy()
        pos = torch.as_tensor(self.t, device=dev)
        self.actions_t[self._ar_t, pos] = ct
        self.actions[ar, self.t] = c
        self.rewards_t[self._ar_t, pos] = q
        self.last_reward[ar, c] = q_host
        self.queried[ar, c] = True
        self.n_distinct += ~was
        self.t += 1
        self.pending += 1
        info: dict[str, Any] = {"true_relevance": self.relevance[self._ar_t, ct], "concept": ct}
        closing = np.flatnonzero(self.pending == self.qpi)
        if len(closing):
            self._close(closing)
        done = self.t >= self.budget
        obs = self._observe(ar)
        trunc = torch.as_tensor(done, device=dev)
        if done.any():
            ended = np.flatnonzero(done)
            info["final_obs"] = (
                {k: v[torch.as_tensor(ended, device=dev)].clone() for k, v in obs.items()}
                if isinstance(obs, dict)
                else obs[torch.as_tensor(ended, device=dev)].clone()
            )
            info["final_envs"] = ended
            info["ie_episode"] = self._summary(ended)
            self._start(ended, [None] * len(ended))
            new_obs = self._observe(ended)
            et = torch.as_tensor(ended, device=dev)
            if isinstance(obs, dict):
                for k in obs:
                    obs[k][et] = new_obs[k]
            else:
                obs[et] = new_obs
        term = torch.zeros(self.num_envs, dtype=torch.bool, device=dev)
        return obs, q, term, trunc, info

    def _close(self, envs: np.ndarray) -> None:
        """The iteration close of ``envs``: surrogate update, replay, target features (see the module doc)."""
        cfg, dev = self.config, self.device
        upd = envs[self.n_fresh[envs] > 0]
        if len(upd):
            P = self.T + int(self.replay_len[upd].max())
            counts = np.zeros((len(upd), P))
            n_mix = np.zeros(len(upd))
            for j, e in enumerate(upd.tolist()):
                m = int(round(cfg.pcr * int(self.n_fresh[e])))  # noqa: RUF046  (the scalar env's expression)
                if m:
                    idx = self.rng[e].integers(0, self.T + int(self.replay_len[e]), size=m)
                    counts[j] = np.bincount(idx, minlength=P)
                n_mix[j] = m
            u = torch.as_tensor(upd, device=dev)
            nf = torch.as_tensor(self.n_fresh[upd], device=dev)
            valid = torch.arange(self.fresh_rows, device=dev)[None, :] < nf[:, None]
            xf = self.fresh_x[u].double() * valid[:, :, None]
            pool = self.pool[u, :P].double()
            cnt = torch.as_tensor(counts, device=dev)
            total = xf.sum(1) + (cnt[:, :, None] * pool).sum(1)
            outer = xf.transpose(1, 2) @ xf + (pool * cnt[:, :, None]).transpose(1, 2) @ pool
            n = nf.double() + torch.as_tensor(n_mix, device=dev)
            bmean = total / n[:, None]
            C = outer - n[:, None, None] * (bmean[:, :, None] * bmean[:, None, :])
            self.count[u], self.mean[u], self.m2[u] = self._update(self.count[u], self.mean[u], self.m2[u], n, bmean, C)
            # The replay takes the best ceil(fraction * new) new rows, best first (a stable sort of -reward).
            keep = np.ceil(self.n_fresh[upd] * cfg.replay_fraction).astype(np.int64)
            kmax = int(keep.max())
            rw = self.fresh_r[u].masked_fill(~valid, -torch.inf)
            order = torch.argsort(-rw, dim=1, stable=True)[:, :kmax]
            top = torch.gather(self.fresh_x[u], 1, order[:, :, None].expand(-1, -1, self.ld))
            slot = np.arange(kmax)[None, :]
            sel = slot < keep[:, None]
            rows_e = np.broadcast_to(np.arange(len(upd))[:, None], sel.shape)[sel]
            dest = (self.T + self.replay_len[upd][:, None] + slot)[sel]
            self.pool[u[torch.as_tensor(rows_e, device=dev)], torch.as_tensor(dest, device=dev)] = top[
                torch.as_tensor(sel, device=dev)
            ]
            self.replay_len[upd] += keep
            self._refit(u)
        self.pending[envs] = 0
        self.n_fresh[envs] = 0
        self.iteration[envs] += 1

    # --- observations ----------------------------------------------------------------------
    def _observe(self, envs: np.ndarray) -> Any:
        """The observation of ``envs`` after their latest step (slate mode draws their next slates)."""
        dev = self.device
        idx = torch.as_tensor(envs, device=dev)
        ctx = self._context(envs, idx)
        if self.mode_name != "slate":
            return ctx
        nbrs, K, seeds, share = (
            self.mode.neighbors,
            self.K,
            self.mode.cfg.slate_seeds,
            self.mode.cfg.slate_neighbor_share,
        )
        for e in envs.tolist():
            self.n_nb[e] = propose(
                self.mode_rng[e],
                self.queried[e],
                self.last_reward[e],
                self.actions[e, : self.t[e]],
                int(self.n_distinct[e]),
                nbrs,
                K,
                seeds,
                share,
                self.candidates[e],
            )
        return {"context": ctx, "candidates": self._candidate_features(envs, idx)}

    def _context(self, envs: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """``[last (d+1) | history H x (d+1) | summary? | budget left]`` of ``envs`` (as ``ActionMode.context``)."""
        dev, d, H = self.device, self.d, self.H
        d1 = d + 1
        R = len(envs)
        t = torch.as_tensor(self.t[envs], device=dev)
        acts, rws = self.actions_t[idx], self.rewards_t[idx]
        out = torch.zeros(R, self.mode.context_dim, dtype=torch.float32, device=dev)
        blocks = torch.arange(H + 1, device=dev)
        r_idx = (t[:, None] - 1 - (blocks[None, :] - 1).clamp(min=0)).clamp(min=0)  # (R, H+1)
        ok = (t[:, None] >= blocks[None, :].clamp(min=1)).float()
        a = torch.gather(acts, 1, r_idx)
        blk = torch.cat([self.E[a], torch.gather(rws, 1, r_idx)[:, :, None]], dim=2) * ok[:, :, None]
        out[:, : (H + 1) * d1] = blk.reshape(R, -1)
        if self.mode.cfg.summary:
            s = d1 * (1 + H)
            has = t > 0
            mask = torch.arange(self.budget, device=dev)[None, :] < t[:, None]
            b = rws.masked_fill(~mask, -torch.inf).argmax(1)
            tb = torch.gather(rws, 1, b[:, None])[:, 0]
            mean = (rws * mask).sum(1) / t.clamp(min=1)
            summ = torch.cat(
                [
                    self.E[torch.gather(acts, 1, b[:, None])[:, 0]],
                    tb[:, None],
                    mean[:, None],
                    torch.as_tensor(self.n_distinct[envs] / max(1, self.budget), dtype=torch.float32, device=dev)[
                        :, None
                    ],
                ],
                dim=1,
            )
            out[:, s : s + d + 3] = summ * has[:, None]
        left = np.maximum(0.0, 1.0 - self.t[envs] / self.budget)
        out[:, -1] = torch.as_tensor(left, dtype=torch.float32, device=dev)
        return out

    def _candidate_features(self, envs: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """``SlateMode.candidate_features`` of ``envs``' current slates."""
        dev, d = self.device, self.d
        R, K = len(envs), self.K
        cand_np = self.candidates[envs]
        cand = torch.as_tensor(cand_np, device=dev)
        ec = self.E[cand]  # (R, K, d)
        out = torch.zeros(R, K, self.mode.cand_dim, dtype=torch.float32, device=dev)
        out[:, :, :d] = ec
        rows_e = envs[:, None]
        out[:, :, d] = torch.as_tensor(self.last_reward[rows_e, cand_np], device=dev)
        out[:, :, d + 1] = torch.as_tensor(self.queried[rows_e, cand_np], dtype=torch.float32, device=dev)
        t = torch.as_tensor(self.t[envs], device=dev)
        if bool((t > 0).any()):
            tmax = int(self.t[envs].max())
            rws = self.rewards_t[idx, :tmax]
            mask = torch.arange(tmax, device=dev)[None, :] < t[:, None]  # (R, tmax)
            sims = ec @ self.E[self.actions_t[idx, :tmax]].transpose(1, 2)  # (R, K, tmax)
            sims = sims.masked_fill(~mask[:, None, :], -torch.inf)
            best = sims.argmax(2)
            maxsim = torch.gather(sims, 2, best[:, :, None])[:, :, 0]
            rbest = torch.gather(rws, 1, best)
            w = torch.exp((sims - 1.0) / self.mode.cfg.kernel_width)
            kr = (w @ rws[:, :, None])[:, :, 0] / (w.sum(2) + 1e-6)
            mean_r = (rws * mask).sum(1, keepdim=True) / t.clamp(min=1)[:, None]
            has = (t > 0)[:, None]
            zero = torch.zeros((), device=dev)
            out[:, :, d + 2] = torch.where(has, maxsim, zero)
            out[:, :, d + 3] = torch.where(has, rbest, zero)
            out[:, :, d + 4] = torch.where(has, kr, zero)
            out[:, :, d + 6] = torch.where(has, 4.0 * (kr - mean_r), zero)
            out[:, :, d + 7] = torch.where(has, 4.0 * (rbest - mean_r), zero)
        nb = torch.as_tensor(self.n_nb[envs], device=dev)
        out[:, :, d + 5] = (torch.arange(K, device=dev)[None, :] < nb[:, None]).float()
        return out.clamp_(-1.0, 1.0)

    def _summary(self, envs: np.ndarray) -> dict[str, np.ndarray]:
        """The finished episodes' figures (as the scalar env's ``info["ie_episode"]``)."""
        idx = torch.as_tensor(envs, device=self.device)
        rel = self.relevance[idx]
        t = self.t[envs]
        g = torch.gather(rel, 1, self.actions_t[idx]).mean(1).cpu().numpy().astype(np.float64)
        n = int(min(self.budget, self.N))
        oracle = rel.topk(n, dim=1).values.mean(1).cpu().numpy().astype(np.float64)
        q = self.rewards_t[idx].mean(1).cpu().numpy().astype(np.float64)
        relevant = ((rel >= 0.5) & torch.as_tensor(self.queried[envs], device=self.device)).sum(1).cpu().numpy()
        assert (t == self.budget).all()
        return {
            "mean_true_relevance": g,
            "oracle_relevance": oracle,
            "oracle_fraction": np.where(oracle > 0, g / np.where(oracle > 0, oracle, 1.0), 0.0),
            "mean_query_reward": q,
            "distinct_relevant_concepts": relevant.astype(np.int64),
        }

    # --- VectorEnv API ---------------------------------------------------------------------
    def reset_tensors(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """:meth:`reset` with the observation as tensors on ``device``."""
        B = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * B
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(B)]
        else:
            seeds = list(seed)
            if len(seeds) != B:
                raise ValueError(
                    f"If seeds are passed as a list the length must match num_envs={B} but got length={len(seeds)}."
                )
        mask = (options or {}).get("reset_mask")
        envs = self._ar if mask is None else np.flatnonzero(np.asarray(mask, bool))
        if not self._ready and len(envs) != B:
            raise RuntimeError("the first reset() must reset every env")
        self._start(envs, [seeds[e] for e in envs.tolist()])
        self._ready = True
        obs = self._observe(self._ar)
        return obs, {}

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.reset_tensors(seed=seed, options=options)
        return _to_numpy(obs), info

    def step(self, actions: Any):
        obs, rew, term, trunc, info = self.step_tensors(actions)
        out: dict[str, Any] = {
            "true_relevance": info["true_relevance"].cpu().numpy().astype(np.float64),
            "concept": info["concept"].cpu().numpy(),
        }
        if "final_obs" in info:
            mask = np.zeros(self.num_envs, bool)
            mask[info["final_envs"]] = True
            fo = _to_numpy(info["final_obs"])
            final = np.empty(self.num_envs, dtype=object)
            for j, e in enumerate(info["final_envs"].tolist()):
                final[e] = {k: v[j] for k, v in fo.items()} if isinstance(fo, dict) else fo[j]
            out["final_obs"], out["_final_obs"] = final, mask
            ep = {}
            for k, v in info["ie_episode"].items():
                full = np.zeros(self.num_envs, dtype=v.dtype)
                full[info["final_envs"]] = v
                ep[k] = full
            out["ie_episode"], out["_ie_episode"] = ep, mask
        return (_to_numpy(obs), rew.cpu().numpy().astype(np.float64), term.cpu().numpy(), trunc.cpu().numpy(), out)

    def action_masks(self) -> np.ndarray:
        """Allowed actions per env (``mask_queried``; all allowed otherwise)."""
        if self.mode_name == "slate":
            if not self.config.mask_queried:
                return np.ones((self.num_envs, self.K), bool)
            m = ~self.queried[self._ar[:, None], self.candidates]
            m[~m.any(1)] = True
            return m
        if self.mode_name == "vocab":
            if not self.config.mask_queried:
                return np.ones((self.num_envs, self.N), bool)
            m = ~self.queried
            m[(self.n_distinct == 0) | (self.n_distinct == self.N)] = True
            return m
        return np.ones((self.num_envs, 1), bool)


def _top_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the ``k`` largest values along the last dim (all of them when ``k`` is its length). On the
    CPU ``numpy.partition`` (a selection in place of torch's heap; several times faster here)."""
    n = x.shape[-1]
    if k >= n:
        return x.sum(-1)
    if x.device.type == "cpu":
        xn = x.detach().numpy()
        return torch.from_numpy(np.partition(xn, n - k, axis=-1)[..., n - k :].sum(-1))
    return x.topk(k, dim=-1, sorted=False).values.sum(-1)


def _to_numpy(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: v.cpu().numpy() for k, v in obs.items()}
    return obs.cpu().numpy()
