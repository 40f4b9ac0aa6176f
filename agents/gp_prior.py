"""Scalable Gaussian-process regression from concept text embedding to query reward.

The model is a GP with an RBF kernel ``k(x, z) = s2 * exp(-|x - z|^2 / (2 l^2))`` and Gaussian
observation noise ``noise``. Repeated observations of one input are aggregated (mean, with noise
``noise / count``), which leaves the posterior unchanged.

Two inference paths share one predictive form ``mu(x) = k_xZ beta``,
``var(x) = s2 - |k_xZ C|^2``:

* **exact** (``Z`` = the observed inputs, ``C C^T = (K + Lambda)^-1``) while it is cheap;
* **FITC** (fully independent training conditional, Snelson & Ghahramani 2006) with ``m`` inducing
  inputs, ``C C^T = Kmm^-1 - Sigma``. FITC keeps a proper predictive variance: far from the data it
  returns the prior ``s2``, at inducing inputs it matches the exact GP. At its own training inputs
  (``predict_all`` after ``fit_indices``) the FITC posterior also uses the independent part
  observed there, so queried concepts get the exact-like ``mu``. ``dtc`` (deterministic training
  conditional) is available as well.

Inducing inputs. ``inducing_top_fraction`` of them are the highest-reward observations (the
sampler's ranking is decided near them). The rest are, for ``fit_indices`` (inputs are vocabulary
rows), *fixed per vocabulary*: greedy pivoted-Cholesky picks (largest residual variance) from a
random pool of concepts, chosen once per length-scale bucket (a function of the vocabulary, the
config and the length scale, never of the fitting history). For ``fit`` on arbitrary inputs they
are pivoted-Cholesky picks from a random pool of the observed inputs.

Concept x basis cache. ``set_vocabulary`` attaches the whole concept set. ``fit_indices`` keeps
the squared distances between every concept and every basis concept (exact: the observed
concepts; FITC: the inducing concepts) in an ``(N, m)`` float32 column store keyed by vocabulary
row; a column is computed once, when its concept first enters the basis, and reused by every later
update whatever the hyperparameters (the kernel is ``exp`` of the cached distances). A steady-state
update is then: the new columns (few: the fixed inducing concepts never change, the top-reward ones
change slowly), ``O(n m^2)`` of small float64 algebra, and one pass over the concepts, in blocks
that stay in cache, computing ``exp``, ``mu`` and ``sigma^2`` with a triangular ``C`` (QR of the
FITC factor; the exact factor is triangular already), whose column panels of 128 need only the
rows the triangle keeps (``0.625 N m^2`` flops instead of ``N m^2``). The large loops run on
Python threads that each drive torch on one core and take blocks from a shared queue: on a busy
machine this is several times faster than torch's own two-thread ops, whose per-op barriers stall
whenever another process holds a core. Columns are computed in fixed row chunks and blocks of at
least 16 (MKL's SGEMM changes its rounding below ~12 columns), so a column's bits do not depend on
the history, and the basis is always processed in ascending vocabulary order: a refit from the
same observations gives the same numbers whether the cache was warm or cold (state round trips
stay exact). ``cache_max_bytes`` bounds the store; above it ``predict_all`` computes the kernel on the fly.

Hyperparameters are fixed by the config or fitted by maximising the exact marginal likelihood
(L-BFGS in float64, closed-form gradient) on a subset of at most ``fit_max_points`` distinct inputs,
warm-started from the previous fit. For ``fit_indices`` the subset is the observed concepts that
come first in a seeded random order of the vocabulary, so it changes by a few concepts per
iteration and the warm start stays close; for ``fit`` it is a random subset.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["GPPriorConfig", "GPPrior", "rbf_kernel", "aggregated_log_marginal_likelihood"]


@dataclass
class GPPriorConfig:
    """Kernel, inference method and hyperparameter fitting of :class:`GPPrior`."""

    length_scale: float = 0.7
    signal_variance: float = 1.0
    noise_variance: float = 0.1
    # sklearn's ``normalize_y``: centre and scale the targets; s2 and noise are in those units.
    normalize_y: bool = True
    fit_hyperparameters: bool = True
    fit_max_points: int = 800  # distinct inputs used for the marginal-likelihood fit
    fit_steps: int = 20  # L-BFGS iterations per fit
    length_scale_bounds: tuple[float, float] = (0.05, 20.0)
    signal_variance_bounds: tuple[float, float] = (1e-3, 1e3)
    noise_variance_bounds: tuple[float, float] = (1e-5, 10.0)
    # "auto": exact while cheap (see ``exact_max_points`` / ``exact_max_flops``), else FITC.
    method: Literal["auto", "exact", "fitc", "dtc"] = "auto"
    exact_max_points: int = 2000
    # Exact prediction over an attached vocabulary of N concepts costs ~ 2 N n (n + d) flops;
    # above this the auto method switches to FITC (5e10 ~ half a second on two cores).
    exact_max_flops: float = 5e10
    num_inducing: int = 512
    inducing_selection: Literal["pivoted_cholesky", "random"] = "pivoted_cholesky"
    inducing_candidates: int = 2048  # pivoted Cholesky runs on a pool of this many inputs
    # Share of the inducing inputs forced to be the highest-reward observations (the sampler's
    # ranking is decided near them); the rest are pivoted-Cholesky picks (from the vocabulary,
    # fixed per vocabulary, for fit_indices; from the observed inputs for fit).
    inducing_top_fraction: float = 0.5
    # The fixed vocabulary inducing concepts are chosen at the length scale
    # ``length_scale * factor^k`` nearest (in log) the current one: re-chosen only when the fitted
    # length scale moves by more than ~this factor.
    inducing_refresh_factor: float = 1.5
    # Memory for the concept x basis squared-distance store (N x m float32); 0 disables it.
    cache_max_bytes: int = 1 << 30
    dtype: Literal["float32", "float64"] = "float32"  # of the large cross-kernel products
    jitter: float = 1e-6  # relative to the signal variance
    chunk_size: int = 4096  # rows per chunk in predict / predict_all
    # threads for the large loops (0 = torch's default thread count), each a Python thread running
    # torch on one core (see ``_parallel``); the small dense algebra of the fit (Cholesky, eigh,
    # hyperparameter fitting) always runs on one thread.
    num_threads: int = 0
    include_noise_in_std: bool = False  # std of the latent f (False) or of a new observation
    seed: int = 0

    def validate(self) -> None:
        for name in ("length_scale", "signal_variance", "noise_variance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"GPPriorConfig.{name} must be a positive number, got {v!r}")
        for name in ("length_scale_bounds", "signal_variance_bounds", "noise_variance_bounds"):
            lo, hi = getattr(self, name)
            if not (0 < lo < hi):
                raise ValueError(f"GPPriorConfig.{name} must satisfy 0 < low < high, got {(lo, hi)}")
        for name in ("fit_max_points", "num_inducing", "inducing_candidates", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPPriorConfig.{name} must be >= 1")
        if not 0.0 <= self.inducing_top_fraction <= 1.0:
            raise ValueError("GPPriorConfig.inducing_top_fraction must lie in [0, 1]")
        if not (math.isfinite(self.inducing_refresh_factor) and self.inducing_refresh_factor > 1.0):
            raise ValueError("GPPriorConfig.inducing_refresh_factor must be a number > 1")
        if int(self.cache_max_bytes) < 0:
            raise ValueError("GPPriorConfig.cache_max_bytes must be >= 0")
        if self.fit_steps < 0 or self.exact_max_points < 0:
            raise ValueError("GPPriorConfig.fit_steps and exact_max_points must be >= 0")
        if self.method not in ("auto", "exact", "fitc", "dtc"):
            raise ValueError(f"GPPriorConfig.method must be auto|exact|fitc|dtc, got {self.method!r}")
        if self.inducing_selection not in ("pivoted_cholesky", "random"):
            raise ValueError(f"unknown inducing_selection {self.inducing_selection!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"GPPriorConfig.dtype must be float32 or float64, got {self.dtype!r}")

    def __post_init__(self) -> None:
        self.length_scale_bounds = tuple(self.length_scale_bounds)  # type: ignore[assignment]
        self.signal_variance_bounds = tuple(self.signal_variance_bounds)  # type: ignore[assignment]
        self.noise_variance_bounds = tuple(self.noise_variance_bounds)  # type: ignore[assignment]
        self.validate()


def rbf_kernel(
    a: torch.Tensor,
    b: torch.Tensor,
    length_scale: float,
    signal_variance: float,
    a_sq: torch.Tensor | None = None,
    b_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """``s2 * exp(-|a_i - b_j|^2 / (2 l^2))`` as an ``(len(a), len(b))`` tensor (dtype of ``a``)."""
    if a_sq is None:
        a_sq = (a * a).sum(1)
    if b_sq is None:
        b_sq = (b * b).sum(1)
    d2 = torch.addmm(a_sq[:, None] + b_sq[None, :], a, b.T, beta=1.0, alpha=-2.0)
    d2.clamp_(min=0.0)
    d2.mul_(-0.5 / (length_scale * length_scale)).exp_()
    if signal_variance != 1.0:
        d2.mul_(signal_variance)
    return d2


_DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def _threads(n: int):
    """Run a block on ``n`` torch threads (0 = the process default). Small dense algebra runs on
    one: with two OpenMP threads on a busy 2-core machine a 256 x 256 eigh took seconds."""
    old = torch.get_num_threads()
    n = n if n > 0 else _DEFAULT_THREADS
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_USE_POOL = True
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:  # a forked child has the pool object but none of its threads
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _parallel(fn: Any, ranges: list[tuple[int, int]], workers: int) -> list[Any]:
    """``[fn(a, b) for a, b in ranges]`` on ``workers`` Python threads, each running torch on one
    thread and pulling the next range when it is done.

    On a shared machine this beats torch's own two-thread parallel ops by a wide margin: each op
    there ends in a barrier, and a thread descheduled by another process stalls the other one at
    every barrier (a 0.7 s pass over the vocabulary took 2-10 s under load); here the ranges of a
    descheduled thread are taken by the other.
    """
    if not _USE_POOL:  # torch's own intra-op threads (for comparisons)
        with _threads(workers):
            return [fn(a, b) for a, b in ranges]
    workers = min(workers, len(ranges))
    if workers <= 1:
        with _threads(1):
            return [fn(a, b) for a, b in ranges]
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid() or _POOL._max_workers < workers:  # noqa: SLF001
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gp_prior")
            _POOL_PID = os.getpid()
    def run(ab: tuple[int, int]) -> Any:
        if torch.get_num_threads() != 1:  # per OS thread (OpenMP), set once per pool thread
            torch.set_num_threads(1)
        return fn(*ab)
    with _threads(1):
        return list(_POOL.map(run, ranges))


def _workers(n: int) -> int:
    return n if n > 0 else _DEFAULT_THREADS


def _as_2d_float(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _group_rows(X: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (first index of each group, inverse map) for identical rows or given group ids."""
    if groups is None:
        keys = np.ascontiguousarray(X).view(np.dtype((np.void, X.dtype.itemsize * X.shape[1])))[:, 0]
    else:
        keys = np.asarray(groups)
        if keys.shape != (X.shape[0],):
            raise ValueError(f"groups must have shape ({X.shape[0]},), got {keys.shape}")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


class _ColumnStore:
    """Squared distances between every vocabulary row and a set of basis rows, one column per basis
    row, in an ``(N, capacity)`` buffer whose slots are reused as the basis changes."""

    MIN_BLOCK = 16  # below ~12 columns MKL's SGEMM takes another path (other rounding): pad
    MAX_BLOCK = 256
    ROW_CHUNK = 4096  # row chunks (a column's bits do not depend on the chunking, tested)

    def __init__(self, X: torch.Tensor, X_sq: torch.Tensor) -> None:
        self.X, self.X_sq = X, X_sq
        self.buf: torch.Tensor | None = None
        self.slot_rows = np.zeros(0, dtype=np.int64)  # vocabulary row held by each slot, -1 = free
        self.slot_of: dict[int, int] = {}
        self.columns_computed = 0  # running count, for diagnostics and tests

    @property
    def capacity(self) -> int:
        return 0 if self.buf is None else int(self.buf.shape[1])

    def nbytes(self, m: int) -> int:
        return int(self.X.shape[0]) * int(m) * self.X.element_size()

    def ensure(self, rows: np.ndarray, workers: int = 1) -> torch.Tensor:
        """Slots holding ``rows`` (distinct vocabulary rows), in that order; computes missing columns."""
        rows = np.asarray(rows, dtype=np.int64)
        missing = np.asarray([r for r in rows.tolist() if r not in self.slot_of], dtype=np.int64)
        if missing.size:
            if rows.size > self.capacity:
                self._grow(rows.size)
            wanted = set(rows.tolist())
            free = [j for j, r in enumerate(self.slot_rows.tolist()) if r < 0 or r not in wanted]
            slots = np.asarray(free[: missing.size], dtype=np.int64)  # ascending: runs stay contiguous
            for j, r in zip(slots.tolist(), missing.tolist()):
                old = int(self.slot_rows[j])
                if old >= 0:
                    del self.slot_of[old]
                self.slot_rows[j] = r
                self.slot_of[r] = j
            self._compute(missing, slots, workers)
        return torch.as_tensor([self.slot_of[r] for r in rows.tolist()], dtype=torch.long)

    def _grow(self, capacity: int) -> None:
        N = int(self.X.shape[0])
        buf = torch.empty((N, capacity), dtype=self.X.dtype)
        old = self.capacity
        if old:
            buf[:, :old] = self.buf
        self.buf = buf
        self.slot_rows = np.concatenate([self.slot_rows, np.full(capacity - old, -1, dtype=np.int64)])

    def _compute(self, rows: np.ndarray, slots: np.ndarray, workers: int) -> None:
        N = int(self.X.shape[0])
        for b in range(0, rows.size, self.MAX_BLOCK):
            r = rows[b : b + self.MAX_BLOCK]
            k = r.size
            padded = np.concatenate([r, np.full(max(0, self.MIN_BLOCK - k), r[-1], dtype=np.int64)])
            idx = torch.from_numpy(padded)
            Zt = self.X[idx].T.contiguous()
            z_sq = self.X_sq[idx]
            sl = slots[b : b + k]
            cols = torch.from_numpy(sl)
            a0 = int(sl[0])
            contiguous = bool(np.array_equal(sl, np.arange(a0, a0 + k)))

            def chunk(s: int, e: int) -> None:
                G = self.X[s:e] @ Zt
                G.mul_(-2.0).add_(self.X_sq[s:e, None]).add_(z_sq[None, :]).clamp_(min=0.0)
                if contiguous:
                    self.buf[s:e, a0 : a0 + k].copy_(G[:, :k])
                else:
                    self.buf[s:e].index_copy_(1, cols, G[:, :k])

            _parallel(chunk, [(s, min(s + self.ROW_CHUNK, N)) for s in range(0, N, self.ROW_CHUNK)], workers)
        self.columns_computed += int(rows.size)


class GPPrior:
    """GP regressor ``embedding -> reward`` with exact and FITC inference (see module doc).

    Typical use::

        gp = GPPrior(GPPriorConfig())
        gp.set_vocabulary(concept_embeddings)          # optional, enables predict_all
        gp.fit(X_obs, y_obs)                           # or gp.fit_indices(concept_ids, y_obs)
        mu, std = gp.predict_all()                     # over the vocabulary
        mu, std = gp.predict(X, return_std=True)
    """

    _PANEL = 128  # column panel width of the triangular product in _predict_vocab

    def __init__(self, config: GPPriorConfig | None = None) -> None:
        self.config = config or GPPriorConfig()
        self.config.validate()
        self.length_scale = float(self.config.length_scale)
        self.signal_variance = float(self.config.signal_variance)
        self.noise_variance = float(self.config.noise_variance)
        self._dtype = torch.float32 if self.config.dtype == "float32" else torch.float64
        self._vocab: torch.Tensor | None = None
        self._vocab_sq: torch.Tensor | None = None
        self._store: _ColumnStore | None = None
        self._fixed_inducing: dict[tuple[int, int], np.ndarray] = {}
        self._vocab_priority: np.ndarray | None = None  # order of the hyperparameter-fit subset
        self._reset_posterior()

    # --- setup ----------------------------------------------------------------------------------
    def _reset_posterior(self) -> None:
        self.method_used: str = "prior"
        self.n_observations = 0
        self.n_distinct = 0
        self._Z: torch.Tensor | None = None  # (m, d) basis inputs
        self._Z_sq: torch.Tensor | None = None
        self._W: torch.Tensor | None = None  # (m, m + 1): [C | beta]
        self._C_lower = False  # C lower triangular (FITC after QR) or upper (exact: L^-T)
        self._basis_vocab: np.ndarray | None = None  # vocabulary rows of Z (ascending), fit_indices
        self._y_mean = 0.0
        self._y_scale = 1.0
        # the inducing inputs: vocabulary rows after fit_indices, rows of the distinct inputs after fit
        self.inducing_rows: np.ndarray = np.zeros(0, dtype=np.int64)
        # FITC's independent part at the training inputs (see ``_training_correction``)
        self._obs_index: np.ndarray | None = None  # vocabulary rows of the distinct inputs
        self._obs_ybar = np.zeros(0)
        self._obs_noise = np.zeros(0)
        self._obs_d = np.zeros(0)

    def set_vocabulary(self, X_all: np.ndarray) -> None:
        """Attach the whole input set (e.g. all concept embeddings) for ``predict_all``."""
        X = _as_2d_float(X_all, "X_all")
        X = np.ascontiguousarray(X, dtype=self.config.dtype)
        with warnings.catch_warnings():  # a shared read-only vocabulary: only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._vocab = torch.from_numpy(X)
        self._vocab_sq = (self._vocab * self._vocab).sum(1)
        self._store = _ColumnStore(self._vocab, self._vocab_sq)
        self._fixed_inducing = {}
        self._vocab_priority = None
        # a posterior kept from before predicts on the new vocabulary directly (its basis inputs
        # are kept); what referred to rows of the old vocabulary goes
        self._basis_vocab = None
        self._obs_index = None

    @property
    def vocabulary_size(self) -> int:
        return 0 if self._vocab is None else int(self._vocab.shape[0])

    @property
    def hyperparameters(self) -> dict[str, float]:
        return {
            "length_scale": self.length_scale,
            "signal_variance": self.signal_variance,
            "noise_variance": self.noise_variance,
        }

    def state_dict(self) -> dict[str, Any]:
        """Config and current hyperparameters (the posterior is refit from the observations)."""
        return {"config": asdict(self.config), "hyperparameters": self.hyperparameters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hp = state["hyperparameters"]
        self.length_scale = float(hp["length_scale"])
        self.signal_variance = float(hp["signal_variance"])
        self.noise_variance = float(hp["noise_variance"])

    # --- fitting --------------------------------------------------------------------------------
    def fit_indices(self, indices: np.ndarray, y: np.ndarray) -> "GPPrior":
        """Fit on vocabulary rows ``indices`` (repeats aggregated by index)."""
        if self._vocab is None:
            raise RuntimeError("fit_indices needs set_vocabulary() first")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.vocabulary_size):
            raise ValueError(f"indices must lie in [0, {self.vocabulary_size})")
        yv = self._check_y(y, idx.size)
        if yv.size == 0:
            self._reset_posterior()
            return self
        rows, inverse = np.unique(idx, return_inverse=True)  # ascending vocabulary rows
        Xd = self._vocab[torch.from_numpy(rows)].double().numpy()
        self._condition(Xd, yv, inverse.reshape(-1), vocab_rows=rows)
        return self

    def fit(self, X_obs: np.ndarray, y_obs: np.ndarray, groups: np.ndarray | None = None) -> "GPPrior":
        """Condition on observations ``(X_obs, y_obs)``; rows with equal ``groups`` (default: equal
        rows) are the same input. Fits hyperparameters first if the config says so."""
        X = _as_2d_float(X_obs, "X_obs")
        y = self._check_y(y_obs, X.shape[0], "X_obs has {n} rows but y_obs has {m} values")
        if y.size == 0:
            self._reset_posterior()
            return self
        if self._vocab is not None and X.shape[1] != self._vocab.shape[1]:
            raise ValueError(f"X_obs has dimension {X.shape[1]}, the vocabulary {self._vocab.shape[1]}")
        first, inverse = _group_rows(X, groups)
        self._condition(np.ascontiguousarray(X[first], dtype=np.float64), y, inverse, vocab_rows=None)
        return self

    @staticmethod
    def _check_y(y_obs: Any, n: int, msg: str = "indices has {n} entries but y has {m} values") -> np.ndarray:
        y = np.asarray(y_obs, dtype=np.float64).reshape(-1)
        if y.size == 0:
            return y  # no observations: the caller resets to the prior
        if y.size != n:
            raise ValueError(msg.format(n=n, m=y.size))
        if not np.all(np.isfinite(y)):
            raise ValueError("y_obs contains NaN or inf")
        return y

    def _condition(
        self, Xd: np.ndarray, y: np.ndarray, inverse: np.ndarray, vocab_rows: np.ndarray | None
    ) -> None:
        """Aggregate repeats, fit hyperparameters, build the posterior on the distinct inputs ``Xd``."""
        cfg = self.config
        self._reset_posterior()
        n = Xd.shape[0]
        counts = np.bincount(inverse, minlength=n).astype(np.float64)
        if cfg.normalize_y:
            self._y_mean = float(y.mean())
            std = float(y.std())
            self._y_scale = std if std > 1e-12 * max(1.0, abs(self._y_mean)) else 1.0
        yn = (y - self._y_mean) / self._y_scale
        ybar = np.bincount(inverse, weights=yn, minlength=n) / counts
        scatter = np.bincount(inverse, weights=(yn - ybar[inverse]) ** 2, minlength=n)
        self.n_observations, self.n_distinct = int(y.size), int(n)

        method = self._choose_method(n, Xd.shape[1])
        if cfg.fit_hyperparameters and cfg.fit_steps > 0 and n >= 2:
            with _threads(1):
                self._fit_hyperparameters(Xd, ybar, counts, scatter, vocab_rows)
        self.method_used = method
        with _threads(1):  # the large products inside switch back to num_threads
            if method == "exact":
                self._fit_exact(Xd, ybar, counts)
                if vocab_rows is not None:
                    self._basis_vocab = vocab_rows
                    self.inducing_rows = vocab_rows.copy()
            elif vocab_rows is not None:
                self._fit_sparse_vocab(Xd, ybar, counts, vocab_rows, dtc=(method == "dtc"))
            else:
                rows = self._select_inducing(Xd, ybar)
                self._fit_sparse(Xd, ybar, counts, Xd[rows], None, rows, dtc=(method == "dtc"))
        if vocab_rows is not None:
            self._obs_index = vocab_rows

    def _choose_method(self, n: int, d: int) -> str:
        cfg = self.config
        if cfg.method != "auto":
            return cfg.method
        if n <= cfg.num_inducing:
            return "exact"  # FITC with every input inducing is the exact GP
        if n > cfg.exact_max_points:
            return "fitc"
        if self._vocab is not None and 2.0 * self.vocabulary_size * n * (n + d) > cfg.exact_max_flops:
            return "fitc"
        return "exact"

    def _jitter(self) -> float:
        return self.config.jitter * self.signal_variance

    def _fit_exact(self, Xd: np.ndarray, ybar: np.ndarray, counts: np.ndarray) -> None:
        Xt = torch.from_numpy(Xd)
        K = rbf_kernel(Xt, Xt, self.length_scale, self.signal_variance)
        K.diagonal().add_(torch.from_numpy(self.noise_variance / counts))
        L = _cholesky(K)  # adds jitter only if K + Lambda is not numerically PD
        eye = torch.eye(L.shape[0], dtype=torch.float64)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
        C = Linv.T  # C C^T = (K + Lambda)^-1, upper triangular
        beta = C @ (Linv @ torch.from_numpy(ybar))
        self._set_basis(Xd, C, beta, np.arange(Xd.shape[0]), lower=False)

    def _fit_sparse_vocab(
        self, Xd: np.ndarray, ybar: np.ndarray, counts: np.ndarray, vocab_rows: np.ndarray, dtc: bool
    ) -> None:
        """FITC / DTC on vocabulary rows: fixed vocabulary inducing concepts + the top observations;
        ``Kmn`` is read from the column store when it fits in ``cache_max_bytes``."""
        basis = self._vocab_basis(vocab_rows, ybar)
        Z = self._vocab[torch.from_numpy(basis)].double().numpy()
        Kmn = None
        if self._store is not None and self._store.nbytes(basis.size) <= self.config.cache_max_bytes:
            slots = self._store.ensure(basis, _workers(self.config.num_threads))
            buf, rows = self._store.buf, torch.from_numpy(vocab_rows)
            c, s2 = -0.5 / (self.length_scale * self.length_scale), self.signal_variance

            def Kmn(a: int, b: int) -> torch.Tensor:  # (m, b - a) from the cached distances
                K = buf.index_select(0, rows[a:b]).index_select(1, slots).double().mul_(c).exp_()
                return (K.mul_(s2) if s2 != 1.0 else K).T

        self._fit_sparse(Xd, ybar, counts, Z, Kmn, basis, dtc=dtc)
        self._basis_vocab = basis

    def _vocab_basis(self, vocab_rows: np.ndarray, ybar: np.ndarray) -> np.ndarray:
        """Ascending vocabulary rows of the inducing concepts: the fixed vocabulary picks, then the
        highest-``ybar`` observed concepts (not among them) up to ``num_inducing``."""
        cfg = self.config
        m = min(cfg.num_inducing, self.vocabulary_size)
        if cfg.inducing_selection == "random":  # random observed concepts, as for ``fit``
            return vocab_rows[self._select_inducing(np.zeros((vocab_rows.size, 0)), ybar)]
        fixed = self._fixed_vocab_inducing(m - int(round(cfg.inducing_top_fraction * m)))
        order = vocab_rows[np.argsort(-ybar, kind="stable")]
        top = order[~np.isin(order, fixed)][: m - fixed.size]
        return np.union1d(fixed, top)

    def _fixed_vocab_inducing(self, m: int) -> np.ndarray:
        """``m`` pivoted-Cholesky picks from a seeded random pool of the vocabulary, at the
        length-scale bucket of the current length scale (cached per bucket)."""
        if m <= 0:
            return np.zeros(0, dtype=np.int64)
        cfg = self.config
        f = math.log(cfg.inducing_refresh_factor)
        bucket = int(round(math.log(self.length_scale / cfg.length_scale) / f))
        key = (m, bucket)
        if key not in self._fixed_inducing:
            N = self.vocabulary_size
            rng = np.random.default_rng([cfg.seed, N, 3])
            pool = np.sort(rng.choice(N, size=min(N, max(cfg.inducing_candidates, m)), replace=False))
            ls = cfg.length_scale * math.exp(bucket * f)
            with _threads(1):
                chosen = _pivoted_cholesky(
                    self._vocab[torch.from_numpy(pool)].double(), min(m, pool.size), ls, 1.0, tol=1e-6
                )
            self._fixed_inducing[key] = np.sort(pool[chosen])
        return self._fixed_inducing[key]

    def _fit_sparse(
        self,
        Xd: np.ndarray,
        ybar: np.ndarray,
        counts: np.ndarray,
        Z: np.ndarray,
        Kmn: Any,
        rows: np.ndarray,
        dtc: bool,
    ) -> None:
        """FITC / DTC with inducing inputs ``Z`` (float64); ``Kmn(a, b)`` gives the (m, b - a)
        kernel block of observations ``a:b`` when it is cheaper than computing it here."""
        Zt = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float64))
        Kmm = rbf_kernel(Zt, Zt, self.length_scale, self.signal_variance)
        Kmm.diagonal().add_(self._jitter())
        Lm = _cholesky(Kmm)
        n = Xd.shape[0]
        workers = _workers(self.config.num_threads)
        ranges = [(a, min(a + 2048, n)) for a in range(0, n, 2048)]
        if Kmn is None:
            with _threads(self.config.num_threads):
                X32 = torch.from_numpy(Xd).to(self._dtype)
                K_full = rbf_kernel(Zt.to(self._dtype), X32, self.length_scale, self.signal_variance).double()
            Kmn = lambda a, b: K_full[:, a:b]  # noqa: E731
        Lm_inv = torch.linalg.solve_triangular(Lm, torch.eye(Lm.shape[0], dtype=torch.float64), upper=False)
        lam0 = torch.from_numpy(self.noise_variance / counts)
        yb = torch.from_numpy(ybar)
        s2 = self.signal_variance

        def part(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """One range of observations: V = Lm^-1 Kmn (Q_nn = V^T V), FITC's independent part
            d, A = V Lambda^-1/2, its Gram matrix (lower blocks) and A Lambda^-1/2 y."""
            V = _lower_matmul(Lm_inv, Kmn(a, b))
            d = torch.zeros(b - a, dtype=torch.float64) if dtc else (s2 - (V * V).sum(0)).clamp_(min=0.0)
            r = (lam0[a:b] + d).rsqrt_()
            A = V.mul_(r[None, :])
            return d, _lower_gram(A), A @ (yb[a:b] * r)

        parts = _parallel(part, ranges, workers)
        d = torch.cat([p[0] for p in parts])
        AAt = sum(p[1] for p in parts)
        Ay = sum(p[2] for p in parts)
        if not dtc:
            self._obs_ybar, self._obs_noise, self._obs_d = ybar, self.noise_variance / counts, d.numpy()
        e, U = torch.linalg.eigh(AAt, UPLO="L")  # I + A A^T = U (1 + e) U^T (lower triangle read)
        e = e.clamp(min=0.0)
        LmT_inv = Lm_inv.T
        # Kmm^-1 - Sigma = Lm^-T (I - (I + A A^T)^-1) Lm^-1 = C C^T
        C = LmT_inv @ (U * (e / (1.0 + e)).sqrt()[None, :])
        b = U.T @ Ay
        beta = LmT_inv @ (U @ (b / (1.0 + e)))  # Sigma Kmn Lambda^-1 y
        # any C with C C^T = M gives the same variance: C^T = Q R makes it lower triangular (R^T),
        # which halves the flops of |k_x C|^2 over the vocabulary (see _predict_vocab)
        C = torch.linalg.qr(C.T, mode="r")[1].T
        self._set_basis(Z, C, beta, rows, lower=True)

    def _set_basis(
        self, Z: np.ndarray, C: torch.Tensor, beta: torch.Tensor, rows: np.ndarray, lower: bool
    ) -> None:
        self._Z = torch.from_numpy(np.ascontiguousarray(Z, dtype=self.config.dtype))
        self._Z_sq = (self._Z * self._Z).sum(1)
        self._W = torch.cat([C, beta[:, None]], dim=1).to(self._dtype).contiguous()
        self._C_lower = lower
        self.inducing_rows = np.asarray(rows, dtype=np.int64)

    def _select_inducing(self, Xd: np.ndarray, ybar: np.ndarray | None = None) -> np.ndarray:
        """Rows of the distinct inputs used as inducing inputs (sorted)."""
        cfg = self.config
        n = Xd.shape[0]
        m = min(cfg.num_inducing, n)
        rng = np.random.default_rng([cfg.seed, n, 1])
        if cfg.inducing_selection == "random" or m == n:
            return np.sort(rng.choice(n, size=m, replace=False))
        k = int(round(cfg.inducing_top_fraction * m)) if ybar is not None else 0
        top = np.argsort(-ybar, kind="stable")[:k] if k else np.zeros(0, dtype=np.int64)
        rest = np.setdiff1d(np.arange(n), top)
        n_more = min(rest.size, max(cfg.inducing_candidates - k, m - k))
        pool = np.concatenate([top, np.sort(rng.choice(rest, size=n_more, replace=False))])
        with _threads(1):  # a loop of small matrix-vector steps
            chosen = _pivoted_cholesky(
                torch.from_numpy(Xd[pool]), m, self.length_scale, self.signal_variance, tol=1e-6,
                first=np.arange(k),
            )
        return np.sort(pool[chosen])

    def _fit_hyperparameters(
        self,
        Xd: np.ndarray,
        ybar: np.ndarray,
        counts: np.ndarray,
        scatter: np.ndarray,
        vocab_rows: np.ndarray | None = None,
    ) -> None:
        """Maximise the exact marginal likelihood of at most ``fit_max_points`` distinct inputs.

        With vocabulary rows the subset is the observed concepts first in a seeded random order of
        the vocabulary: it changes by a few concepts per iteration, so the warm start from the
        previous fit is close and L-BFGS stops after a few steps (a fresh random subset every update
        moved the optimum and cost the full ``fit_steps``)."""
        cfg = self.config
        n = Xd.shape[0]
        if n <= cfg.fit_max_points:
            sub = np.arange(n)
        elif vocab_rows is not None:
            if self._vocab_priority is None:
                N = self.vocabulary_size
                self._vocab_priority = np.random.default_rng([cfg.seed, N, 2]).permutation(N)
            sub = np.sort(np.argsort(self._vocab_priority[vocab_rows], kind="stable")[: cfg.fit_max_points])
        else:
            rng = np.random.default_rng([cfg.seed, n, 2])
            sub = np.sort(rng.choice(n, size=cfg.fit_max_points, replace=False))
        X = torch.from_numpy(Xd[sub])
        sq = (X * X).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * X @ X.T).clamp(min=0.0)
        yb = torch.from_numpy(ybar[sub])
        c = torch.from_numpy(counts[sub])
        S = float(scatter[sub].sum())
        bounds = [cfg.length_scale_bounds, cfg.signal_variance_bounds, cfg.noise_variance_bounds]
        lo = torch.tensor([math.log(b[0]) for b in bounds], dtype=torch.float64)
        hi = torch.tensor([math.log(b[1]) for b in bounds], dtype=torch.float64)
        start = torch.tensor(
            [math.log(self.length_scale), math.log(self.signal_variance), math.log(self.noise_variance)],
            dtype=torch.float64,
        )
        frac = ((start - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
        u = torch.logit(frac).clone().requires_grad_(True)
        total = float(counts[sub].sum())

        def neg_mll(with_grad: bool = False) -> torch.Tensor:
            with torch.no_grad():
                sig = torch.sigmoid(u)
                theta = (lo + (hi - lo) * sig).exp()  # length scale, signal variance, noise
                mll, g = _aggregated_mll_and_grad(d2, yb, c, S, *theta.tolist(), jitter=1e-6)
                if with_grad:  # chain rule through log theta = lo + (hi - lo) sigmoid(u)
                    u.grad = -(g * theta * (hi - lo) * sig * (1.0 - sig)) / total
                return -mll / total

        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=cfg.fit_steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            return neg_mll(with_grad=True)

        best = u.detach().clone()
        try:
            with torch.no_grad():
                start_loss = float(neg_mll())
            opt.step(closure)
            with torch.no_grad():
                end_loss = float(neg_mll())
            if math.isfinite(end_loss) and end_loss <= start_loss:
                best = u.detach().clone()
        except (RuntimeError, torch.linalg.LinAlgError):
            pass  # keep the previous hyperparameters
        ls, s2, noise = (lo + (hi - lo) * torch.sigmoid(best)).exp().tolist()
        self.length_scale, self.signal_variance, self.noise_variance = ls, s2, noise

    def log_marginal_likelihood(self, X_obs: np.ndarray, y_obs: np.ndarray) -> float:
        """Exact log marginal likelihood of the raw observations under the current
        hyperparameters, in the normalised units used for fitting (for tests and diagnostics)."""
        y = np.asarray(y_obs, dtype=np.float64).reshape(-1)
        X = _as_2d_float(X_obs, "X_obs")
        mean = float(y.mean()) if self.config.normalize_y else 0.0
        scale = float(y.std()) if self.config.normalize_y and y.std() > 1e-12 else 1.0
        yn = torch.from_numpy((y - mean) / scale)
        Xt = torch.from_numpy(np.asarray(X, dtype=np.float64))
        K = rbf_kernel(Xt, Xt, self.length_scale, self.signal_variance)
        K.diagonal().add_(self.noise_variance)
        L = _cholesky(K)
        alpha = torch.cholesky_solve(yn[:, None], L)[:, 0]
        return float(
            -0.5 * (yn * alpha).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * len(y) * math.log(2 * math.pi)
        )

    # --- prediction -----------------------------------------------------------------------------
    def predict(
        self, X: np.ndarray, return_std: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Posterior mean (and std of the latent function, see ``include_noise_in_std``) at ``X``."""
        Xa = _as_2d_float(X, "X")
        Xt = torch.from_numpy(np.ascontiguousarray(Xa, dtype=self.config.dtype))
        return self._predict_tensor(Xt, (Xt * Xt).sum(1), return_std)

    def predict_all(self, return_std: bool = True) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """``predict`` over the attached vocabulary."""
        if self._vocab is None:
            raise RuntimeError("predict_all needs set_vocabulary() first")
        rows = self._obs_index if self._obs_index is not None else None
        if (
            self._basis_vocab is not None
            and self._store is not None
            and self._store.nbytes(self._basis_vocab.size) <= self.config.cache_max_bytes
        ):
            return self._predict_vocab(return_std, rows)
        return self._predict_tensor(self._vocab, self._vocab_sq, return_std, rows)

    def _predict_vocab(
        self, return_std: bool, observed_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """``predict_all`` from the column store: per block of concepts one gather of the cached
        squared distances (ascending basis order), one ``exp``, and the products with the
        triangular ``C`` in column panels of width ``panel`` (panel ``j`` needs only the basis
        rows the triangle keeps), ``beta`` riding along with the panel that sees every row."""
        N = self.vocabulary_size
        mu = np.empty(N, dtype=np.float64)
        var = np.empty(N, dtype=np.float64)
        s2 = self.signal_variance
        with torch.no_grad():
            slots = self._store.ensure(self._basis_vocab, _workers(self.config.num_threads))
            m = int(slots.numel())
            identity = m == self._store.capacity and bool(torch.equal(slots, torch.arange(m)))
            W = self._W * s2  # k(x, z) = s2 * exp(...): s2 folded into [C | beta]
            panel = self._PANEL if self._PANEL > 0 else m
            # (columns a:b of C, rows lo:hi of C that are nonzero there, weights)
            panels: list[tuple[int, int, int, int, torch.Tensor]] = []
            for a in range(0, m, panel):
                b = min(a + panel, m)
                lo, hi = (a, m) if self._C_lower else (0, b)
                cols = W[lo:hi, a:b]
                if lo == 0 and hi == m:
                    cols = torch.cat([cols, W[:, -1:]], dim=1)
                panels.append((a, b, lo, hi, cols.contiguous()))
            beta = W[:, -1].contiguous()
            c = -0.5 / (self.length_scale * self.length_scale)
            store = self._store.buf
            local = threading.local()

            def block(s: int, e: int) -> None:
                buf = getattr(local, "buf", None)
                if buf is None or buf.shape[0] < e - s:
                    buf = local.buf = torch.empty((e - s, m), dtype=store.dtype)
                K = buf[: e - s]
                if identity:
                    torch.mul(store[s:e], c, out=K)
                else:
                    torch.index_select(store[s:e], 1, slots, out=K)
                    K.mul_(c)
                K.exp_()
                if not return_std:
                    mu[s:e] = (K @ beta).numpy()
                    return
                red = None
                for a, b, lo, hi, Wp in panels:
                    P = K[:, lo:hi] @ Wp
                    if Wp.shape[1] > b - a:
                        mu[s:e] = P[:, -1].numpy()
                        P = P[:, :-1]
                    q = torch.linalg.vecdot(P, P)
                    red = q if red is None else red.add_(q)
                var[s:e] = (s2 - red).numpy()

            step = self.config.chunk_size
            ranges = [(s, min(s + step, N)) for s in range(0, N, step)]
            _parallel(block, ranges, _workers(self.config.num_threads))
        return self._finish(mu, var, return_std, observed_rows)

    def _predict_tensor(
        self, Xt: torch.Tensor, X_sq: torch.Tensor, return_std: bool, observed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        n = Xt.shape[0]
        mu = np.empty(n, dtype=np.float64)
        var = np.zeros(n, dtype=np.float64)
        if self._Z is not None and Xt.shape[1] != self._Z.shape[1]:
            raise ValueError(f"X has dimension {Xt.shape[1]}, the model {self._Z.shape[1]}")
        if self._Z is None:
            mu[:] = 0.0
            var[:] = self.signal_variance
        else:
            # k(x, z) = s2 exp(-c |x|^2 - c |z|^2 + 2c x.z), c = 1 / (2 l^2): one addmm and one
            # exp per chunk; s2 is folded into W.
            c = 0.5 / (self.length_scale * self.length_scale)
            W = (self._W if return_std else self._W[:, -1:]) * self.signal_variance
            z_bias = (-c) * self._Z_sq
            Zt = self._Z.T.contiguous()
            step = self.config.chunk_size
            with torch.no_grad(), _threads(self.config.num_threads):
                for s in range(0, n, step):
                    bias = z_bias[None, :] - c * X_sq[s : s + step, None]
                    K = torch.addmm(bias, Xt[s : s + step], Zt, beta=1.0, alpha=2.0 * c)
                    K.clamp_(max=0.0).exp_()
                    P = K @ W
                    mu[s : s + step] = P[:, -1].numpy()
                    if return_std:
                        P = P[:, :-1]
                        var[s : s + step] = (self.signal_variance - torch.einsum("ij,ij->i", P, P)).numpy()
        return self._finish(mu, var, return_std, observed_rows)

    def _finish(
        self, mu: np.ndarray, var: np.ndarray, return_std: bool, observed_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Training correction at FITC's own inputs, then back to the units of ``y``."""
        if observed_rows is not None and self._obs_d.size:
            self._training_correction(mu, var, observed_rows)
        mu = mu * self._y_scale + self._y_mean
        if not return_std:
            return mu
        np.maximum(var, 0.0, out=var)
        if self.config.include_noise_in_std:
            var += self.noise_variance
        return mu, np.sqrt(var) * self._y_scale

    def _training_correction(self, mu: np.ndarray, var: np.ndarray, rows: np.ndarray) -> None:
        """FITC posterior at its own training inputs (in place, normalised units).

        FITC's prior is ``f = g + h`` with ``g ~ GP(Q)`` and an independent ``h_i ~ N(0, d_i)``,
        ``d_i = k_ii - q_ii``, at each training input. ``predict`` treats a test input as new (a
        fresh ``h``); at a training input ``h_i`` was observed through ``y_i``:
        ``E[f_i] = E[g_i] + w_i (y_i - E[g_i])``, ``Var[f_i] = (1 - w_i)^2 Var[g_i] + w_i noise_i``,
        ``w_i = d_i / (d_i + noise_i)``. This makes queried concepts agree with the exact GP.
        """
        d, noise = self._obs_d, self._obs_noise
        w = d / (d + noise)
        g_mu = mu[rows]
        mu[rows] = g_mu + w * (self._obs_ybar - g_mu)
        var_g = np.maximum(var[rows] - d, 0.0)
        var[rows] = (1.0 - w) ** 2 * var_g + w * noise


def aggregated_log_marginal_likelihood(
    d2: torch.Tensor,
    ybar: torch.Tensor,
    counts: torch.Tensor,
    scatter: float,
    length_scale: Any,
    signal_variance: Any,
    noise_variance: Any,
    jitter: float = 0.0,
) -> torch.Tensor:
    """Exact log p(y) of all raw observations from their per-input summaries.

    ``d2``: squared distances between the distinct inputs; ``ybar``: per-input means; ``counts``:
    repeats per input; ``scatter``: sum over inputs of sum_j (y_ij - ybar_i)^2. Uses
    ``prod_j N(y_ij; f, s) = N(ybar; f, s/c) (2 pi s)^-(c-1)/2 c^-1/2 exp(-S / 2s)``.
    Differentiable in the hyperparameters (tensors or floats).
    """
    n = d2.shape[0]
    K = signal_variance * torch.exp(-0.5 * d2 / (length_scale * length_scale))
    K = K + torch.diag(noise_variance / counts + jitter * signal_variance)
    L = torch.linalg.cholesky(K)
    alpha = torch.cholesky_solve(ybar[:, None], L)[:, 0]
    extra = float((counts - 1.0).sum())
    return (
        -0.5 * (ybar * alpha).sum()
        - torch.log(torch.diagonal(L)).sum()
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * extra * torch.log(2 * math.pi * torch.as_tensor(noise_variance, dtype=d2.dtype))
        - 0.5 * float(torch.log(counts).sum())
        - 0.5 * scatter / noise_variance
    )


def _lower_matmul(L: torch.Tensor, B: torch.Tensor, panel: int = 64) -> torch.Tensor:
    """``L @ B`` for lower-triangular ``L``, by row panels that skip the zero blocks (about
    ``(b + 1) / 2b`` of the flops for ``b`` panels; cheaper than a triangular solve here)."""
    m = L.shape[0]
    out = torch.empty((m, B.shape[1]), dtype=B.dtype)
    for i in range(0, m, panel):
        torch.matmul(L[i : i + panel, : i + panel], B[: i + panel], out=out[i : i + panel])
    return out


def _lower_gram(A: torch.Tensor, panel: int = 64) -> torch.Tensor:
    """``A @ A.T`` with only the blocks on and below the diagonal filled (the upper blocks are
    zero): about ``(b + 1) / 2b`` of the flops for ``b`` panels, for readers of the lower triangle."""
    m = A.shape[0]
    out = torch.zeros((m, m), dtype=A.dtype)
    for i in range(0, m, panel):
        out[i : i + panel, : i + panel] = A[i : i + panel] @ A[: i + panel].T
    return out


def _aggregated_mll_and_grad(
    d2: torch.Tensor,
    ybar: torch.Tensor,
    counts: torch.Tensor,
    scatter: float,
    length_scale: float,
    signal_variance: float,
    noise_variance: float,
    jitter: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`aggregated_log_marginal_likelihood` and its gradient in (length scale, signal
    variance, noise variance), in closed form: ``d log p / d theta = tr((alpha alpha^T - K^-1)
    dK/dtheta) / 2`` plus the noise terms of the repeats. About three times cheaper than autograd
    through the Cholesky factorisation (one Cholesky, one ``cholesky_inverse``, a few passes)."""
    n = d2.shape[0]
    ls, s2, noise = length_scale, signal_variance, noise_variance
    E = torch.exp(d2 * (-0.5 / (ls * ls)))
    K = E * s2
    K.diagonal().add_(noise / counts + jitter * s2)
    L = torch.linalg.cholesky(K)
    alpha = torch.cholesky_solve(ybar[:, None], L)[:, 0]
    extra = float((counts - 1.0).sum())
    mll = (
        -0.5 * (ybar * alpha).sum()
        - torch.log(torch.diagonal(L)).sum()
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * extra * math.log(2 * math.pi * noise)
        - 0.5 * float(torch.log(counts).sum())
        - 0.5 * scatter / noise
    )
    W = torch.cholesky_inverse(L).neg_().addr_(alpha, alpha)  # alpha alpha^T - K^-1
    w_diag = W.diagonal().clone()
    WE = W.mul_(E)  # dK/ds2 = E + jitter I, dK/dl = s2 E d2 / l^3, dK/dnoise = diag(1 / counts)
    grad = torch.tensor(
        [
            0.5 * s2 / ls**3 * float(torch.dot(WE.reshape(-1), d2.reshape(-1))),
            0.5 * (float(WE.sum()) + jitter * float(w_diag.sum())),
            0.5 * float((w_diag / counts).sum()) - 0.5 * extra / noise + 0.5 * scatter / noise**2,
        ],
        dtype=torch.float64,
    )
    return mll, grad


def _cholesky(K: torch.Tensor) -> torch.Tensor:
    """Cholesky factor, adding diagonal jitter in growing steps if ``K`` is not numerically PD."""
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        return L
    scale = float(K.diagonal().mean())
    for k in range(-8, 0):
        L, info = torch.linalg.cholesky_ex(K + torch.eye(K.shape[0], dtype=K.dtype) * scale * 10.0**k)
        if int(info) == 0:
            return L
    raise torch.linalg.LinAlgError("kernel matrix is not positive definite even with jitter")


def _pivoted_cholesky(
    X: torch.Tensor, m: int, length_scale: float, s2: float, tol: float, first: np.ndarray | None = None
) -> np.ndarray:
    """Greedy pivots of a partial Cholesky of ``K(X, X)``: each step picks the input with the
    largest residual variance given the ones already picked (a Nystrom basis with small error).
    ``first`` are pivots forced at the start."""
    n = X.shape[0]
    K = rbf_kernel(X, X, length_scale, s2)  # the pool's Gram matrix, one GEMM
    L = torch.zeros((m, n), dtype=X.dtype)
    picked: list[int] = [] if first is None else [int(i) for i in first[:m]]
    k = len(picked)
    if k:  # forced pivots as one block: L[:k] = chol(K_ff)^-1 K_f:
        idx = torch.as_tensor(picked)
        Kf = K[idx]
        Lf = _cholesky(Kf[:, idx] + torch.eye(k, dtype=X.dtype) * (1e-8 * s2))
        L[:k] = torch.linalg.solve_triangular(Lf, Kf, upper=False)
    diag = s2 - (L[:k] * L[:k]).sum(0)
    if k:
        diag[idx] = -1.0
    for j in range(k, m):
        p = int(torch.argmax(diag))
        if float(diag[p]) <= tol * s2:
            break
        picked.append(p)
        col = K[p] - L[:j].T @ L[:j, p] if j else K[p].clone()
        L[j] = col / math.sqrt(float(diag[p]))
        diag -= L[j] * L[j]
        diag[p] = -1.0  # never pick twice
    return np.asarray(picked, dtype=np.int64)
