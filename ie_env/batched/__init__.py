"""The batched latent backend: N episodes of an ``IELatent-*`` task stepped as torch tensor operations."""

from ie_env.batched.env import BatchedLatentVectorEnv, resolve_device

__all__ = ["BatchedLatentVectorEnv", "resolve_device"]
