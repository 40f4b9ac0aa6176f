"""The vocabulary: the concepts an agent can query, with the text used to embed them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Concept:
    """One concept (a WordNet noun sense): the query term and the text that is embedded."""

    name: str  # unique id, e.g. the WordNet synset name "robin.n.02"
    lemma: str  # what a search query uses, e.g. "robin"
    hypernym: str  # "" for a root synset
    gloss: str  # the sense's definition
    theme: str = ""  # a coarse group (embedded world: the theme subtree it was drawn from)

    @property
    def text(self) -> str:
        """The paper's concept text ``"{lemma} ({hypernym}): {definition}"``."""
        if self.hypernym:
            return f"{self.lemma} ({self.hypernym}): {self.gloss}"
        return f"{self.lemma}: {self.gloss}"


class Vocabulary:
    """An ordered list of concepts; the action index of a concept is its position here."""

    def __init__(self, concepts: Sequence[Concept], name: str = "custom") -> None:
        if not concepts:
            raise ValueError("a vocabulary needs at least one concept")
        self.concepts: tuple[Concept, ...] = tuple(concepts)
        self.name = name
        self._index = {c.name: i for i, c in enumerate(self.concepts)}
        if len(self._index) != len(self.concepts):
            raise ValueError("concept names must be unique")

    def __len__(self) -> int:
        return len(self.concepts)

    def __getitem__(self, i: int) -> Concept:
        return self.concepts[i]

    def index(self, name: str) -> int:
        return self._index[name]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.concepts]

    @property
    def lemmas(self) -> list[str]:
        return [c.lemma for c in self.concepts]

    @property
    def themes(self) -> list[str]:
        return sorted({c.theme for c in self.concepts})

    def fingerprint(self) -> str:
        """A short hash of the concept texts, used to key embedding caches and world hashes."""
        h = hashlib.sha256()
        for c in self.concepts:
            h.update(c.name.encode())
            h.update(b"\t")
            h.update(c.text.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]
