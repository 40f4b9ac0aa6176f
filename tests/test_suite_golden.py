"""Golden values of the task suite: a change that moves a pinned id's world or random-policy score fails.

Tolerances (``ie_env.suite.TOLERANCE``): world float digests 1e-4 absolute (only consulted when the
bit-exact world hash differs, e.g. on another BLAS), random-policy gap closed 1e-3 absolute, its
return 1e-3 relative. Resolved config values must be equal (new keys are allowed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import ie_env  # noqa: F401  (registers the ids)
from ie_env import suite
from ie_env.learner.ssl import SSLConfig
from ie_env.worlds import embedded, shared

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "suite.json").read_text())


@pytest.fixture
def fresh_world_caches():
    """Planted changes must not leak into (or come from) the per-process world caches."""
    shared.clear()
    embedded._LATENT_MAPS.clear()
    yield
    shared.clear()
    embedded._LATENT_MAPS.clear()


def _patch_dataclass_default(monkeypatch, cls, name, value):
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    defaults = list(cls.__init__.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def test_golden_values_match_every_registered_task():
    assert set(GOLDEN["tasks"]) == set(suite.TASKS), "regenerate: python scripts/make_suite_golden.py"
    assert suite.check_golden(GOLDEN) == {}
    for tid, rec in GOLDEN["tasks"].items():
        assert rec["version"] == suite.TASKS[tid].version
        assert abs(rec["random_gap_closed"]) < 0.02  # the random policy sits at 0 by construction


def test_planted_change_of_a_pinned_world_value_fails(monkeypatch, fresh_world_caches):
    tid = "IELatent-Standard-v1"
    monkeypatch.setitem(suite.TASKS[tid].config["world"], "alignment", 0.75)
    problems = suite.check_golden(GOLDEN, [tid])
    text = " ".join(problems[tid])
    assert "config world.alignment: 0.95 -> 0.75" in text
    assert "world hash" in text and "random-policy" in text and "bump the version" in text


def test_planted_change_of_world_generation_code_fails(monkeypatch, fresh_world_caches):
    tid = "IELatent-Easy-v1"
    original = embedded._text_to_latent_map
    monkeypatch.setattr(embedded, "_text_to_latent_map", lambda e, d, s: original(e, d, s) * 1.05)
    problems = suite.check_golden(GOLDEN, [tid])
    assert any(p.startswith("world hash") for p in problems[tid])
    assert not any(p.startswith("config") for p in problems[tid])  # the config did not change: the arrays did


def test_planted_change_of_an_unpinned_default_fails(monkeypatch, fresh_world_caches):
    _patch_dataclass_default(monkeypatch, SSLConfig, "temperature", 0.5)
    assert SSLConfig().temperature == 0.5
    problems = suite.check_golden(GOLDEN, ["IEPixels-Standard-v1"])
    assert any("config ssl.temperature: 0.2 -> 0.5" in p for p in problems["IEPixels-Standard-v1"])


def test_changelog_has_a_line_for_every_registered_task():
    log = (ROOT / "CHANGELOG.md").read_text()
    missing = [tid for tid in suite.TASKS if f"- {tid}:" not in log]
    assert not missing, f"add a CHANGELOG.md line for {missing}"


def test_unknown_suite_and_task_errors_list_the_registered_ones():
    with pytest.raises(ValueError, match="registered suites: latent .*IELatent-Standard-v1"):
        suite.suite_tasks("nope")
    with pytest.raises(ValueError, match="registered tasks: IELatent-Easy-v1"):
        suite.get_task("IELatent-Standard-v9")
    assert suite.suite_tasks("latent") == ["IELatent-Easy-v1", "IELatent-Standard-v1", "IELatent-Hard-v1"]


def test_suite_ids_pin_disjoint_train_and_heldout_themes():
    from ie_env.target_sampling import TargetSampler
    from ie_env.worlds.embedded import load_vocabulary

    for tid in suite.TASKS:
        cfg = suite.task_config(tid)
        sampler = TargetSampler(load_vocabulary(cfg.world.vocabulary), cfg.world.num_targets, cfg.targets)
        assert not set(sampler.split_concepts("train")) & set(sampler.split_concepts("heldout"))
        ev = suite.eval_config(tid)
        assert ev.targets.mode == "heldout" and cfg.targets.mode == "train"
        assert all(set(t) <= set(sampler.split_concepts("heldout").tolist()) for t in GOLDEN["tasks"][tid]["heldout_targets"])
