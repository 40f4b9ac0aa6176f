"""Descriptors: the paper's prompt, cut/resample rules (scripted generator), file source, LLM wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ie_env.config import from_dict
from ie_env.vocab import descriptors as d


class Scripted:
    """Returns the given continuations in order and records the prompts it saw."""

    def __init__(self, *continuations: str) -> None:
        self.left = list(continuations)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.left.pop(0)

    def many(self, prompts: list[str]) -> list[str]:
        return [self(p) for p in prompts]


def test_prompt_is_the_papers():
    assert d.build_prompt("robin") == (
        "What are some words that describe the quality of 'robin'? The robin is frail. "
        "The robin is red. The robin is humongous. The robin is tall. The robin is")


@pytest.mark.parametrize("raw,cut", [
    (" red", "red"),
    (" small, and brown", "small"),
    (" very fluffy. The dog", "very fluffy"),
    (" spotted_dog", "spotted"),
    (" wet\nThe robin is", "wet"),
    ("  \t", ""),
    (", red", ""),
    (" big-eared;", "big-eared;"),  # only , . _ and newline cut
])
def test_cut_continuation(raw, cut):
    assert d.cut_continuation(raw) == cut


def test_first_good_continuation_is_kept():
    g = Scripted(" brown, and", " never used")
    assert d.sample_descriptor("robin", g) == "brown"
    assert g.prompts == [d.build_prompt("robin")]


def test_empty_or_concept_is_resampled():
    g = Scripted(" ", ".", " Robin.", " robin", "_x", " plump.")
    assert d.sample_descriptor("robin", g, max_resamples=5) == "plump"
    assert len(g.prompts) == 6


def test_gives_up_after_max_resamples():
    g = Scripted(*([" robin"] * 10))
    assert d.sample_descriptor("robin", g, max_resamples=3) == ""
    assert len(g.prompts) == 4  # one try + three resamples
    g0 = Scripted("", " late")
    assert d.sample_descriptor("robin", g0, max_resamples=0) == ""
    assert len(g0.prompts) == 1


def test_batched_resampling_only_repeats_failures():
    g = Scripted(" red", "", " dog",  # round 1: robin ok, hammer empty, dog == concept
                 " heavy", "",  # round 2: hammer ok, dog empty
                 " loyal")  # round 3: dog ok
    out = d.sample_descriptors(["robin", "hammer", "dog"], g.many, max_resamples=5)
    assert out == ["red", "heavy", "loyal"]
    assert g.prompts == [d.build_prompt(c) for c in ("robin", "hammer", "dog", "hammer", "dog", "dog")]
    g2 = Scripted("", "", "", "")
    assert d.sample_descriptors(["a", "b"], g2.many, max_resamples=1) == ["", ""]
    with pytest.raises(ValueError):
        d.sample_descriptors(["a", "b"], lambda ps: ["x"], max_resamples=0)


def test_query_text():
    assert d.query_text("red", "robin") == "red robin"
    assert d.query_text("", "robin") == "robin"
    assert d.query_text("  ", "sea bass") == "sea bass"


def test_none_source():
    src = d.make_descriptor_source(d.DescriptorConfig())
    assert src.descriptor("robin", np.random.default_rng(0)) == ""
    assert src.descriptors(["a", "b"]) == ["", ""]


def test_file_source(tmp_path):
    p = tmp_path / "desc.yaml"
    p.write_text("robin: [red, plump, ' ']\nDog: loyal\nhammer: []\n")
    src = d.make_descriptor_source(d.DescriptorConfig(kind="file", path=str(p), seed=0))
    rng = np.random.default_rng(1)
    draws = [src.descriptor("robin", rng) for _ in range(200)]
    assert set(draws) == {"red", "plump"}  # blank entries dropped, both kept ones drawn
    assert src.descriptor("Dog") == "loyal" and src.descriptor("dog") == "loyal"
    assert src.descriptor("hammer") == "" and src.descriptor("unknown") == ""
    a = [src.descriptor("robin", np.random.default_rng(7)) for _ in range(3)]
    b = [src.descriptor("robin", np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    j = tmp_path / "desc.json"
    j.write_text(json.dumps({"robin": ["red"]}))
    assert d.FileDescriptors(j).descriptor("robin") == "red"


@pytest.mark.parametrize("text,match", [
    ("- a\n- b\n", "expected a mapping"),
    ("robin: {x: 1}\n", "list of strings"),
    ("robin: [1, 2]\n", "list of strings"),
    ("robin: [unclosed\n", "cannot read"),
])
def test_file_source_errors(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        d.FileDescriptors(p)
    with pytest.raises(ValueError, match="not found"):
        d.FileDescriptors(tmp_path / "missing.yaml")


def test_config_validation():
    cfg = from_dict(d.DescriptorConfig, {"kind": "llm", "model": "x", "temperature": 0.7})
    assert cfg.temperature == 0.7 and cfg.max_new_tokens == 8 and cfg.max_resamples == 5
    with pytest.raises(ValueError):
        d.make_descriptor_source(d.DescriptorConfig(kind="file"))
    with pytest.raises(ValueError):
        d.make_descriptor_source(d.DescriptorConfig(kind="llm"))
    with pytest.raises(ValueError):
        d.make_descriptor_source(d.DescriptorConfig(kind="web"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- transformers wiring (tiny model)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 with a byte-level tokenizer built offline, saved to disk."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=1,
                                  n_head=2, bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1)
    model = transformers.GPT2LMHeadModel(cfg)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def test_llm_source_wiring(tiny_lm_dir):
    import torch

    cfg = d.DescriptorConfig(kind="llm", model=str(tiny_lm_dir), max_new_tokens=6, seed=3)
    src = d.make_descriptor_source(cfg)
    assert isinstance(src, d.LLMDescriptors)
    # the continuation is new text only, at most max_new_tokens byte tokens long
    raw = src.generate_many([d.build_prompt("dog"), d.build_prompt("sea bass")])
    assert len(raw) == 2 and all(isinstance(t, str) and len(t.encode()) <= 6 * 4 for t in raw)
    before = torch.random.get_rng_state()
    out = src.descriptors(["dog", "hammer", "robin"], np.random.default_rng(11))
    assert torch.equal(before, torch.random.get_rng_state())  # caller's torch RNG untouched
    assert len(out) == 3 and any(out)  # this seed yields real (random-model) descriptors
    for concept, desc in zip(["dog", "hammer", "robin"], out):
        assert desc == desc.strip() and not any(c in desc for c in ",._\n")
        assert desc.casefold() != concept
    # seeded from the caller's rng: same seed, same descriptors; the own rng serves rng=None
    again = src.descriptors(["dog", "hammer", "robin"], np.random.default_rng(11))
    assert again == out
    assert isinstance(src.descriptor("dog"), str)


def test_llm_source_uses_the_cut_rules(tiny_lm_dir, monkeypatch):
    src = d.make_descriptor_source(d.DescriptorConfig(kind="llm", model=str(tiny_lm_dir), max_resamples=2))
    script = iter([[" dog, x"], [" spotty. y"]])
    monkeypatch.setattr(src, "generate_many", lambda prompts: next(script))
    assert src.descriptor("dog", np.random.default_rng(0)) == "spotty"
