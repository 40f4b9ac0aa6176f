#!/usr/bin/env python
"""Build the embedded world's vocabulary (``ie_env/data/embedded_vocab.tsv``) from WordNet 3.0.

Each theme is the hyponym subtree of one or more concrete synsets (birds, trees, hand tools, ...).
Within a theme, candidate senses are ranked by how familiar the lemma is (tagged-corpus counts,
polysemy across parts of speech, primary sense, single word, shallow depth) and the best
``--per-theme`` are kept, one lemma per synset and each lemma string used once in the whole file.
The output is deterministic for a given WordNet install. With ``--embed`` the script also writes
the shipped MiniLM embeddings (``embedded_vocab.minilm.npy`` + ``.json`` sidecar).

    python scripts/build_embedded_vocab.py [--wordnet DIR] [--out PATH] [--embed]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ie_env.config import atomic_write_text  # noqa: E402
from ie_env.vocab.wordnet import NounSynset, WordNetNouns, find_wordnet_root, read_wordnet_nouns  # noqa: E402


@dataclass(frozen=True)
class Theme:
    label: str
    roots: tuple[str, ...]
    exclude: tuple[str, ...] = ()


# Order matters: a synset or lemma goes to the first theme that claims it, so narrow themes come
# before the broad ones that contain them (dog and cat before mammal, snake before reptile).
THEMES: tuple[Theme, ...] = (
    Theme("dog", ("dog.n.01",)),
    Theme("cat", ("feline.n.01",)),
    Theme("hoofed mammal", ("ungulate.n.01",)),
    Theme("mammal", ("mammal.n.01",)),
    Theme("bird", ("bird.n.01",)),
    Theme("fish", ("fish.n.01",)),
    Theme("snake", ("snake.n.01",)),
    Theme("reptile", ("reptile.n.01",)),
    Theme("amphibian", ("amphibian.n.03",)),
    Theme("insect", ("insect.n.01",)),
    Theme("crustacean", ("crustacean.n.01", "arachnid.n.01")),
    Theme("mollusc", ("mollusk.n.01",)),
    Theme("tree", ("tree.n.01",)),
    Theme("flower", ("flower.n.01",)),
    Theme("shrub", ("shrub.n.01",)),
    Theme("fungus", ("fungus.n.01",)),
    Theme("fruit", ("edible_fruit.n.01", "edible_nut.n.01")),
    Theme("vegetable", ("vegetable.n.01",)),
    Theme("baked goods", ("baked_goods.n.01",)),
    Theme("meat", ("meat.n.01",)),
    Theme("dish", ("dish.n.02",)),
    Theme("beverage", ("beverage.n.01",)),
    Theme("car", ("motor_vehicle.n.01",)),
    Theme("wheeled vehicle", ("wheeled_vehicle.n.01",)),
    Theme("aircraft", ("aircraft.n.01",)),
    Theme("boat", ("vessel.n.02",)),
    Theme("musical instrument", ("musical_instrument.n.01",)),
    Theme("hand tool", ("hand_tool.n.01",)),
    Theme("kitchen utensil", ("kitchen_utensil.n.01", "cutlery.n.02")),
    Theme("home appliance", ("home_appliance.n.01",)),
    Theme("measuring instrument", ("measuring_instrument.n.01", "optical_instrument.n.01")),
    Theme("weapon", ("weapon.n.01",)),
    Theme("furniture", ("furniture.n.01",)),
    Theme("building", ("building.n.01",)),
    Theme("footwear", ("footwear.n.02", "footwear.n.01")),
    Theme("headdress", ("headdress.n.01",)),
    Theme("clothing", ("garment.n.01",)),
    Theme("jewelry", ("jewelry.n.01",)),
    Theme("toy", ("plaything.n.01",)),
    Theme("sports equipment", ("sports_equipment.n.01", "game_equipment.n.01")),
    Theme("container", ("container.n.01",)),
    Theme("fabric", ("fabric.n.01",)),
    Theme("mineral", ("mineral.n.01", "gem.n.02")),
    Theme("rock", ("rock.n.02",)),
)

CONCRETE_LEXNAMES = frozenset({
    "noun.animal", "noun.plant", "noun.artifact", "noun.food", "noun.substance", "noun.object",
})
# Senses that are real but unsuitable as query terms (slurs, vulgar double meanings).
BLOCKLIST = frozenset({
    "bitch", "ass", "jackass", "cock", "pussy", "tit", "booby", "shag", "dick", "pecker", "boner",
    "faggot", "fagot", "nigger", "coon", "spic", "jap", "wetback", "chink", "gook", "dyke",
    "kaffir", "golliwog", "bugger", "slut", "whore", "hussy", "trollop", "hooker", "brothel",
    "cooter", "dildo", "vibrator", "condom", "swastika", "heroin", "cocaine", "dope", "smack",
    "crap", "johnny",
})
_LEMMA_OK = re.compile(r"^[a-z][a-z-]*( [a-z][a-z-]*)?$")


def _polysemy(root: Path) -> dict[str, int]:
    """Number of senses of each lemma over all parts of speech (a familiarity signal)."""
    counts: dict[str, int] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        f = root / f"index.{pos}"
        if not f.is_file():
            continue
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line and not line.startswith(" "):
                parts = line.split()
                counts[parts[0]] = counts.get(parts[0], 0) + int(parts[2])
    return counts


def _depths(wn: WordNetNouns, root: str) -> dict[int, int]:
    """Shortest hyponym distance of each synset below ``root``."""
    start = wn.synset(root).offset
    depth = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for off in frontier:
            for kid in wn.synsets[off].hyponyms:
                if kid not in depth:
                    depth[kid] = depth[off] + 1
                    nxt.append(kid)
        frontier = nxt
    return depth


def _score(wn: WordNetNouns, poly: dict[str, int], s: NounSynset, i: int, depth: int) -> float:
    key = s.lemmas[i].lower()
    senses = wn.lemma_senses.get(key, ())
    lemma_count = sum(wn.count(wn.synsets[o], [x.lower() for x in wn.synsets[o].lemmas].index(key))
                      for o in senses)
    own = wn.count(s, i)
    primary = bool(senses) and senses[0] == s.offset
    # a rare concrete side sense of a word mostly used for something else ("bishop", "java")
    side_sense = (not primary and own == 0 and bool(senses)
                  and wn.synsets[senses[0]].lexname not in CONCRETE_LEXNAMES)
    return (2.0 * math.log1p(own) + math.log1p(lemma_count)
            + 0.5 * math.log1p(max(poly.get(key, 1) - 1, 0))
            + (1.0 if "_" not in key else 0.0)
            + (0.8 if primary else 0.0)
            - (1.2 if side_sense else 0.0)
            + (0.5 if i == 0 else 0.0)
            - 0.25 * depth)


MIN_THEME_SIZE = 30


def build_rows(wn: WordNetNouns, poly: dict[str, int], per_theme: int) -> list[tuple[str, ...]]:
    """One row (name, lemma, hypernym, gloss, theme) per chosen sense, sorted by theme then lemma."""
    used_lemmas: set[str] = set()
    used_synsets: set[int] = set()
    rows: list[tuple[str, ...]] = []
    for theme in THEMES:
        cands: list[tuple[float, str, NounSynset, str]] = []
        seen: set[int] = set()
        for root in theme.roots:
            depth = _depths(wn, root)
            for s in wn.descendants(root):
                if s.offset in seen or s.offset in used_synsets or s.lexname not in CONCRETE_LEXNAMES:
                    continue
                seen.add(s.offset)
                best: tuple[float, str] | None = None
                for i, raw in enumerate(s.lemmas):
                    lemma = raw.replace("_", " ")
                    if (not _LEMMA_OK.match(lemma) or lemma in used_lemmas
                            or any(w in BLOCKLIST for w in lemma.split())):
                        continue
                    # Only a word's primary noun sense: a search for "pen" returns pens, not swans.
                    senses = wn.lemma_senses.get(raw.lower(), ())
                    if senses and senses[0] != s.offset:
                        continue
                    sc = _score(wn, poly, s, i, depth.get(s.offset, 9))
                    if best is None or sc > best[0]:
                        best = (sc, lemma)
                if best is not None:
                    cands.append((best[0], best[1], s, theme.label))
        cands.sort(key=lambda c: (-c[0], c[1], c[2].name))
        taken = 0
        for _, lemma, s, label in cands:
            if taken >= per_theme:
                break
            if lemma in used_lemmas or s.offset in used_synsets:
                continue
            used_lemmas.add(lemma)
            used_synsets.add(s.offset)
            hyper = wn.hypernym_lemma(s)
            rows.append((s.name, lemma, hyper, s.definition, label))
            taken += 1
    for r in rows:
        for v in r:
            if "\t" in v or "\n" in v:
                raise ValueError(f"field with a tab or newline: {r}")
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r[4]] = sizes.get(r[4], 0) + 1
    rows = [r for r in rows if sizes[r[4]] >= MIN_THEME_SIZE]  # too small to draw targets from
    rows.sort(key=lambda r: (r[4], r[1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", default=None, help="WordNet folder (default: auto-detect)")
    ap.add_argument("--out", default=str(REPO / "ie_env" / "data" / "embedded_vocab.tsv"))
    ap.add_argument("--per-theme", type=int, default=60)
    ap.add_argument("--embed", action="store_true", help="also write the shipped MiniLM embeddings")
    args = ap.parse_args(argv)
    root = find_wordnet_root(args.wordnet)
    wn = read_wordnet_nouns(root)
    rows = build_rows(wn, _polysemy(root), args.per_theme)
    text = "name\tlemma\thypernym\tgloss\ttheme\n" + "".join("\t".join(r) + "\n" for r in rows)
    atomic_write_text(args.out, text)
    by_theme: dict[str, int] = {}
    for r in rows:
        by_theme[r[4]] = by_theme.get(r[4], 0) + 1
    print(f"wrote {len(rows)} concepts in {len(by_theme)} themes to {args.out}")
    print(", ".join(f"{k}={v}" for k, v in sorted(by_theme.items())))
    if args.embed:
        from ie_env.vocab.embedded import load_embedded_vocabulary
        from ie_env.vocab.text_embed import write_shipped_embeddings

        path = write_shipped_embeddings(load_embedded_vocabulary(args.out))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
