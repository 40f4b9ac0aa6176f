"""Hidden targets drawn per episode, with disjoint train and held-out splits (as Procgen's levels).

Themes of the vocabulary are split once, from ``split_seed``, into training and held-out themes. An
episode's target is ``num_targets`` concepts of one theme of its split. Every concept belongs to one
theme, so held-out targets share no concept with training targets (DESIGN §7). ``mode="fixed"``
keeps the world's own target (the paper's setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ie_env.config import ConfigError
from ie_env.vocab.base import Vocabulary

__all__ = ["TargetSamplingConfig", "TargetSampler"]


@dataclass
class TargetSamplingConfig:
    """How ``reset`` picks the hidden target."""

    mode: Literal["fixed", "train", "heldout"] = "fixed"  # fixed = the world's configured target
    heldout_fraction: float = 0.25  # share of themes held out (when heldout_themes is empty)
    heldout_themes: list[str] = field(default_factory=list)  # explicit held-out themes
    split_seed: int = 0  # seeds the theme split

    def validate(self) -> None:
        if self.mode not in ("fixed", "train", "heldout"):
            raise ConfigError(f"targets.mode must be 'fixed', 'train' or 'heldout', got {self.mode!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"targets.heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")


class TargetSampler:
    """Theme split of a vocabulary and seeded draws of target sets from either side."""

    def __init__(self, vocabulary: Vocabulary, num_targets: int, cfg: TargetSamplingConfig | None = None) -> None:
        self.cfg = cfg or TargetSamplingConfig()
        self.cfg.validate()
        self.num_targets = int(num_targets)
        members: dict[str, list[int]] = {}
        for i, c in enumerate(vocabulary.concepts):
            members.setdefault(c.theme, []).append(i)
        self.members = {t: np.asarray(ids, dtype=np.int64) for t, ids in members.items()}
        themes = sorted(self.members)
        if self.cfg.heldout_themes:
            unknown = sorted(set(self.cfg.heldout_themes) - set(themes))
            if unknown:
                raise ConfigError(f"targets.heldout_themes: unknown themes {unknown}; themes: {', '.join(themes)}")
            held = sorted(set(self.cfg.heldout_themes))
        else:
            n_held = max(1, int(round(self.cfg.heldout_fraction * len(themes))))
            rng = np.random.default_rng([int(self.cfg.split_seed), 0x7A6])
            held = sorted(rng.choice(themes, size=min(n_held, len(themes) - 1), replace=False).tolist())
        self.heldout_themes: list[str] = [t for t in held if len(self.members[t]) >= self.num_targets]
        self.train_themes: list[str] = [
            t for t in themes if t not in held and len(self.members[t]) >= self.num_targets
        ]
        if not self.train_themes or not self.heldout_themes:
            raise ConfigError(
                f"no theme with at least {self.num_targets} concepts on both sides of the split "
                f"(train: {self.train_themes}, held-out: {self.heldout_themes})"
            )

    def themes(self, split: Literal["train", "heldout"]) -> list[str]:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        return self.train_themes if split == "train" else self.heldout_themes

    def split_concepts(self, split: Literal["train", "heldout"]) -> np.ndarray:
        """Every concept a target of ``split`` can contain (sorted)."""
        return np.sort(np.concatenate([self.members[t] for t in self.themes(split)]))

    def sample(self, split: Literal["train", "heldout"], rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """``(theme, sorted target concept ids)`` of one episode's hidden target."""
        themes = self.themes(split)
        theme = themes[int(rng.integers(len(themes)))]
        ids = np.sort(rng.choice(self.members[theme], size=self.num_targets, replace=False))
        return theme, ids
