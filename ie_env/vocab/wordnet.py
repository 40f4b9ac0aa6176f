"""WordNet 3.0 nouns read straight from the WNDB files, and the paper-scale vocabulary built on them.

The reader parses ``data.noun`` / ``index.noun`` (and ``cntlist.rev`` for sense frequencies) itself,
so it needs no NLTK corpus machinery; it accepts a folder holding those files (Debian's
``wordnet-base`` installs one at ``/usr/share/wordnet``), NLTK's ``corpora/wordnet`` folder, or NLTK's
``corpora/wordnet.zip``. Synset names follow NLTK's convention (``dog.n.01``: first lemma, lower-cased,
and the synset's position among that lemma's senses in ``index.noun``).

A concept of the paper's vocabulary is one (lemma, synset) noun sense: WordNet 3.0 has 146,312 of
them over 117,798 lemma strings. Its text is ``"{lemma} ({hypernym}): {definition}"`` where the
hypernym is the first lemma of the sense's first hypernym (instance hypernym for instance synsets);
a root synset (``entity.n.01``) has no hypernym part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from ie_env.config import atomic_write_text
from ie_env.vocab.base import Concept, Vocabulary

log = logging.getLogger(__name__)

# The 45 lexicographer files of WordNet 3.0, in file-number order (used when no ``lexnames`` file).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)

NOUN_SENSES_WN30 = 146_312
NOUN_LEMMAS_WN30 = 117_798
_REQUIRED = ("data.noun", "index.noun")
_QUOTED = re.compile(r'"[^"]*"')


class WordNetNotFoundError(FileNotFoundError):
    """No WordNet 3.0 data was found in any of the folders tried."""


@dataclass(frozen=True)
class NounSynset:
    """One noun synset as stored in ``data.noun``."""

    offset: int
    name: str  # NLTK-style, e.g. "dog.n.01"
    lemmas: tuple[str, ...]  # as stored: original case, underscores for spaces
    lex_ids: tuple[int, ...]
    lexname: str  # e.g. "noun.animal"
    definition: str
    hypernyms: tuple[int, ...] = ()  # "@" pointers (offsets)
    instance_hypernyms: tuple[int, ...] = ()  # "@i"
    hyponyms: tuple[int, ...] = ()  # "~"
    instance_hyponyms: tuple[int, ...] = ()  # "~i"

    @property
    def first_hypernyms(self) -> tuple[int, ...]:
        """Hypernyms, falling back to instance hypernyms (only a root has neither)."""
        return self.hypernyms or self.instance_hypernyms

    def sense_key(self, i: int) -> str:
        """The WordNet sense key of lemma ``i`` (``dog%1:05:00::``)."""
        lexnum = LEXNAMES.index(self.lexname) if self.lexname in LEXNAMES else 0
        return f"{self.lemmas[i].lower()}%1:{lexnum:02d}:{self.lex_ids[i]:02d}::"


@dataclass
class WordNetNouns:
    """All noun synsets of one WordNet install, with lookups."""

    root: str
    synsets: dict[int, NounSynset]
    by_name: dict[str, int]
    sense_counts: dict[str, int] = field(default_factory=dict)  # sense key -> tagged count
    lemma_senses: dict[str, tuple[int, ...]] = field(default_factory=dict)  # lemma -> offsets

    def synset(self, name: str) -> NounSynset:
        try:
            return self.synsets[self.by_name[name]]
        except KeyError:
            raise KeyError(f"no noun synset named {name!r} in WordNet at {self.root}") from None

    def hypernym_lemma(self, s: NounSynset) -> str:
        """First lemma of the first hypernym, spaces for underscores ('' for a root)."""
        hyp = s.first_hypernyms
        return self.synsets[hyp[0]].lemmas[0].replace("_", " ") if hyp else ""

    def count(self, s: NounSynset, i: int) -> int:
        """Tagged-corpus frequency of lemma ``i`` of ``s`` (0 when untagged)."""
        return self.sense_counts.get(s.sense_key(i), 0)

    def descendants(self, name: str, instances: bool = False) -> list[NounSynset]:
        """The hyponym closure of ``name`` (itself included), depth-first in offset order."""
        start = self.by_name[name] if name in self.by_name else self.synset(name).offset
        seen: set[int] = set()
        out: list[NounSynset] = []
        stack = [start]
        while stack:
            off = stack.pop()
            if off in seen:
                continue
            seen.add(off)
            s = self.synsets[off]
            out.append(s)
            kids = list(s.hyponyms) + (list(s.instance_hyponyms) if instances else [])
            stack.extend(sorted(kids, reverse=True))
        return out


# ---------------------------------------------------------------- locating the data


def _nltk_data_dirs() -> list[Path]:
    """NLTK's default data search path, without importing NLTK."""
    dirs: list[Path] = []
    env = os.environ.get("NLTK_DATA")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path.home() / "nltk_data")
    dirs += [Path(sys.prefix) / "nltk_data", Path(sys.prefix) / "share" / "nltk_data",
             Path(sys.prefix) / "lib" / "nltk_data"]
    dirs += [Path(p) for p in ("/usr/share/nltk_data", "/usr/local/share/nltk_data",
                               "/usr/lib/nltk_data", "/usr/local/lib/nltk_data")]
    return dirs


def _candidates(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    out: list[Path] = []
    env = os.environ.get("IE_ENV_WORDNET")
    if env:
        out.append(Path(env))
    for d in _nltk_data_dirs():
        out += [d / "corpora" / "wordnet", d / "corpora" / "wordnet.zip"]
    out.append(Path("/usr/share/wordnet"))
    return out


class _Source:
    """Reads named files from a folder or from a zip (NLTK's ``wordnet.zip``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] = {}
        if path.is_file() and zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            for n in self._zip.namelist():
                self._names.setdefault(n.rsplit("/", 1)[-1], n)

    def has(self, name: str) -> bool:
        if self._zip is not None:
            return name in self._names
        return (self.path / name).is_file()

    def lines(self, name: str) -> Iterator[str]:
        if self._zip is not None:
            data = self._zip.read(self._names[name]).decode("utf-8", errors="replace")
            yield from data.splitlines()
            return
        with open(self.path / name, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")


def find_wordnet_root(root: str | os.PathLike | None = None) -> Path:
    """The first folder (or zip) holding ``data.noun`` and ``index.noun``; clear error if none."""
    tried = _candidates(root)
    for p in tried:
        if p.exists() and all(_Source(p).has(n) for n in _REQUIRED):
            return p
    listing = "\n  ".join(str(p) for p in tried)
    raise WordNetNotFoundError(
        "WordNet 3.0 noun data (data.noun, index.noun) not found; tried:\n  " + listing +
        "\nInstall it with `apt-get install wordnet-base` (files in /usr/share/wordnet) or "
        "`python -c \"import nltk; nltk.download('wordnet')\"`, or point $IE_ENV_WORDNET "
        "at a folder holding data.noun and index.noun."
    )


# ---------------------------------------------------------------- parsing


def _definition(gloss: str) -> str:
    """The gloss without its quoted examples (as NLTK's ``Synset.definition()``)."""
    return _QUOTED.sub("", gloss).strip().strip("; ").strip()


def _parse_data_line(line: str) -> tuple[int, list[str], list[int], int, dict[str, list[int]], str]:
    head, _, gloss = line.partition("|")
    f = head.split()
    offset, lexnum = int(f[0]), int(f[1])
    n_words = int(f[3], 16)
    lemmas = [f[4 + 2 * i] for i in range(n_words)]
    lex_ids = [int(f[5 + 2 * i], 16) for i in range(n_words)]
    k = 4 + 2 * n_words
    n_ptr = int(f[k])
    ptrs: dict[str, list[int]] = {}
    for j in range(n_ptr):
        sym, off, pos = f[k + 1 + 4 * j], f[k + 2 + 4 * j], f[k + 3 + 4 * j]
        if pos == "n":
            ptrs.setdefault(sym, []).append(int(off))
    return offset, lemmas, lex_ids, lexnum, ptrs, _definition(gloss)


@lru_cache(maxsize=4)
def _read(path: str) -> WordNetNouns:
    src = _Source(Path(path))
    lexnames = list(LEXNAMES)
    if src.has("lexnames"):
        names = [ln.split() for ln in src.lines("lexnames") if ln.strip()]
        lexnames = [n[1] for n in sorted(names, key=lambda n: int(n[0]))]
    # index.noun: the sense order of each lemma, which fixes the ".NN" of synset names
    senses: dict[str, list[int]] = {}
    for line in src.lines("index.noun"):
        if not line or line.startswith(" "):
            continue
        f = line.split()
        n_syn, n_ptr = int(f[2]), int(f[3])
        senses[f[0]] = [int(x) for x in f[6 + n_ptr: 6 + n_ptr + n_syn]]
    raw = []
    for line in src.lines("data.noun"):
        if not line or line.startswith(" "):
            continue
        try:
            raw.append(_parse_data_line(line))
        except (IndexError, ValueError) as e:
            raise ValueError(f"malformed data.noun line in {path}: {line[:80]!r} ({e})") from None
    synsets: dict[int, NounSynset] = {}
    by_name: dict[str, int] = {}
    for offset, lemmas, lex_ids, lexnum, ptrs, definition in raw:
        first = lemmas[0].lower()
        try:
            sense_no = senses[first].index(offset) + 1
        except (KeyError, ValueError):
            raise ValueError(f"{path}: synset {offset:08d} ({first}) missing from index.noun") from None
        name = f"{first}.n.{sense_no:02d}"
        s = NounSynset(
            offset=offset, name=name, lemmas=tuple(lemmas), lex_ids=tuple(lex_ids),
            lexname=lexnames[lexnum] if lexnum < len(lexnames) else f"noun.{lexnum}",
            definition=definition, hypernyms=tuple(ptrs.get("@", ())),
            instance_hypernyms=tuple(ptrs.get("@i", ())), hyponyms=tuple(ptrs.get("~", ())),
            instance_hyponyms=tuple(ptrs.get("~i", ())),
        )
        synsets[offset] = s
        by_name[name] = offset
    counts: dict[str, int] = {}
    if src.has("cntlist.rev"):
        for line in src.lines("cntlist.rev"):
            f = line.split()
            if len(f) == 3 and f[0][:1] != "#":
                try:
                    counts[f[0]] = int(f[2])
                except ValueError:
                    continue
    return WordNetNouns(root=path, synsets=synsets, by_name=by_name, sense_counts=counts,
                        lemma_senses={k: tuple(v) for k, v in senses.items()})


def read_wordnet_nouns(root: str | os.PathLike | None = None) -> WordNetNouns:
    """Parse the noun part of WordNet (cached per location for the process)."""
    return _read(str(find_wordnet_root(root).resolve()))


# ---------------------------------------------------------------- the paper-scale vocabulary


def _senses(wn: WordNetNouns, s: NounSynset) -> Iterator[str]:
    """The synset's lemmas, case-insensitively de-duplicated (``A``/``a`` count once)."""
    seen: set[str] = set()
    for lemma in s.lemmas:
        if lemma.lower() not in seen:
            seen.add(lemma.lower())
            yield lemma


_ROWS_FORMAT = 2  # 2: JSON (1 was a pickle, never read again)
Row = tuple[str, str, str, str, str]  # name, lemma, hypernym, gloss, lexname


def _all_rows(wn: WordNetNouns) -> list[Row]:
    rows: list[Row] = []
    for off in sorted(wn.synsets):
        s = wn.synsets[off]
        hyper = wn.hypernym_lemma(s)
        for lemma in _senses(wn, s):
            rows.append((f"{s.name}:{lemma}", lemma.replace("_", " "), hyper, s.definition, s.lexname))
    return rows


def _rows_cache_file(path: str) -> Path | None:
    """Cache file for the parsed rows, keyed by location, size and mtime of the source files."""
    from ie_env.vocab.text_embed import default_cache_dir

    p = Path(path)
    parts = [f"v{_ROWS_FORMAT}", path]
    for f in ([p] if p.is_file() else [p / n for n in _REQUIRED]):
        try:
            st = f.stat()
        except OSError:
            return None
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return default_cache_dir() / "wordnet" / f"nouns-{key}.json"


def _cached_rows(path: str, use_cache: bool) -> list[Row]:
    """All sense rows, from the on-disk cache when valid, else parsed (and cached)."""
    cache = _rows_cache_file(path) if use_cache else None
    if cache is not None and cache.is_file():
        try:
            payload = json.loads(cache.read_bytes())
            if (isinstance(payload, dict) and payload.get("format") == _ROWS_FORMAT
                    and payload.get("root") == path and isinstance(payload.get("rows"), list)
                    and all(isinstance(r, list) and len(r) == 5 and all(isinstance(x, str) for x in r)
                            for r in payload["rows"])):
                return [tuple(r) for r in payload["rows"]]
            log.warning("WordNet cache %s is not a rows cache of this version; re-parsing", cache)
        except (OSError, ValueError) as e:  # a corrupt cache is rebuilt, never fatal
            log.warning("WordNet cache %s is unreadable (%s); re-parsing", cache, e)
    rows = _all_rows(_read(path))
    if cache is not None:
        try:
            atomic_write_text(cache, json.dumps({"format": _ROWS_FORMAT, "root": path, "rows": rows}))
        except OSError as e:
            log.info("could not write WordNet cache %s: %s", cache, e)
    return rows


@lru_cache(maxsize=8)
def _vocabulary(path: str, lexnames: tuple[str, ...] | None, under: tuple[str, ...] | None,
                use_cache: bool = True) -> Vocabulary:
    rows = _cached_rows(path, use_cache)
    if lexnames is not None:
        known = {r[4] for r in rows}
        bad = sorted(set(lexnames) - known)
        if bad:
            raise ValueError(f"unknown noun lexname(s) {bad}; valid: {sorted(known)}")
        keep_lex = set(lexnames)
        rows = [r for r in rows if r[4] in keep_lex]
    if under is not None:
        wn = _read(path)
        keep: set[str] = set()
        for name in under:
            if name not in wn.by_name:
                raise ValueError(f"unknown synset {name!r} in `under` (expected e.g. 'dog.n.01')")
            keep.update(s.name for s in wn.descendants(name, instances=True))
        rows = [r for r in rows if r[0].split(":", 1)[0] in keep]
    if not rows:
        raise ValueError(f"no WordNet noun senses match lexnames={lexnames} under={under}")
    return Vocabulary([Concept(*r) for r in rows], name="wordnet")


def load_wordnet_vocabulary(root: str | os.PathLike | None = None, lexnames: Sequence[str] | None = None,
                            under: Sequence[str] | None = None, cache: bool = True) -> Vocabulary:
    """Every WordNet 3.0 noun sense as a Concept (146,312 unfiltered), in ``data.noun`` order.

    ``name`` is ``"{synset}:{lemma}"`` (``dog.n.01:domestic_dog``), ``theme`` the lexname.
    ``lexnames`` keeps only those lexicographer files (``["noun.animal"]``); ``under`` keeps only the
    hyponym subtrees (instances included) of the named synsets. The root is ``root``, else
    ``$IE_ENV_WORDNET``, else NLTK's data folders, else ``/usr/share/wordnet``. The parsed senses
    are cached (JSON, keyed by file size and mtime) under ``$IE_ENV_CACHE``/``~/.cache/ie_env``
    unless ``cache=False``.
    """
    path = str(find_wordnet_root(root).resolve())
    return _vocabulary(path, tuple(lexnames) if lexnames is not None else None,
                       tuple(under) if under is not None else None, cache)


def build_wordnet_cache(root: str | os.PathLike | None = None, model_name: str | None = None,
                        cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> Path:
    """Embed the full WordNet vocabulary into the embedding cache (minutes on a CPU); return the file."""
    from ie_env.vocab.text_embed import DEFAULT_MODEL, cache_path, concept_embeddings

    model = model_name or DEFAULT_MODEL
    vocab = load_wordnet_vocabulary(root)
    concept_embeddings(vocab, model_name=model, cache_dir=cache_dir, progress=True, device=device)
    return cache_path(vocab, model, cache_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m ie_env.vocab.wordnet [--root DIR] [--cache-dir DIR] [--device cpu]``."""
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Embed every WordNet noun sense into the ie_env cache.")
    ap.add_argument("--root", default=None, help="WordNet folder (default: auto-detect)")
    ap.add_argument("--model", default=None, help="sentence-transformers model (default MiniLM)")
    ap.add_argument("--cache-dir", default=None, help="default $IE_ENV_CACHE or ~/.cache/ie_env")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    t0, c0 = time.time(), time.process_time()
    path = build_wordnet_cache(args.root, args.model, args.cache_dir, args.device)
    n = len(load_wordnet_vocabulary(args.root))
    print(f"embedded {n} WordNet noun senses in {time.time() - t0:.0f} s wall, "
          f"{time.process_time() - c0:.0f} s CPU -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
