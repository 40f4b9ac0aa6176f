"""Scalable Gaussian-process regression from concept text embedding to query reward.

The model is a GP with an RBF kernel ``k(x, z) = s2 * exp(-|x - z|^2 / (2 l^2))`` and Gaussian
observation noise ``noise``. Repeated observations of one input are aggregated (mean, with noise
``noise / count``), which leaves the posterior unchanged.

Two inference paths share one predictive form ``mu(x) = k_xZ beta``,
``var(x) = s2 - |k_xZ C|^2``:

* **exact** (``Z`` = the observed inputs, ``C C^T = (K + Lambda)^-1``) while it is cheap;
* **FITC** (fully independent training conditional, Snelson & Ghahramani 2006) with ``m`` inducing
  inputs chosen among the observed inputs: the ``inducing_top_fraction`` highest-reward ones (the
  sampler's ranking is decided near them), then greedy pivoted-Cholesky picks (largest residual
  variance) from a random candidate pool; ``C C^T = Kmm^-1 - Sigma``. FITC keeps a proper
  predictive variance: far from the data it returns the prior ``s2``, at inducing inputs it
  matches the exact GP. At its own training inputs (``predict_all`` after ``fit_indices``) the
  FITC posterior also uses the independent part observed there, so queried concepts get the
  exact-like ``mu``. ``dtc`` (deterministic training conditional) is available as well.

``set_vocabulary`` attaches the whole concept set once (row norms precomputed, contiguous float32
copy) so that ``predict_all`` can score every concept in memory-bounded chunks; the ``auto`` method
uses the vocabulary size to decide what "cheap" means for the exact path.

Hyperparameters are fixed by the config or fitted by maximising the exact marginal likelihood
(L-BFGS in float64) on a random subset of at most ``fit_max_points`` distinct inputs, warm-started
from the previous fit.
"""

from __future__ import annotations

import math
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
    # ranking is decided near them); the rest are pivoted-Cholesky picks.
    inducing_top_fraction: float = 0.5
    dtype: Literal["float32", "float64"] = "float32"  # of the large cross-kernel products
    jitter: float = 1e-6  # relative to the signal variance
    chunk_size: int = 16384  # rows per chunk in predict / predict_all
    # torch threads for the large products (0 = the process default); the small dense algebra of
    # the fit (Cholesky, eigh, hyperparameter fitting) always runs on one thread.
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


class GPPrior:
    """GP regressor ``embedding -> reward`` with exact and FITC inference (see module doc).

    Typical use::

        gp = GPPrior(GPPriorConfig())
        gp.set_vocabulary(concept_embeddings)          # optional, enables predict_all
        gp.fit(X_obs, y_obs)                           # or gp.fit_indices(concept_ids, y_obs)
        mu, std = gp.predict_all()                     # over the vocabulary
        mu, std = gp.predict(X, return_std=True)
    """

    def __init__(self, config: GPPriorConfig | None = None) -> None:
        self.config = config or GPPriorConfig()
        self.config.validate()
        self.length_scale = float(self.config.length_scale)
        self.signal_variance = float(self.config.signal_variance)
        self.noise_variance = float(self.config.noise_variance)
        self._dtype = torch.float32 if self.config.dtype == "float32" else torch.float64
        self._vocab: torch.Tensor | None = None
        self._vocab_sq: torch.Tensor | None = None
        self._reset_posterior()

    # --- setup ----------------------------------------------------------------------------------
    def _reset_posterior(self) -> None:
        self.method_used: str = "prior"
        self.n_observations = 0
        self.n_distinct = 0
        self._Z: torch.Tensor | None = None  # (m, d) basis inputs
        self._Z_sq: torch.Tensor | None = None
        self._W: torch.Tensor | None = None  # (m, m + 1): [C | beta]
        self._y_mean = 0.0
        self._y_scale = 1.0
        self.inducing_rows: np.ndarray = np.zeros(0, dtype=np.int64)  # rows of the distinct inputs
        # FITC's independent part at the training inputs (see ``_training_correction``)
        self._obs_index: np.ndarray | None = None  # vocabulary rows of the distinct inputs
        self._obs_ybar = np.zeros(0)
        self._obs_noise = np.zeros(0)
        self._obs_d = np.zeros(0)

    def set_vocabulary(self, X_all: np.ndarray) -> None:
        """Attach the whole input set (e.g. all concept embeddings) for ``predict_all``."""
        X = _as_2d_float(X_all, "X_all")
        self._vocab = torch.from_numpy(np.ascontiguousarray(X, dtype=self.config.dtype))
        self._vocab_sq = (self._vocab * self._vocab).sum(1)

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
        self.fit(self._vocab[torch.from_numpy(idx)].numpy(), y, groups=idx)
        if self.n_distinct:
            self._obs_index = np.unique(idx)  # same order as the distinct inputs (np.unique keys)
        return self

    def fit(self, X_obs: np.ndarray, y_obs: np.ndarray, groups: np.ndarray | None = None) -> "GPPrior":
        """Condition on observations ``(X_obs, y_obs)``; rows with equal ``groups`` (default: equal
        rows) are the same input. Fits hyperparameters first if the config says so."""
        cfg = self.config
        y = np.asarray(y_obs, dtype=np.float64).reshape(-1)
        if y.size == 0:
            self._reset_posterior()
            return self
        X = _as_2d_float(X_obs, "X_obs")
        if X.shape[0] != y.size:
            raise ValueError(f"X_obs has {X.shape[0]} rows but y_obs has {y.size} values")
        if not np.all(np.isfinite(y)):
            raise ValueError("y_obs contains NaN or inf")
        if self._vocab is not None and X.shape[1] != self._vocab.shape[1]:
            raise ValueError(f"X_obs has dimension {X.shape[1]}, the vocabulary {self._vocab.shape[1]}")
        self._reset_posterior()
        first, inverse = _group_rows(X, groups)
        n = first.size
        counts = np.bincount(inverse, minlength=n).astype(np.float64)
        if cfg.normalize_y:
            self._y_mean = float(y.mean())
            std = float(y.std())
            self._y_scale = std if std > 1e-12 * max(1.0, abs(self._y_mean)) else 1.0
        yn = (y - self._y_mean) / self._y_scale
        ybar = np.bincount(inverse, weights=yn, minlength=n) / counts
        scatter = np.bincount(inverse, weights=(yn - ybar[inverse]) ** 2, minlength=n)
        Xd = np.ascontiguousarray(X[first], dtype=np.float64)
        self.n_observations, self.n_distinct = int(y.size), int(n)

        method = self._choose_method(n, X.shape[1])
        if cfg.fit_hyperparameters and cfg.fit_steps > 0 and n >= 2:
            with _threads(1):
                self._fit_hyperparameters(Xd, ybar, counts, scatter)
        self.method_used = method
        with _threads(1):  # the large products inside switch back to num_threads
            if method == "exact":
                self._fit_exact(Xd, ybar, counts)
            else:
                self._fit_sparse(Xd, ybar, counts, dtc=(method == "dtc"))
        return self

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
        C = Linv.T  # C C^T = (K + Lambda)^-1
        beta = C @ (Linv @ torch.from_numpy(ybar))
        self._set_basis(Xd, C, beta, np.arange(Xd.shape[0]))

    def _fit_sparse(self, Xd: np.ndarray, ybar: np.ndarray, counts: np.ndarray, dtc: bool) -> None:
        rows = self._select_inducing(Xd, ybar)
        Xt = torch.from_numpy(Xd)
        Zt = Xt[torch.from_numpy(rows)]
        Kmm = rbf_kernel(Zt, Zt, self.length_scale, self.signal_variance)
        Kmm.diagonal().add_(self._jitter())
        Lm = _cholesky(Kmm)
        X32 = Xt.to(self._dtype)
        with _threads(self.config.num_threads):
            Kmn = rbf_kernel(X32[torch.from_numpy(rows)], X32, self.length_scale, self.signal_variance).double()
            V = torch.linalg.solve_triangular(Lm, Kmn, upper=False)  # (m, n), Q_nn = V^T V
        lam = torch.from_numpy(self.noise_variance / counts)
        if not dtc:
            d = (self.signal_variance - (V * V).sum(0)).clamp(min=0.0)
            self._obs_ybar, self._obs_noise, self._obs_d = ybar, self.noise_variance / counts, d.numpy()
            lam = lam + d
        A = V / lam.sqrt()[None, :]
        with _threads(self.config.num_threads):
            AAt = A @ A.T
        e, U = torch.linalg.eigh(AAt)  # I + A A^T = U (1 + e) U^T
        e = e.clamp(min=0.0)
        LmT_inv = torch.linalg.solve_triangular(Lm.T, torch.eye(Lm.shape[0], dtype=torch.float64), upper=True)
        # Kmm^-1 - Sigma = Lm^-T (I - (I + A A^T)^-1) Lm^-1 = C C^T
        C = LmT_inv @ (U * (e / (1.0 + e)).sqrt()[None, :])
        b = U.T @ (A @ (torch.from_numpy(ybar) / lam.sqrt()))
        beta = LmT_inv @ (U @ (b / (1.0 + e)))  # Sigma Kmn Lambda^-1 y
        self._set_basis(Xd[rows], C, beta, rows)

    def _set_basis(self, Z: np.ndarray, C: torch.Tensor, beta: torch.Tensor, rows: np.ndarray) -> None:
        self._Z = torch.from_numpy(np.ascontiguousarray(Z, dtype=self.config.dtype))
        self._Z_sq = (self._Z * self._Z).sum(1)
        self._W = torch.cat([C, beta[:, None]], dim=1).to(self._dtype).contiguous()
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
        self, Xd: np.ndarray, ybar: np.ndarray, counts: np.ndarray, scatter: np.ndarray
    ) -> None:
        cfg = self.config
        n = Xd.shape[0]
        rng = np.random.default_rng([cfg.seed, n, 2])
        sub = np.arange(n) if n <= cfg.fit_max_points else np.sort(
            rng.choice(n, size=cfg.fit_max_points, replace=False)
        )
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

        def neg_mll() -> torch.Tensor:
            ls, s2, noise = (lo + (hi - lo) * torch.sigmoid(u)).exp()
            mll = aggregated_log_marginal_likelihood(d2, yb, c, S, ls, s2, noise, jitter=1e-6)
            return -mll / float(counts[sub].sum())

        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=cfg.fit_steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = neg_mll()
            loss.backward()
            return loss

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
        return self._predict_tensor(self._vocab, self._vocab_sq, return_std, rows)

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
