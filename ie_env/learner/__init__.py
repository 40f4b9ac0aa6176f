"""Learners that map images to features: the SSL encoder (pixels) and the latent surrogate."""

from ie_env.learner.base import Learner
from ie_env.learner.ssl import SSLConfig, SSLLearner
from ie_env.learner.surrogate import SurrogateConfig, WhiteningSurrogate

__all__ = ["Learner", "SSLConfig", "SSLLearner", "SurrogateConfig", "WhiteningSurrogate"]
