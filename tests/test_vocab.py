"""Vocabularies: the shipped embedded-world TSV, its builder, the TSV reader, and the WordNet loader."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from collections import Counter
from pathlib import Path

import pytest

from ie_env.vocab import wordnet as wnmod
from ie_env.vocab.embedded import (
    COLUMNS,
    VocabularyFileError,
    default_path,
    load_embedded_vocabulary,
    read_vocabulary_tsv,
)

REPO = Path(__file__).resolve().parents[1]


def _wordnet_root() -> Path | None:
    try:
        return wnmod.find_wordnet_root()
    except wnmod.WordNetNotFoundError:
        return None


needs_wordnet = pytest.mark.skipif(_wordnet_root() is None, reason="WordNet 3.0 not installed")


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Keep the WordNet parse cache out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IE_ENV_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield

# ---------------------------------------------------------------- embedded vocabulary


def test_embedded_vocabulary_shape():
    v = load_embedded_vocabulary()
    assert v.name == "embedded"
    assert len(v) >= 2000
    assert len(set(v.lemmas)) == len(v)  # one sense per lemma string
    per_theme = Counter(c.theme for c in v.concepts)
    assert 35 <= len(per_theme) <= 50
    assert min(per_theme.values()) >= 30 and max(per_theme.values()) <= 100, per_theme
    assert all(c.theme and c.gloss and c.lemma and c.hypernym for c in v.concepts)
    keys = [(c.theme, c.lemma) for c in v.concepts]
    assert keys == sorted(keys)


def test_embedded_concept_text_format():
    v = load_embedded_vocabulary()
    dog = v[v.index("dog.n.01")]
    assert (dog.lemma, dog.hypernym, dog.theme) == ("dog", "canine", "dog")
    assert dog.text == (
        "dog (canine): a member of the genus Canis (probably descended from the common wolf) that "
        "has been domesticated by man since prehistoric times; occurs in many breeds")
    # multi-word lemmas and hypernyms use spaces, not underscores
    assert not any("_" in c.lemma or "_" in c.hypernym for c in v.concepts)


def test_embedded_themes_are_concrete_groups():
    v = load_embedded_vocabulary()
    by_theme = {t: {c.lemma for c in v.concepts if c.theme == t} for t in v.themes}
    assert {"beagle", "poodle"} <= by_theme["dog"]
    assert {"pliers", "screwdriver"} <= by_theme["hand tool"]
    assert {"cabbage", "potato"} <= by_theme["vegetable"]
    for bad in ("bitch", "nigger", "dope"):
        assert bad not in set(v.lemmas)


@needs_wordnet
def test_builder_reproduces_shipped_file(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bev", REPO / "scripts" / "build_embedded_vocab.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bev", mod)
    spec.loader.exec_module(mod)
    out = tmp_path / "v.tsv"
    assert mod.main(["--out", str(out)]) == 0
    assert out.read_bytes() == default_path().read_bytes()


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "v.tsv"
    p.write_text(text)
    return p


HEADER = "\t".join(COLUMNS) + "\n"


def test_reader_round_trip_and_errors(tmp_path):
    ok = HEADER + "a.n.01\tapple\tedible fruit\tfruit with red skin\tfruit\n" \
                  "e.n.01\tentity\t\tthat which exists\t\n"
    v = read_vocabulary_tsv(_write(tmp_path, ok))
    assert [c.text for c in v.concepts] == ["apple (edible fruit): fruit with red skin",
                                           "entity: that which exists"]
    cases = {
        "no header": "a.n.01\tapple\tfruit\tgloss\tfruit\n",
        "4 fields": HEADER + "a.n.01\tapple\tfruit\tgloss\n",
        "duplicate": HEADER + "a.n.01\tapple\tf\tg\tt\n" + "a.n.01\tpear\tf\tg\tt\n",
        "empty lemma": HEADER + "a.n.01\t\tf\tg\tt\n",
        "no rows": HEADER,
    }
    for why, text in cases.items():
        with pytest.raises(VocabularyFileError):
            read_vocabulary_tsv(_write(tmp_path, text))
    with pytest.raises(VocabularyFileError, match=r":3: duplicate name 'a.n.01'"):
        read_vocabulary_tsv(_write(tmp_path, cases["duplicate"]))
    with pytest.raises(VocabularyFileError, match="not found"):
        read_vocabulary_tsv(tmp_path / "missing.tsv")


# ---------------------------------------------------------------- WordNet (paper scale)


@needs_wordnet
def test_wordnet_vocabulary_full():
    v = wnmod.load_wordnet_vocabulary()
    assert len(v) >= 100_000
    assert len(v) == wnmod.NOUN_SENSES_WN30  # WordNet 3.0
    assert len({c.lemma.lower() for c in v.concepts}) == wnmod.NOUN_LEMMAS_WN30
    dog = v[v.index("dog.n.01:dog")]
    assert dog.text == (
        "dog (canine): a member of the genus Canis (probably descended from the common wolf) that "
        "has been domesticated by man since prehistoric times; occurs in many breeds")
    assert dog.theme == "noun.animal"
    assert v[v.index("dog.n.01:Canis_familiaris")].text.startswith("Canis familiaris (canine): ")
    root = v[v.index("entity.n.01:entity")]
    assert root.hypernym == "" and root.text.startswith("entity: that which is perceived")
    # an instance synset takes its instance hypernym
    assert v[v.index("einstein.n.01:Einstein")].hypernym == "physicist"


@needs_wordnet
def test_wordnet_filters():
    animals = wnmod.load_wordnet_vocabulary(lexnames=["noun.animal"])
    assert 10_000 < len(animals) < 20_000 and {c.theme for c in animals.concepts} == {"noun.animal"}
    dogs = wnmod.load_wordnet_vocabulary(under=["dog.n.01"])
    names = {c.name for c in dogs.concepts}
    assert "dog.n.01:dog" in names and "poodle.n.01:poodle" in names and "wolf.n.01:wolf" not in names
    with pytest.raises(ValueError, match="no WordNet noun senses match"):
        wnmod.load_wordnet_vocabulary(lexnames=["noun.plant"], under=["dog.n.01"])
    with pytest.raises(ValueError, match="unknown noun lexname"):
        wnmod.load_wordnet_vocabulary(lexnames=["noun.animals"])
    with pytest.raises(ValueError, match="unknown synset"):
        wnmod.load_wordnet_vocabulary(under=["doggo.n.01"])


@needs_wordnet
def test_wordnet_synset_reader():
    wn = wnmod.read_wordnet_nouns()
    s = wn.synset("robin.n.02")
    assert s.definition == "large American thrush having a rust-red breast and abdomen"
    assert wn.hypernym_lemma(s) == "thrush"
    assert wn.count(wn.synset("dog.n.01"), 0) > 0  # tagged-corpus frequencies are read
    with pytest.raises(KeyError, match="no noun synset"):
        wn.synset("nothing.n.99")


def test_wordnet_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(wnmod.WordNetNotFoundError) as e:
        wnmod.load_wordnet_vocabulary(root=tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg
    assert "apt-get install wordnet-base" in msg and "nltk.download('wordnet')" in msg


def test_wordnet_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_ENV_WORDNET", str(tmp_path / "env"))
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk"))
    tried = [str(p) for p in wnmod._candidates(None)]
    assert tried[0] == str(tmp_path / "env")
    assert str(tmp_path / "nltk" / "corpora" / "wordnet") in tried
    assert tried[-1] == "/usr/share/wordnet"


TINY_DATA = (
        "  1 license header line\n"
        "00000001 03 n 01 entity 0 001 ~ 00000002 n 0000 | that which exists\n"
        "00000002 05 n 02 dog 0 Canis_familiaris 0 002 @ 00000001 n 0000 ~i 00000003 n 0000 "
        "| a domestic animal; \"the dog barked\"\n"
        "00000003 05 n 01 Rex 0 001 @i 00000002 n 0000 | a famous dog\n"
)
TINY_INDEX = (
        "  1 license header line\n"
        "canis_familiaris n 1 1 @ 1 0 00000002\n"
        "dog n 1 2 @ ~ 1 0 00000002\n"
        "entity n 1 1 ~ 1 0 00000001\n"
        "rex n 1 1 @ 1 0 00000003\n"
)


def _tiny_install(tmp_path) -> Path:
    folder = tmp_path / "wn"
    folder.mkdir()
    (folder / "data.noun").write_text(TINY_DATA)
    (folder / "index.noun").write_text(TINY_INDEX)
    return folder


def test_wordnet_reader_on_a_tiny_install(tmp_path):
    """The parser on hand-written WNDB lines, including a zip in NLTK's layout."""
    folder = _tiny_install(tmp_path)
    data = TINY_DATA
    v = wnmod.load_wordnet_vocabulary(root=folder)
    assert [c.name for c in v.concepts] == ["entity.n.01:entity", "dog.n.01:dog",
                                           "dog.n.01:Canis_familiaris", "rex.n.01:Rex"]
    assert [c.text for c in v.concepts] == [
        "entity: that which exists", "dog (entity): a domestic animal",
        "Canis familiaris (entity): a domestic animal", "Rex (dog): a famous dog"]
    import zipfile

    z = tmp_path / "nltk" / "corpora" / "wordnet.zip"
    z.parent.mkdir(parents=True)
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(folder / "data.noun", "wordnet/data.noun")
        zf.write(folder / "index.noun", "wordnet/index.noun")
    assert [c.text for c in wnmod.load_wordnet_vocabulary(root=z).concepts] == [c.text for c in v.concepts]
    (folder / "data.noun").write_text(data + "00000004 05 n zz broken\n")
    wnmod._read.cache_clear()
    wnmod._vocabulary.cache_clear()
    with pytest.raises(ValueError, match="malformed data.noun line"):
        wnmod.load_wordnet_vocabulary(root=folder)


class _Planted:
    """Unpickling this creates the file at ``path`` (how a planted pickle would run code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_wordnet_parse_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_ENV_CACHE", str(tmp_path / "cache"))
    folder = _tiny_install(tmp_path)
    first = wnmod.load_wordnet_vocabulary(root=folder)
    files = list((tmp_path / "cache" / "wordnet").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "cache" / "wordnet").glob("*.pkl"))
    wnmod._vocabulary.cache_clear()
    real_read = wnmod._read

    def no_parse(path):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(wnmod, "_read", no_parse)
    assert wnmod.load_wordnet_vocabulary(root=folder).texts == first.texts  # served by the cache
    # A planted pickle whose loading would create a marker file: never unpickled, re-parsed instead.
    marker = tmp_path / "pickle_ran"
    files[0].write_bytes(pickle.dumps(_Planted(str(marker))))
    wnmod._vocabulary.cache_clear()
    monkeypatch.setattr(wnmod, "_read", real_read)
    assert wnmod.load_wordnet_vocabulary(root=folder).texts == first.texts
    assert not marker.exists()
    files[0].write_bytes(b"{\"format\": 2, \"rows\": [")  # corrupt: re-parsed and rewritten
    wnmod._vocabulary.cache_clear()
    assert wnmod.load_wordnet_vocabulary(root=folder).texts == first.texts
    wnmod._vocabulary.cache_clear()
    monkeypatch.setattr(wnmod, "_read", no_parse)
    assert wnmod.load_wordnet_vocabulary(root=folder).texts == first.texts
    # cache=False neither reads nor writes the cache
    monkeypatch.setattr(wnmod, "_read", real_read)
    monkeypatch.setenv("IE_ENV_CACHE", str(tmp_path / "other"))
    wnmod.load_wordnet_vocabulary(root=folder, cache=False)
    assert not (tmp_path / "other").exists()
