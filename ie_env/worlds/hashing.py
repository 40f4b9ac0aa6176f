"""Counter-based random numbers: any (key, slot) gives the same value in any batch or order."""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def mix64(*parts) -> np.ndarray:
    """Hash several uint64 arrays/scalars (broadcast together) into one uint64 array."""
    h = np.uint64(0x243F6A8885A308D3)
    with np.errstate(over="ignore"):
        for p in parts:
            h = splitmix64(np.asarray(h, dtype=np.uint64) ^ np.asarray(p, dtype=np.uint64))
    return np.asarray(h, dtype=np.uint64)


def hash_uniform(keys: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from uint64 keys."""
    return (splitmix64(keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def hash_normal(keys: np.ndarray, dim: int) -> np.ndarray:
    """``(len(keys), dim)`` standard normals (Box-Muller over hashed counters)."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 1)
    half = (dim + 1) // 2
    slots = np.arange(2 * half, dtype=np.uint64).reshape(1, -1)
    u = hash_uniform(mix64(keys, slots))
    u1 = np.clip(u[:, :half], 1e-12, 1.0)
    u2 = u[:, half:]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
    return z[:, :dim].astype(np.float32)
