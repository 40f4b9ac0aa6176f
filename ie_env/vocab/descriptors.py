"""Query descriptors (the paper's adjectives): a query is ``"{descriptor} {lemma}"``.

Sources: ``none`` (always ''), ``file`` (a YAML/JSON mapping concept -> list of descriptors, one drawn
at random), and ``llm`` (any local causal LM through ``transformers``, prompted with the paper's
few-shot prompt, sampled at temperature 0.9; the continuation is cut at the first ``,`` ``.`` ``_`` or
newline, stripped, and resampled when empty or equal to the concept, giving '' after
``max_resamples`` resamples). The cut/resample rules live in pure functions that take a
``generate`` callable, so they can be tested with a scripted stand-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np
import yaml

PROMPT_TEMPLATE = (
    "What are some words that describe the quality of '{concept}'? The {concept} is frail. "
    "The {concept} is red. The {concept} is humongous. The {concept} is tall. The {concept} is"
)
_CUT = re.compile(r"[,._\n]")


@dataclass
class DescriptorConfig:
    """Where descriptors come from; ``model`` is a local folder or a hub name (``kind="llm"``)."""

    kind: Literal["none", "file", "llm"] = "none"
    path: str | None = None
    model: str | None = None
    temperature: float = 0.9
    max_new_tokens: int = 8
    max_resamples: int = 5
    seed: int | None = None
    device: str = "cpu"


class DescriptorSource(Protocol):
    """``rng=None`` uses the source's own generator (seeded by ``DescriptorConfig.seed``)."""

    def descriptor(self, concept_lemma: str, rng: np.random.Generator | None = None) -> str:
        ...

    def descriptors(self, concept_lemmas: Sequence[str],
                    rng: np.random.Generator | None = None) -> list[str]:
        ...


def build_prompt(concept: str) -> str:
    """The paper's few-shot prompt for ``concept``."""
    return PROMPT_TEMPLATE.format(concept=concept)


def query_text(descriptor: str, lemma: str) -> str:
    """``"{descriptor} {lemma}"``, or just the lemma when the descriptor is empty."""
    descriptor = descriptor.strip()
    return f"{descriptor} {lemma}" if descriptor else lemma


def cut_continuation(text: str) -> str:
    """The continuation up to the first ``,`` ``.`` ``_`` or newline, stripped."""
    return _CUT.split(text, maxsplit=1)[0].strip()


def _acceptable(descriptor: str, concept: str) -> bool:
    return bool(descriptor) and descriptor.casefold() != concept.strip().casefold()


def sample_descriptor(concept: str, generate: Callable[[str], str], max_resamples: int = 5) -> str:
    """Ask ``generate(prompt)`` for a continuation, at most ``1 + max_resamples`` times.

    Returns the first cut continuation that is non-empty and not the concept itself (case-
    insensitively), else ''.
    """
    prompt = build_prompt(concept)
    for _ in range(1 + max(0, max_resamples)):
        d = cut_continuation(generate(prompt))
        if _acceptable(d, concept):
            return d
    return ""


def sample_descriptors(concepts: Sequence[str], generate_many: Callable[[list[str]], list[str]],
                       max_resamples: int = 5) -> list[str]:
    """Batched :func:`sample_descriptor`: each round re-asks only for the concepts still lacking one."""
    out = [""] * len(concepts)
    pending = list(range(len(concepts)))
    for _ in range(1 + max(0, max_resamples)):
        if not pending:
            break
        texts = generate_many([build_prompt(concepts[i]) for i in pending])
        if len(texts) != len(pending):
            raise ValueError(f"generate_many returned {len(texts)} texts for {len(pending)} prompts")
        still = []
        for i, t in zip(pending, texts):
            d = cut_continuation(t)
            if _acceptable(d, concepts[i]):
                out[i] = d
            else:
                still.append(i)
        pending = still
    return out


# ---------------------------------------------------------------- sources


class _Seeded:
    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def _rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        return self.rng if rng is None else rng


class NoDescriptors(_Seeded):
    """Plain concept queries."""

    def descriptor(self, concept_lemma: str, rng: np.random.Generator | None = None) -> str:
        return ""

    def descriptors(self, concept_lemmas: Sequence[str],
                    rng: np.random.Generator | None = None) -> list[str]:
        return [""] * len(concept_lemmas)


class FileDescriptors(_Seeded):
    """Descriptors from a YAML/JSON mapping ``concept -> [descriptor, ...]`` (a lone string is one)."""

    def __init__(self, path: str | Path, seed: int | None = None) -> None:
        super().__init__(seed)
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"descriptor file not found: {p}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read descriptor file {p}: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: expected a mapping concept -> list of descriptors, got {type(raw).__name__}")
        table: dict[str, list[str]] = {}
        for k, v in raw.items():
            items = [v] if isinstance(v, str) else v
            if not isinstance(k, str) or not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise ValueError(f"{p}: entry {k!r} must map a concept to a list of strings, got {v!r}")
            cleaned = [x.strip() for x in items if x.strip()]
            table[k.strip()] = cleaned
            table.setdefault(k.strip().casefold(), cleaned)
        self.table = table

    def descriptor(self, concept_lemma: str, rng: np.random.Generator | None = None) -> str:
        options = self.table.get(concept_lemma) or self.table.get(concept_lemma.casefold()) or []
        return options[int(self._rng(rng).integers(len(options)))] if options else ""

    def descriptors(self, concept_lemmas: Sequence[str],
                    rng: np.random.Generator | None = None) -> list[str]:
        return [self.descriptor(c, rng) for c in concept_lemmas]


class LLMDescriptors(_Seeded):
    """Descriptors sampled from a causal LM (``transformers``), seeded from the caller's rng."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 0.9, max_new_tokens: int = 8,
                 max_resamples: int = 5, device: str = "cpu", seed: int | None = None) -> None:
        super().__init__(seed)
        if temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batches continue from the right edge
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_resamples = max_resamples
        self.device = device

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kw: Any) -> "LLMDescriptors":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(name_or_path),
                   AutoTokenizer.from_pretrained(name_or_path), **kw)

    def generate_many(self, prompts: list[str]) -> list[str]:
        """Sampled continuations (new text only) of ``prompts``, using torch's current RNG."""
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **enc, do_sample=True, temperature=self.temperature,
                max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def descriptors(self, concept_lemmas: Sequence[str],
                    rng: np.random.Generator | None = None) -> list[str]:
        import torch

        seed = int(self._rng(rng).integers(2**63 - 1))
        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):  # leave the caller's torch RNG untouched
            torch.manual_seed(seed)
            return sample_descriptors(list(concept_lemmas), self.generate_many, self.max_resamples)

    def descriptor(self, concept_lemma: str, rng: np.random.Generator | None = None) -> str:
        return self.descriptors([concept_lemma], rng)[0]


def make_descriptor_source(cfg: DescriptorConfig) -> DescriptorSource:
    """The descriptor source ``cfg`` describes."""
    if cfg.kind == "none":
        return NoDescriptors(cfg.seed)
    if cfg.kind == "file":
        if not cfg.path:
            raise ValueError("descriptors.kind=file needs descriptors.path")
        return FileDescriptors(cfg.path, seed=cfg.seed)
    if cfg.kind == "llm":
        if not cfg.model:
            raise ValueError("descriptors.kind=llm needs descriptors.model (a local folder or hub name)")
        return LLMDescriptors.from_pretrained(
            cfg.model, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            max_resamples=cfg.max_resamples, device=cfg.device, seed=cfg.seed)
    raise ValueError(f"unknown descriptor kind {cfg.kind!r}; expected none, file or llm")
