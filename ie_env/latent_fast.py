"""Fast, exact scoring for the latent fidelity: the paper's rewards from image latents.

The reward of an image is the mean of its ``k`` highest cosine similarities to the target features,
features being ``normalize((x - mu) W)`` under the current surrogate (:mod:`ie_env.learner.surrogate`).
:class:`LatentScorer` folds the surrogate and the target features of one SSL iteration into one matrix
``M = [W F^T | W]`` so that one product ``(x - mu) M`` gives every raw similarity and the feature
before normalisation; since normalising a row scales all of its similarities by the same positive
number, the top-``k`` mean is taken on raw values and scaled once. The selection runs in a compiled
kernel when numba is installed and in numpy otherwise; both compute the same numbers (to float32
rounding) as :func:`ie_env.reward.image_rewards` on :meth:`WhiteningSurrogate.features`.

The compiled scoring kernel: one BLAS product ``[x - mu, 1] [M; offset]`` (the offset row folds in
the constant feature coordinate), then per image an exact threshold search for its ``k``-th largest
similarity. Every similarity lies in ``[-|g| B, |g| B]`` (``g`` the image's feature before
normalisation, ``B`` the largest target-feature norm); a vectorised pass counts the similarities
above a trial threshold ``tau``, and ``tau`` moves (a secant on the counts, first guessed from the
previous image's normalised threshold and feature norm) until exactly ``k`` lie above it. Those ``k``
are then exactly the top ``k`` and their sum is the numerator of the reward. Ties at the ``k``-th
value (no such ``tau``) fall back to an insertion top-``k`` of that row: exact in every case.

The rest of the latent step path is compiled too, each piece doing the numpy computation it replaces
(the tests compare them): the whitening surrogate's update from the moments of a batch gathered from
new finds, target train and replay images (never concatenated; the map ``L^-T`` of the Cholesky factor
of ``(1 - s) C + s I``, to rounding numpy's), the target features and scorer matrix of an iteration,
the replay's choice of the best new rows, all in one call per SSL iteration (:func:`latent_close`);
the action modes' observation (:func:`fill_context`); and a whole query with a context-only
observation (score, history record, next observation, the copy of a new query's images and rewards
into the iteration's buffer of new finds) in one call (:func:`latent_step`). Without
numba (``IE_ENV_NO_NUMBA=1`` or not installed, decided at import) every function here runs its numpy
equivalent.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["LatentScorer", "HAVE_NUMBA", "array_mean", "top_mean", "segment_top_means", "stack_rows", "latent_close", "latent_step",
           "step_kernel"]


def _numpy_topk_rows(z: np.ndarray, t: int, k: int) -> np.ndarray:
    """``(n,)`` normalised top-``k`` means of ``z[:, :t]`` with norms from ``z[:, t:]``."""
    sims = z[:, :t]
    kk = min(k, t)
    top = np.partition(sims, t - kk, axis=1)[:, t - kk :] if kk < t else sims
    norms = np.sqrt(np.einsum("ij,ij->i", z[:, t:], z[:, t:])) + np.float32(1e-12)
    return (top.mean(axis=1) / norms).astype(np.float32)


_kernel_state = 0  # 0: not built yet, 1: built, -1: numba could not build it (numpy used)
HAVE_NUMBA = False
if os.environ.get("IE_ENV_NO_NUMBA", "") != "1":
    try:  # optional: the compiled kernel is several times faster than numpy on 50 x 200 similarities
        import numba  # noqa: F401

        HAVE_NUMBA = True
    except ImportError:  # pragma: no cover - numpy fallback
        HAVE_NUMBA = False

_FM = {"contract", "arcp", "nsz"}  # no reassociation where the order of a sum is the result
_FMR = {"contract", "arcp", "nsz", "reassoc"}  # counts and masked sums: any order, vectorised

if HAVE_NUMBA:
    from numba import njit

    @njit(fastmath=_FMR)
    def _count_above(row, t, tau):  # pragma: no cover - compiled
        c = np.float32(0.0)  # exact: integers below 2**24; a select vectorises better than bool * 1.0
        for j in range(t):
            c += np.float32(1.0) if row[j] > tau else np.float32(0.0)
        return int(c)

    @njit(fastmath=_FMR)
    def _sum_above(row, t, tau):  # pragma: no cover - compiled
        s = np.float32(0.0)
        for j in range(t):
            v = row[j]
            s += v if v > tau else np.float32(0.0)
        return s

    @njit(fastmath=_FMR)
    def _sum_all(row, t):  # pragma: no cover - compiled
        s = np.float32(0.0)
        for j in range(t):
            s += row[j]
        return s

    @njit(fastmath=_FM)
    def _insertion_top_sum(row, t, kk, top):  # pragma: no cover - compiled
        for q in range(kk):
            v = row[q]
            p = q
            while p > 0 and top[p - 1] < v:
                top[p] = top[p - 1]
                p -= 1
            top[p] = v
        lo = top[kk - 1]
        for q in range(kk, t):
            v = row[q]
            if v > lo:
                p = kk - 1
                while p > 0 and top[p - 1] < v:
                    top[p] = top[p - 1]
                    p -= 1
                top[p] = v
                lo = top[kk - 1]
        acc = np.float32(0.0)
        for a in range(kk):
            acc += top[a]
        return acc

    @njit(cache=True, nogil=True)
    def _rows_kernel(first, a, b, idx, x, total):  # pragma: no cover - compiled
        nf, d = first.shape
        na = a.shape[0]
        for r in range(x.shape[0]):
            if r < nf:
                for u in range(d):
                    x[r, u] = first[r, u]
            else:
                j = idx[r - nf]
                if j < na:
                    for u in range(d):
                        x[r, u] = a[j, u]
                else:
                    for u in range(d):
                        x[r, u] = b[j - na, u]
            for u in range(d):
                total[u] += x[r, u]
        return True

    @njit(cache=True, nogil=True)
    def _whiten_kernel(m2, count, shrinkage, mean):  # pragma: no cover - compiled
        # The whitening map of cov = (1 - s) m2 / max(count - 1, 1) + s I as WhiteningSurrogate._refit
        # computes it: W = L^-T from the Cholesky factor cov = L L^T (so W W^T = cov^-1), by rows in
        # plain loops; eigh's (vecs / sqrt(max(vals, 1e-8))) @ vecs.T when cov is not positive definite.
        d = m2.shape[0]
        denom = max(count - 1.0, 1.0)
        cov = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                cov[i, j] = (1.0 - shrinkage) * (m2[i, j] / denom) + shrinkage * (1.0 if i == j else 0.0)
        L = np.zeros((d, d))
        pd = True
        for j in range(d):
            s = cov[j, j]
            for q in range(j):
                s -= L[j, q] * L[j, q]
            if not s > 1e-12:
                pd = False
                break
            L[j, j] = np.sqrt(s)
            for i in range(j + 1, d):
                s = cov[i, j]
                for q in range(j):
                    s -= L[i, q] * L[j, q]
                L[i, j] = s / L[j, j]
        W = np.zeros((d, d))
        if pd:  # W = (L^-1)^T: forward substitution column by column of L^-1, stored transposed
            for c in range(d):
                for i in range(c, d):
                    s = 1.0 if i == c else 0.0
                    for q in range(c, i):
                        s -= L[i, q] * W[c, q]
                    W[c, i] = s / L[i, i]
        else:
            vals, vecs = np.linalg.eigh(cov)
            scaled = np.empty((d, d))
            for i in range(d):
                for a in range(d):
                    scaled[i, a] = vecs[i, a] / np.sqrt(max(vals[a], 1e-8))
            W = np.dot(scaled, np.ascontiguousarray(vecs.T))
        W32 = np.empty((d, d), np.float32)
        for i in range(d):
            for j in range(d):
                W32[i, j] = W[i, j]
        mu32 = np.empty(d, np.float32)
        for i in range(d):
            mu32[i] = mean[i]
        return W, W32, mu32

    @njit(cache=True, nogil=True)
    def _update_kernel(m2, mean, count, n, bmean, c, shrinkage):  # pragma: no cover - compiled
        # WhiteningSurrogate.update_moments, element by element in its operation order, then the map.
        d = m2.shape[0]
        total = count + n
        new_m2 = np.empty((d, d))
        new_mean = np.empty(d)
        for i in range(d):
            di = bmean[i] - mean[i]
            for j in range(d):
                dj = bmean[j] - mean[j]
                new_m2[i, j] = m2[i, j] + c[i, j] + di * dj * count * n / total
            new_mean[i] = mean[i] + di * n / total
        W, W32, mu32 = _whiten_kernel(new_m2, total, shrinkage, new_mean)
        return new_m2, new_mean, total, W, W32, mu32

    @njit(cache=True, nogil=True)
    def _update_rows_kernel(first, a, b, idx, m2, mean, count, shrinkage):  # pragma: no cover - compiled
        # The moments of concat([first, concat([a, b])[idx]]) (stack_rows + moments_from_sums), then
        # _update_kernel: one call for a whole surrogate update.
        n = first.shape[0] + idx.shape[0]
        d = first.shape[1]
        x = np.empty((n, d), np.float64)
        total = np.zeros(d)
        _rows_kernel(first, a, b, idx, x, total)
        outer = np.dot(x.T, x)
        nf = float(n)
        bmean = total / nf
        c = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                c[i, j] = outer[i, j] - nf * (bmean[i] * bmean[j])
        return _update_kernel(m2, mean, count, nf, bmean, c, shrinkage)

    @njit(cache=True, nogil=True, fastmath=_FM)
    def _targets_kernel(images, mu, W, bias, F, Maug):  # pragma: no cover - compiled
        # F = normalize([(images - mu) W, bias]) and Maug = [W F_w^T | W | 0 ; bias F_c | 0 | bias].
        t, din = images.shape
        d = W.shape[1]
        has_bias = F.shape[1] > d
        xc = np.empty((t, din), np.float32)
        for i in range(t):
            for b in range(din):
                xc[i, b] = images[i, b] - mu[b]
        f = np.dot(xc, W)  # BLAS, as features_np
        fwt = np.empty((d, t), np.float32)
        fb = np.float32(0.0)
        for i in range(t):
            ss = bias * bias if has_bias else np.float32(0.0)
            for j in range(d):
                ss += f[i, j] * f[i, j]
            nrm = np.float32(np.sqrt(ss)) + np.float32(1e-12)
            ss = np.float32(0.0)
            for j in range(d):
                v = f[i, j] / nrm
                F[i, j] = v
                fwt[j, i] = v
                ss += v * v
            if has_bias:
                v = bias / nrm
                F[i, d] = v
                ss += v * v
            fb = max(fb, np.float32(np.sqrt(ss)))
        m = np.dot(W, fwt)
        for b in range(din):
            for i in range(t):
                Maug[b, i] = m[b, i]
            for j in range(d):
                Maug[b, t + j] = W[b, j]
            Maug[b, t + d] = np.float32(0.0)
        for i in range(t):
            Maug[din, i] = bias * F[i, d] if has_bias else np.float32(0.0)
        for j in range(d):
            Maug[din, t + j] = np.float32(0.0)
        Maug[din, t + d] = bias
        return fb

    @njit(cache=True, nogil=True)
    def _context_kernel(out, E, actions, rewards, t, H, left):  # pragma: no cover - compiled
        d = E.shape[1]
        d1 = d + 1
        n = min(H, t) + 1 if t >= 1 else 0  # the last query's block, then the history blocks
        for i in range(n):
            r = t - 1 - max(i - 1, 0)
            out[i * d1 : i * d1 + d] = E[actions[r]]
            out[i * d1 + d] = rewards[r]
        out[n * d1 : out.shape[0] - 1] = np.float32(0.0)
        out[out.shape[0] - 1] = left
        return True

    @njit(cache=True, nogil=True)
    def _stable_descending(values):  # pragma: no cover - compiled
        # np.argsort(-values, kind="stable") for float32 values without NaN: an LSD radix sort (four
        # stable passes of 8 bits, a pass skipped when every key shares its byte) of uint32 keys whose
        # ascending order is that of -value (an order-preserving map of its bits, -0.0 as 0.0).
        n = values.shape[0]
        neg = np.empty(n, np.float32)
        for i in range(n):
            neg[i] = -values[i] + np.float32(0.0)  # -0.0 -> 0.0: equal values, equal keys
        bits = neg.view(np.uint32)
        keys = np.empty(n, np.uint32)
        for i in range(n):
            u = bits[i]
            keys[i] = ~u if u & np.uint32(0x80000000) else u | np.uint32(0x80000000)
        order = np.arange(n)
        tmp = np.empty(n, np.int64)
        count = np.empty(257, np.int64)
        for shift in range(0, 32, 8):
            count[:] = 0
            for i in range(n):
                count[((keys[i] >> np.uint32(shift)) & np.uint32(0xFF)) + 1] += 1
            if n and count[((keys[0] >> np.uint32(shift)) & np.uint32(0xFF)) + 1] == n:
                continue  # every key has this byte: the pass keeps the order
            for c in range(256):
                count[c + 1] += count[c]
            for i in range(n):
                j = order[i]
                d = (keys[j] >> np.uint32(shift)) & np.uint32(0xFF)
                tmp[count[d]] = j
                count[d] += 1
            order, tmp = tmp, order
        return order

    @njit(cache=True, nogil=True)
    def _close_kernel(gram, total, n, fresh, rewards, a, keep, m2, mean, count, shrinkage, bias, F, Maug,
                      m2_out, mean_out, W_out, W32_out, mu32_out, top, top_rw):  # pragma: no cover - compiled
        # One latent SSL iteration after the Gram matrix `gram` and row sum `total` of the training
        # batch: the surrogate's update (as _update_rows_kernel) into m2_out, mean_out, W_out, W32_out,
        # mu32_out; the target features F and scorer matrix Maug of the updated surrogate (_targets_kernel
        # on the target train images `a`); and the `keep` best new rows and rewards in the replay's order
        # (a stable argsort of -rewards) into top, top_rw. Outputs are the caller's arrays (nothing to box).
        # Returns (ok, count, fb); ok is False for a NaN reward (numpy orders NaN differently).
        ok = True
        for i in range(rewards.shape[0]):
            if rewards[i] != rewards[i]:
                ok = False
        d = fresh.shape[1]
        bmean = total / n  # moments_from_sums
        c = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                c[i, j] = gram[i, j] - n * (bmean[i] * bmean[j])
        new_m2, new_mean, new_count, W, W32, mu32 = _update_kernel(m2, mean, count, n, bmean, c, shrinkage)
        m2_out[:] = new_m2
        mean_out[:] = new_mean
        W_out[:] = W
        W32_out[:] = W32
        mu32_out[:] = mu32
        fb = _targets_kernel(a, mu32, W32, bias, F, Maug)
        order = _stable_descending(rewards)
        for r in range(keep):
            j = order[r]
            for u in range(d):
                top[r, u] = fresh[j, u]
            top_rw[r] = rewards[j]
        return ok, new_count, fb

    @njit(cache=True, nogil=True, fastmath=_FM)
    def _score_kernel(x, mu, Maug, t, k, fbound, state, top_images, out):  # pragma: no cover - compiled
        n, d = x.shape
        w = Maug.shape[1]
        kk = min(k, t)
        H = np.empty((n, d + 1), np.float32)
        for i in range(n):
            for b in range(d):
                H[i, b] = x[i, b] - mu[b]
            H[i, d] = np.float32(1.0)
        Z = np.empty((n, w), np.float32)
        np.dot(H, Maug, Z)  # BLAS (scipy's), as numpy's own product
        top = np.empty(kk, np.float32)
        # Squared feature norms, every image's sum in the same order as a per-row loop would take it,
        # but interleaved across images (independent chains instead of one dependent chain a row).
        norms2 = np.zeros(n, np.float32)
        for a in range(t, w):
            for i in range(n):
                norms2[i] += Z[i, a] * Z[i, a]
        prev = state[0]  # normalised k-th similarity of the last image scored
        per_count = state[1]  # expected move of the normalised threshold per count above kk
        prev_g = state[2]  # that image's feature norm (0: none yet)
        slope = state[3]  # learnt d(normalised k-th similarity) / d(feature norm): a better first guess
        for i in range(n):
            row = Z[i]
            g = np.sqrt(norms2[i])
            if kk == t:
                s = _sum_all(row, t)
            else:
                bound = g * fbound * np.float32(1.001) + np.float32(1e-6)
                lo = -bound  # count(row > lo) == t
                hi = bound  # count(row > hi) == 0
                c_lo = t
                c_hi = 0
                guess = prev + slope * (g - prev_g) if prev_g > 0 else prev
                tau = guess * g
                found = False
                s = np.float32(0.0)
                for _ in range(48):
                    if not (tau > lo and tau < hi):
                        tau = np.float32(0.5) * (lo + hi)
                        if not (tau > lo and tau < hi):
                            break  # the bracket collapsed: a tie at the k-th value
                    c = _count_above(row, t, tau)
                    if c == kk:
                        s = _sum_above(row, t, tau)
                        found = True
                        break
                    if c > kk:
                        lo = tau
                        c_lo = c
                    else:
                        hi = tau
                        c_hi = c
                    if c_lo < t and c_hi > 0:  # bracketed: secant on the counts, kept off the ends
                        f = np.float32(c_lo - kk) / np.float32(c_lo - c_hi)
                        f = min(max(f, np.float32(0.1)), np.float32(0.9))
                        tau = lo + (hi - lo) * f
                    else:
                        tau = tau + np.float32(c - kk) * per_count * g
                if found:
                    if g > 0:
                        kth = tau / g
                        if prev_g > 0 and abs(g - prev_g) > np.float32(1e-3) * g:
                            b = (kth - prev) / (g - prev_g)
                            b = min(max(b, np.float32(-0.2)), np.float32(0.2))
                            slope = np.float32(0.95) * slope + np.float32(0.05) * b
                        prev = kth
                        prev_g = g
                else:
                    s = _insertion_top_sum(row, t, kk, top)
            out[i] = s / np.float32(kk) / (g + np.float32(1e-12))
        state[0] = prev
        state[2] = prev_g
        state[3] = slope
        # The query reward: mean of the top_images best image rewards.
        m = min(top_images, n)
        if m <= 0:
            return 0.0
        return _insertion_top_sum(out, n, m, np.empty(m, np.float32)) / np.float32(m)

    @njit(cache=True, nogil=True)
    def _step_kernel(x, mu, Maug, t, k, fbound, state, top_images, out, min_images, concept, actions, rewards,
                     last_reward, queried, pos, ctx, E, H, left, fresh_x, fresh_r, n_fresh):  # pragma: no cover - compiled
        # One latent query in one call: its image rewards and query reward (_score_kernel; 0 when fewer
        # than min_images), the history's record at `pos` (EpisodeHistory.record's arrays), the next
        # observation's context (_context_kernel) and, when n_fresh >= 0 and the query is valid, its
        # images and rewards appended to the iteration's new finds at row n_fresh.
        q = _score_kernel(x, mu, Maug, t, k, fbound, state, top_images, out)
        n = x.shape[0]
        if n < min_images:
            q = np.float32(0.0)
        elif n_fresh >= 0:
            for i in range(n):
                for u in range(x.shape[1]):
                    fresh_x[n_fresh + i, u] = x[i, u]
                fresh_r[n_fresh + i] = out[i]
        actions[pos] = concept
        rewards[pos] = q
        last_reward[concept] = q
        queried[concept] = True
        _context_kernel(ctx, E, actions, rewards, pos + 1, H, left)
        return q


def _score(x: np.ndarray, sc: "LatentScorer", top_images: int) -> tuple[np.ndarray, float]:
    """Image rewards and the mean of the ``top_images`` best of them."""
    global _kernel_state
    if HAVE_NUMBA and _kernel_state >= 0:
        out = np.empty(x.shape[0], np.float32)
        if _kernel_state:
            return out, float(_score_kernel(x, sc.mu, sc.Maug, sc.t, sc.k, sc.fbound, sc._state, top_images, out))
        try:  # the first call compiles (or loads the cached build)
            q = _score_kernel(x, sc.mu, sc.Maug, sc.t, sc.k, sc.fbound, sc._state, top_images, out)
            _kernel_state = 1
            return out, float(q)
        except Exception:  # pragma: no cover - a numba that cannot build the kernel: numpy from now on
            _kernel_state = -1
    z = (x - sc.mu) @ sc.M + sc.offset
    r = _numpy_topk_rows(z, sc.t, sc.k)
    return r, top_mean(r, top_images)


_FAILED: set[str] = set()


def _compiled(name: str, kernel, *args):
    """``kernel(*args)``, or None (numpy to be used) when numba cannot build it, remembered per kernel."""
    if name in _FAILED:
        return None
    try:
        return kernel(*args)
    except Exception:  # pragma: no cover - a numba that cannot compile it
        if getattr(kernel, "signatures", None):
            raise  # it compiled before: a real error
        _FAILED.add(name)
        return None


def whitening(m2: np.ndarray, count: float, shrinkage: float, mean: np.ndarray):
    """``(W, W32, mu32)`` of the whitening surrogate's state, compiled (one call instead of a dozen
    numpy calls and numpy's eigh wrapper); None when numba is not there (the caller uses numpy)."""
    if not HAVE_NUMBA or _kernel_state < 0:
        return None
    return _compiled("whiten", _whiten_kernel, np.ascontiguousarray(m2, np.float64), float(count), float(shrinkage),
                     np.ascontiguousarray(mean, np.float64))


def surrogate_update(m2, mean, count, n, bmean, c, shrinkage):
    """``(m2, mean, count, W, W32, mu32)`` after ``WhiteningSurrogate.update_moments``, compiled; None
    when numba is not there (the caller uses numpy)."""
    if not HAVE_NUMBA or _kernel_state < 0:
        return None
    f64 = np.float64
    return _compiled("update", _update_kernel, np.ascontiguousarray(m2, f64), np.ascontiguousarray(mean, f64), float(count),
                     float(n), np.ascontiguousarray(bmean, f64), np.ascontiguousarray(c, f64), float(shrinkage))


def surrogate_update_rows(first, a, b, idx, m2, mean, count, shrinkage):
    """:func:`surrogate_update` on the rows ``concat([first, concat([a, b])[idx]])`` (gathered, never
    concatenated), compiled; None when numba is not there."""
    if not HAVE_NUMBA or _kernel_state < 0:
        return None
    if b is None or len(b) == 0:
        b = a[:0]
    f32, f64 = np.float32, np.float64
    return _compiled("update_rows", _update_rows_kernel, np.ascontiguousarray(first, f32), np.ascontiguousarray(a, f32),
                     np.ascontiguousarray(b, f32), np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(m2, f64),
                     np.ascontiguousarray(mean, f64), float(count), float(shrinkage))


def fill_context(out: np.ndarray, E: np.ndarray, actions: np.ndarray, rewards: np.ndarray, t: int, H: int, left: float) -> bool:
    """Write an action mode's context ``[last (d+1) | history H x (d+1) | zeros | left]`` into ``out``
    in one compiled call; False when numba is not there (the caller builds it with numpy)."""
    if not HAVE_NUMBA or _kernel_state < 0:
        return False
    if _context_ok:
        return _context_kernel(out, E, actions, rewards, int(t), int(H), float(left))
    return _first_context(out, E, actions, rewards, t, H, left)


_context_ok = False


def _first_context(out, E, actions, rewards, t, H, left) -> bool:
    global _context_ok
    done = _compiled("context", _context_kernel, out, E, actions, rewards, int(t), int(H), float(left)) is not None
    _context_ok = done
    return done


def latent_step(sc: "LatentScorer", x: np.ndarray, top_images: int, min_images: int, concept: int, hist, ctx: np.ndarray,
                E: np.ndarray, H: int, fresh: tuple[np.ndarray, np.ndarray, int] | None = None):
    """Score one query's image latents ``x`` with ``sc``, record it in the episode history ``hist``
    (:class:`~ie_env.actions.EpisodeHistory`) and write the next observation's context into ``ctx``, in
    one compiled call: what ``LatentScorer.score`` + ``EpisodeHistory.record`` + ``fill_context`` do.
    ``fresh = (rows, rewards, n)``: when the query is valid (``min_images`` or more) its images and image
    rewards are also written at row ``n`` of those buffers (the iteration's new finds; the caller makes
    room). Returns ``(image_rewards, query_reward)``, or None (nothing done) when the compiled path is not
    available or ``x`` is not float32 rows."""
    global _step_ok
    pos = hist.t
    if _kernel_state <= 0 or x.dtype != np.float32 or pos >= hist.budget:
        return None
    out = np.empty(x.shape[0], np.float32)
    left = 1.0 - (pos + 1) / hist.budget
    fx, fr, nf = fresh if fresh is not None else (_NO_ROWS, _NO_REWARDS, -1)
    was = hist.queried[concept]
    if _step_ok:  # built: straight to the kernel
        q = _step_kernel(x, sc.mu, sc.Maug, sc.t, sc.k, sc.fbound, sc._state, top_images, out, min_images, concept,
                         hist.actions, hist.rewards, hist.last_reward, hist.queried, pos, ctx, E, H, left, fx, fr, nf)
    else:
        q = _compiled("step", _step_kernel, x, sc.mu, sc.Maug, sc.t, sc.k, sc.fbound, sc._state, top_images, out,
                      min_images, concept, hist.actions, hist.rewards, hist.last_reward, hist.queried, pos, ctx, E, H,
                      left, fx, fr, nf)
        if q is None:
            return None
        _step_ok = True
    hist.t = pos + 1
    if not was:
        hist.n_distinct += 1
    return out, float(q)


def step_kernel():
    """The compiled one-query kernel (``latent_step``'s, same arguments) once it has run, else None."""
    return _step_kernel if _step_ok else None


_step_ok = False  # the step kernel has run once (built or loaded): later calls skip the checks
_NO_ROWS = np.zeros((0, 1), np.float32)
_NO_REWARDS = np.zeros(0, np.float32)


def latent_close(learner, fresh: np.ndarray, rewards: np.ndarray, targets: np.ndarray, replay: np.ndarray | None,
                 idx: np.ndarray, keep: int, k: int):
    """The latent fidelity's SSL iteration in one compiled call (see ``_close_kernel``), for a
    :class:`~ie_env.learner.surrogate.WhiteningSurrogate` past its warm-up whose target set is also the
    train pool ``targets``. Applies the update to ``learner`` and returns ``(scorer, target_feats,
    replay_images, replay_rewards)``; None (nothing changed) when numba is not there or a reward is NaN.
    The same numbers as ``update_rows`` + ``ReplayBuffer.add_top`` + ``LatentScorer.for_targets``."""
    global _close_ok
    if not HAVE_NUMBA or _kernel_state < 0 or "close" in _FAILED:
        return None
    f32 = np.float32
    a = targets if targets.dtype == f32 and targets.flags.c_contiguous else np.ascontiguousarray(targets, f32)
    b = a[:0] if replay is None or len(replay) == 0 else np.ascontiguousarray(replay, f32)
    bias = f32(getattr(learner, "bias", 0.0))
    din = learner.dim
    t = len(a)
    fresh = np.ascontiguousarray(fresh, f32)
    rewards = np.ascontiguousarray(rewards, f32)
    idx = np.ascontiguousarray(idx, np.int64)
    x = np.empty((len(fresh) + len(idx), din))
    total = np.zeros(din)
    feats = np.empty((t, din + 1 if bias else din), f32)
    Maug = np.empty((din + 1, t + din + 1), f32)
    m2, mean, W = np.empty((din, din)), np.empty(din), np.empty((din, din))
    W32, mu32 = np.empty((din, din), f32), np.empty(din, f32)
    top, top_rw = np.empty((keep, din), f32), np.empty(keep, f32)
    args = (learner.m2, learner.mean, float(learner.count), float(learner.cfg.shrinkage), bias, feats, Maug, m2, mean, W,
            W32, mu32, top, top_rw)
    if _close_ok:  # both kernels have run: straight to them
        _rows_kernel(fresh, a, b, idx, x, total)
        out = _close_kernel(x.T @ x, total, float(len(x)), fresh, rewards, a, int(keep), *args)
    else:
        if _compiled("rows", _rows_kernel, fresh, a, b, idx, x, total) is None:
            return None
        gram = x.T @ x  # numpy's BLAS: faster than the one numba links for this shape
        out = _compiled("close", _close_kernel, gram, total, float(len(x)), fresh, rewards, a, int(keep), *args)
        if out is None:
            return None
        _close_ok = True
    if not out[0]:
        return None
    learner._apply(m2, mean, out[1], W, W32, mu32)
    sc = LatentScorer.__new__(LatentScorer)
    sc.t, sc.k, sc.mu = t, int(k), mu32
    sc.Maug, sc.M, sc.offset = Maug, Maug[:din], Maug[din]
    sc.fbound = f32(out[2]) if t else f32(0.0)
    sc._state = _search_state(t)
    return sc, feats, top, top_rw


_close_ok = False  # the close's kernels have run once (built or loaded)


def stack_rows(first: np.ndarray, a: np.ndarray, b: np.ndarray | None, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x = concat([first, concat([a, b])[idx]])`` as float64 and the sum of its rows, without
    building the pool ``concat([a, b])``."""
    d = first.shape[1]
    if b is None or len(b) == 0:
        b = a[:0]
    idx = np.asarray(idx, dtype=np.int64)
    x = np.empty((len(first) + len(idx), d), np.float64)
    total = np.zeros(d)
    if HAVE_NUMBA and _kernel_state >= 0 and _compiled(
        "rows", _rows_kernel, np.ascontiguousarray(first, np.float32), np.ascontiguousarray(a, np.float32),
        np.ascontiguousarray(b, np.float32), idx, x, total) is not None:
        return x, total
    nf, na = len(first), len(a)
    x[:nf] = first
    in_a = idx < na
    x[nf:][in_a] = a[idx[in_a]]
    x[nf:][~in_a] = b[idx[~in_a] - na]
    return x, x.sum(axis=0)


def array_mean(a: np.ndarray) -> np.floating:
    """``a.mean()`` bit for bit for a non-empty 1-d float array (the same pairwise sum in its dtype,
    divided by an ``intp`` count as NumPy does), without ``np.mean``'s Python-level overhead."""
    return a.dtype.type(np.add.reduce(a) / np.intp(len(a)))


def top_mean(values: np.ndarray, top: int) -> float:
    """Mean of the ``top`` largest values (all of them when fewer); 0.0 for none."""
    n = len(values)
    if n == 0:
        return 0.0
    if n <= top:
        return float(values.mean(dtype=np.float32))
    return float(np.partition(values, n - top)[n - top :].mean(dtype=np.float32))


def segment_top_means(values: np.ndarray, lengths: list[int], top: int) -> list[float]:
    """:func:`top_mean` of consecutive segments of ``values`` with the given lengths."""
    out, start = [], 0
    for n in lengths:
        out.append(top_mean(values[start : start + n], top))
        start += n
    return out


def _search_state(t: int) -> np.ndarray:
    """The threshold search's warm start, carried from image to image: [normalised k-th similarity,
    normalised move per count, feature norm, learnt slope of the first against the third]."""
    state = _STATE0.copy()
    state[1] = 0.8 / max(t, 1)
    return state


_STATE0 = np.array([0.5, 0.0, 0.0, -0.05], np.float32)


class LatentScorer:
    """Image rewards under one surrogate and one set of target features (one SSL iteration)."""

    def __init__(self, W: np.ndarray, mu: np.ndarray, target_feats: np.ndarray, k: int, bias: float = 0.0) -> None:
        # Features are normalize([(x - mu) W, bias]): the constant coordinate is folded into a
        # per-column offset ``[bias * F_c | 0 | bias]`` added to ``(x - mu) [W F_w^T | W | 0]``.
        W = np.asarray(W, dtype=np.float32)
        din, d = W.shape
        tf = np.asarray(target_feats, dtype=np.float32)
        t = self.t = int(tf.shape[0])
        self.k = int(k)
        self.mu = np.asarray(mu, dtype=np.float32)
        # The compiled kernel's operand is Maug = [M; offset]: the offset as one more row of the product.
        Maug = np.zeros((din + 1, t + d + 1), np.float32)
        Maug[:din, :t] = W @ tf[:, :d].T
        Maug[:din, t : t + d] = W
        if tf.shape[1] > d:
            np.multiply(np.float32(bias), tf[:, d], out=Maug[din, :t])
        Maug[din, -1] = bias
        self.Maug, self.M, self.offset = Maug, Maug[:din], Maug[din]
        # The largest target-feature norm bounds every similarity by |g| * fbound; the threshold
        # search's warm start is carried from query to query.
        self.fbound = np.float32(np.sqrt(np.einsum("ij,ij->i", tf, tf).max())) if t else np.float32(0.0)
        self._state = _search_state(self.t)

    @classmethod
    def from_learner(cls, learner, target_feats: np.ndarray, k: int) -> "LatentScorer":
        return cls(learner._W32, learner._mu32, target_feats, k, getattr(learner, "bias", 0.0))

    @classmethod
    def for_targets(cls, learner, target_images: np.ndarray, k: int) -> tuple["LatentScorer", np.ndarray]:
        """The scorer of ``learner`` against ``target_images`` and the targets' features
        (``learner.features_np(target_images)``, to float32 rounding), in one compiled pass."""
        if HAVE_NUMBA and _kernel_state >= 0:
            W = np.ascontiguousarray(learner._W32, dtype=np.float32)
            mu = np.ascontiguousarray(learner._mu32, dtype=np.float32)
            x = np.ascontiguousarray(target_images, dtype=np.float32)
            bias = np.float32(getattr(learner, "bias", 0.0))
            din, d = W.shape
            t = len(x)
            feats = np.empty((t, d + 1 if bias else d), np.float32)
            Maug = np.empty((din + 1, t + d + 1), np.float32)
            fbound = _compiled("targets", _targets_kernel, x, mu, W, bias, feats, Maug)
            if fbound is not None:
                sc = cls.__new__(cls)
                sc.t, sc.k, sc.mu = t, int(k), mu
                sc.Maug, sc.M, sc.offset = Maug, Maug[:din], Maug[din]
                sc.fbound = np.float32(fbound) if t else np.float32(0.0)
                sc._state = _search_state(t)
                return sc, feats
        feats = learner.features_np(target_images)
        return cls.from_learner(learner, feats, k), feats

    def image_rewards(self, latents: np.ndarray) -> np.ndarray:
        """``(n,)`` float32: mean cosine similarity of each image to its ``k`` nearest targets."""
        return self.score(latents, 1)[0]

    def score(self, latents: np.ndarray, top_images: int) -> tuple[np.ndarray, float]:
        """Image rewards and the query reward (mean of the ``top_images`` best; 0.0 for no image)."""
        n = len(latents)
        if n == 0:
            return np.zeros(0, np.float32), 0.0
        x = np.ascontiguousarray(latents, dtype=np.float32)
        if _kernel_state > 0 and HAVE_NUMBA:  # the per-step path: straight to the compiled kernel
            out = np.empty(n, np.float32)
            return out, float(_score_kernel(x, self.mu, self.Maug, self.t, self.k, self.fbound, self._state, int(top_images), out))
        return _score(x, self, int(top_images))
