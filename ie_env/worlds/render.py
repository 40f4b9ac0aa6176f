"""Procedural image renderer for the embedded world: (image latent, nuisance seed) -> RGB image.

Each image shows one object (DESIGN §3a): a blob whose outline is a circle modulated by four radial
harmonics (k = 2..5), filled with stripes of some frequency, angle and width, with fill, stripe and
background colours. These *class* parameters are a fixed, seeded linear map of the image latent,
squashed into valid ranges (tanh / sigmoid), so concepts close in latent space look alike and the
class signal lives in colour, shape and texture - features that crops, flips and mild colour jitter
keep. The *nuisances* come from the per-image seed: position, rotation, scale, stripe phase,
background gradient, brightness, pixel noise and, with probability ``distractor_prob``, a small
distractor shape (disc, square or triangle) of a random colour.

Rendering is vectorised numpy over the batch, and every value is computed per image from that
image's own latent and seed (counter-based hashing, no shared RNG stream, no BLAS reductions), so
the same (latent, seed) gives bit-identical pixels whatever the batch composition or order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ie_env.worlds.hashing import hash_uniform, mix64

# Layout of the class-parameter vector produced by the linear map.
_FILL, _STRIPE, _BG = slice(0, 3), slice(3, 6), slice(6, 9)
_HARM = slice(9, 17)  # (cos, sin) coefficient pairs for harmonics k = 2, 3, 4, 5
_FREQ, _ANGLE, _DUTY = 17, 18, 19
N_CLASS_PARAMS = 20

# Nuisance draws per image (slots of the counter-based hash).
(_U_CX, _U_CY, _U_ROT, _U_SCALE, _U_PHASE, _U_GDIR, _U_GSTR, _U_BRIGHT, _U_NOISE,
 _U_HAS_D, _U_D_TYPE, _U_D_X, _U_D_Y, _U_D_SIZE, _U_D_ROT, _U_D_R, _U_D_G, _U_D_B) = range(18)
_N_DRAWS = 18

_NOISE_BANK_SIZE = 1 << 20
_TAG_NUISANCE = np.uint64(0x6E756973616E6365)  # namespace constants for the hash
_TAG_BANK = 0x6E6F697365


@dataclass
class RenderConfig:
    """How images are drawn. Lengths are in units of the image half-width (the image spans [-1, 1])."""

    image_size: int = 32  # pixels per side (tested for 32-64)
    latent_dim: int = 16
    seed: int = 0  # seeds the fixed latent -> class-parameter map and the pixel-noise bank
    distractor_prob: float = 0.3
    pixel_noise: float = 0.03  # std of additive pixel noise, in [0, 1] intensity units
    # nuisance strengths
    position_jitter: float = 0.2  # max shift of the object centre
    rotation_range: float = 180.0  # rotation drawn uniformly from [-range, range] degrees
    object_radius: float = 0.5  # mean object radius
    scale_jitter: float = 0.2  # radius multiplied by U[1 - j, 1 + j]
    bg_gradient: float = 0.25  # max background ramp amplitude (intensity units, edge to centre)
    brightness: float = 0.15  # image intensity multiplied by U[1 - b, 1 + b]
    # class-parameter ranges
    harmonic_amplitude: float = 0.1  # max |coefficient| per harmonic component (relative radius)
    stripe_freq_min: float = 0.8  # stripe cycles per object radius (object frame)
    stripe_freq_max: float = 2.8
    stripe_sharpness: float = 3.0  # steepness of the stripe edges (higher = harder stripes)
    colour_gain: float = 1.6  # colour = sigmoid(gain * parameter); higher = more saturated

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def _num(name: str, lo: float | None = None, hi: float | None = None) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"render.{name} must be a finite number, got {v!r}")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"render.{name} must lie in [{lo}, {hi}], got {v!r}")
            return float(v)

        for name in ("image_size", "latent_dim", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"render.{name} must be an integer, got {v!r}")
        if not 16 <= self.image_size <= 256:
            raise ValueError(f"render.image_size must lie in [16, 256], got {self.image_size}")
        if self.latent_dim < 1:
            raise ValueError(f"render.latent_dim must be at least 1, got {self.latent_dim}")
        if self.seed < 0:
            raise ValueError(f"render.seed must be non-negative, got {self.seed}")
        _num("distractor_prob", 0.0, 1.0)
        _num("pixel_noise", 0.0, 1.0)
        _num("position_jitter", 0.0, 1.0)
        _num("rotation_range", 0.0, 180.0)
        _num("object_radius", 0.05, 1.0)
        _num("scale_jitter", 0.0, 0.9)
        _num("bg_gradient", 0.0, 1.0)
        _num("brightness", 0.0, 0.9)
        _num("harmonic_amplitude", 0.0, 0.2)
        _num("stripe_freq_min", 0.0, 64.0)
        _num("stripe_freq_max", 0.0, 64.0)
        _num("stripe_sharpness", 0.1, 100.0)
        _num("colour_gain", 0.0, 100.0)
        if self.stripe_freq_max < self.stripe_freq_min:
            raise ValueError(
                f"render.stripe_freq_max ({self.stripe_freq_max}) must be >= stripe_freq_min "
                f"({self.stripe_freq_min})"
            )


class Renderer:
    """Turns image latents and nuisance seeds into uint8 RGB images (see module docstring)."""

    def __init__(self, cfg: RenderConfig | None = None, chunk_size: int | None = None) -> None:
        """``chunk_size``: images per vectorised pass (default: ~128k pixels, cache-friendly).
        It changes speed only, never pixels."""
        self.cfg = cfg if cfg is not None else RenderConfig()
        self.cfg.validate()
        if chunk_size is None:
            chunk_size = max(8, (128 * 32 * 32) // (self.cfg.image_size**2))
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        rng = np.random.default_rng([int(self.cfg.seed), 0x72656E646572])
        # Fixed linear map; each class parameter has unit variance over unit-variance latents.
        self.weights = rng.standard_normal((N_CLASS_PARAMS, self.cfg.latent_dim)) / math.sqrt(
            self.cfg.latent_dim
        )
        bank_rng = np.random.default_rng([int(self.cfg.seed), _TAG_BANK])
        self._noise_bank = bank_rng.standard_normal(_NOISE_BANK_SIZE).astype(np.float32)
        s = self.cfg.image_size
        g = ((np.arange(s, dtype=np.float32) + 0.5) / s) * 2.0 - 1.0
        self._gx = g[None, None, :]  # (1, 1, S): x grows to the right
        self._gy = g[None, :, None]  # (1, S, 1): y grows downwards
        self._pix_idx = np.arange(s * s * 3, dtype=np.int64)[None, :]

    # ------------------------------------------------------------------ public API
    def class_params(self, latents: np.ndarray) -> np.ndarray:
        """Pre-squash class parameters ``(N, N_CLASS_PARAMS)`` float64 of image latents."""
        lat = self._check_latents(latents).astype(np.float64)
        out = np.zeros((lat.shape[0], N_CLASS_PARAMS), dtype=np.float64)
        # Explicit accumulation (no BLAS): per-row results do not depend on the batch.
        for j in range(lat.shape[1]):
            out += lat[:, j : j + 1] * self.weights[None, :, j]
        return out

    def render(self, latents: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """Render ``(N, S, S, 3)`` uint8 images from ``(N, latent_dim)`` latents and ``(N,)`` seeds."""
        lat = self._check_latents(latents)
        keys = self._check_seeds(seeds, lat.shape[0])
        s = self.cfg.image_size
        out = np.empty((lat.shape[0], s, s, 3), dtype=np.uint8)
        for start in range(0, lat.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, lat.shape[0])
            out[start:stop] = self._render_chunk(lat[start:stop], keys[start:stop])
        return out

    def render_one(self, latent: np.ndarray, seed: int) -> np.ndarray:
        """Render a single ``(S, S, 3)`` uint8 image."""
        lat = np.asarray(latent, dtype=np.float32)
        if lat.shape != (self.cfg.latent_dim,):
            raise ValueError(f"latent must have shape ({self.cfg.latent_dim},), got {lat.shape}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not -(1 << 63) <= int(seed) < (1 << 64):
            raise ValueError(f"seed must fit in 64 bits, got {seed}")
        seeds = np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
        return self.render(lat[None, :], seeds)[0]

    def has_distractor(self, seeds: np.ndarray) -> np.ndarray:
        """Whether each seed's image carries a distractor object (bool ``(N,)``)."""
        keys = self._check_seeds(seeds, None)
        return self._draws(keys)[:, _U_HAS_D] < self.cfg.distractor_prob

    # ------------------------------------------------------------------ validation
    def _check_latents(self, latents: np.ndarray) -> np.ndarray:
        lat = np.asarray(latents)
        if lat.ndim != 2 or lat.shape[1] != self.cfg.latent_dim:
            raise ValueError(
                f"latents must have shape (N, {self.cfg.latent_dim}), got {lat.shape}"
            )
        if not np.issubdtype(lat.dtype, np.floating) and not np.issubdtype(lat.dtype, np.integer):
            raise ValueError(f"latents must be numeric, got dtype {lat.dtype}")
        lat = lat.astype(np.float32, copy=False)
        if not np.isfinite(lat).all():
            raise ValueError("latents contain NaN or infinite values")
        return lat

    @staticmethod
    def _check_seeds(seeds: np.ndarray, n: int | None) -> np.ndarray:
        arr = np.asarray(seeds)
        if arr.ndim != 1:
            raise ValueError(f"seeds must be a 1-d array, got shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise ValueError(f"got {arr.shape[0]} seeds for {n} latents")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"seeds must be integers (uint64/int64), got dtype {arr.dtype}")
        # Signed seeds keep their bit pattern: -1 (int64) and 2**64 - 1 (uint64) are the same seed.
        if arr.dtype.kind == "i":
            return arr.astype(np.int64, copy=False).view(np.uint64)
        return arr.astype(np.uint64, copy=False)

    # ------------------------------------------------------------------ drawing
    def _draws(self, keys: np.ndarray) -> np.ndarray:
        """``(N, _N_DRAWS)`` uniforms in [0, 1), a pure function of (config seed, image seed)."""
        base = mix64(_TAG_NUISANCE, np.uint64(self.cfg.seed), keys)
        slots = np.arange(_N_DRAWS, dtype=np.uint64)
        return hash_uniform(mix64(base[:, None], slots[None, :]))

    def _render_chunk(self, lat: np.ndarray, keys: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        n = lat.shape[0]
        f32 = np.float32
        p = self.class_params(lat)
        u = self._draws(keys)

        def col(x: np.ndarray) -> np.ndarray:  # (n,) -> (n, 1, 1)
            return x.astype(f32)[:, None, None]

        # --- class parameters (from the latent)
        fill = 1.0 / (1.0 + np.exp(-cfg.colour_gain * p[:, _FILL]))
        stripe = 1.0 / (1.0 + np.exp(-cfg.colour_gain * p[:, _STRIPE]))
        bg = 1.0 / (1.0 + np.exp(-cfg.colour_gain * p[:, _BG]))
        harm = cfg.harmonic_amplitude * np.tanh(p[:, _HARM])  # (n, 8)
        freq = cfg.stripe_freq_min + (cfg.stripe_freq_max - cfg.stripe_freq_min) / (
            1.0 + np.exp(-1.5 * p[:, _FREQ])
        )
        angle = (math.pi / 2) * np.tanh(p[:, _ANGLE])
        duty = 0.6 * np.tanh(p[:, _DUTY])

        # --- nuisances (from the seed)
        cx = cfg.position_jitter * (2 * u[:, _U_CX] - 1)
        cy = cfg.position_jitter * (2 * u[:, _U_CY] - 1)
        rot = math.radians(cfg.rotation_range) * (2 * u[:, _U_ROT] - 1)
        radius = cfg.object_radius * (1 + cfg.scale_jitter * (2 * u[:, _U_SCALE] - 1))
        phase = 2 * math.pi * u[:, _U_PHASE]
        gdir = 2 * math.pi * u[:, _U_GDIR]
        gstr = cfg.bg_gradient * u[:, _U_GSTR]
        bright = 1 + cfg.brightness * (2 * u[:, _U_BRIGHT] - 1)

        # --- object geometry in its own frame (unit radius)
        gx, gy = self._gx, self._gy
        dx = gx - col(cx)
        dy = gy - col(cy)
        c, s_ = col(np.cos(rot)), col(np.sin(rot))
        inv_r = col(1.0 / radius)
        xr = (c * dx + s_ * dy) * inv_r
        yr = (c * dy - s_ * dx) * inv_r
        r = np.sqrt(xr * xr + yr * yr) + f32(1e-6)
        c1, s1 = xr / r, yr / r
        c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
        c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
        c4, s4 = c2 * c2 - s2 * s2, 2 * c2 * s2
        c5, s5 = c4 * c1 - s4 * s1, s4 * c1 + c4 * s1
        outline = f32(1.0) + col(harm[:, 0]) * c2 + col(harm[:, 1]) * s2
        outline += col(harm[:, 2]) * c3 + col(harm[:, 3]) * s3
        outline += col(harm[:, 4]) * c4 + col(harm[:, 5]) * s4
        outline += col(harm[:, 6]) * c5 + col(harm[:, 7]) * s5
        # Signed distance to the outline in pixels -> one-pixel antialiased coverage.
        px_per_unit = col(radius * cfg.image_size / 2.0)
        mask = np.clip((outline - r) * px_per_unit + f32(0.5), 0.0, 1.0)

        # --- stripes across the object
        t = xr * col(np.cos(angle)) + yr * col(np.sin(angle))
        wave = np.sin(t * col(2 * math.pi * freq) + col(phase))
        st = np.clip((wave - col(duty)) * f32(cfg.stripe_sharpness) + f32(0.5), 0.0, 1.0)

        # --- compose: background ramp, object, distractor
        ramp = (gx * col(np.cos(gdir)) + gy * col(np.sin(gdir))) * col(gstr)  # (n, S, S)
        fill3 = fill.astype(f32)[:, None, None, :]
        stripe3 = stripe.astype(f32)[:, None, None, :]
        bg3 = bg.astype(f32)[:, None, None, :]
        obj = fill3 + st[..., None] * (stripe3 - fill3)
        back = bg3 + ramp[..., None]
        img = back + mask[..., None] * (obj - back)

        has_d = u[:, _U_HAS_D] < cfg.distractor_prob
        if has_d.any():
            idx = np.flatnonzero(has_d)
            img[idx] = self._add_distractor(img[idx], u[idx])

        img *= col(bright)[..., None]
        if cfg.pixel_noise > 0:
            span = _NOISE_BANK_SIZE - self._pix_idx.shape[1]
            offs = (u[:, _U_NOISE] * span).astype(np.int64)[:, None]
            noise = self._noise_bank[offs + self._pix_idx].reshape(img.shape)
            img += f32(cfg.pixel_noise) * noise
        img = np.clip(img * f32(255.0) + f32(0.5), 0.0, 255.0)
        return img.astype(np.uint8)

    def _add_distractor(self, img: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Paint a small disc, square or triangle of a random colour on ``img`` (float, in place)."""
        cfg = self.cfg
        f32 = np.float32

        def col(x: np.ndarray) -> np.ndarray:
            return x.astype(f32)[:, None, None]

        size = 0.12 + 0.1 * u[:, _U_D_SIZE]
        dx = self._gx - col(1.6 * u[:, _U_D_X] - 0.8)
        dy = self._gy - col(1.6 * u[:, _U_D_Y] - 0.8)
        a = 2 * math.pi * u[:, _U_D_ROT]
        c, s_ = col(np.cos(a)), col(np.sin(a))
        xr = c * dx + s_ * dy
        yr = c * dy - s_ * dx
        kind = np.minimum((u[:, _U_D_TYPE] * 3).astype(np.int64), 2)
        disc = np.sqrt(xr * xr + yr * yr)
        square = np.maximum(np.abs(xr), np.abs(yr)) * f32(1.15)
        h = f32(math.sqrt(3) / 2)
        tri = np.maximum(np.maximum(-yr, f32(0.5) * yr + h * xr), f32(0.5) * yr - h * xr) * f32(1.6)
        dist = np.where(col(kind == 0), disc, np.where(col(kind == 1), square, tri))
        cover = np.clip((col(size) - dist) * f32(cfg.image_size / 2.0) + f32(0.5), 0.0, 1.0)
        colour = u[:, [_U_D_R, _U_D_G, _U_D_B]].astype(f32)[:, None, None, :]
        img += cover[..., None] * (colour - img)
        return img
