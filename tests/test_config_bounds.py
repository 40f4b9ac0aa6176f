"""Every size in the config has documented limits, checked at load (issue F4 and F5's ``threads=-1``)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import pytest

from ie_env.bounds import BOUNDS, DERIVED, EXEMPT, class_key
from ie_env.config import ConfigError, apply_overrides, from_dict
from ie_experiments import run
from ie_experiments.config_doc import DOC, is_size_type, render, roots, walk


class _NoRun:
    """Stands in for ``Runner``: reaching it means a refused config got through to a run."""

    def __init__(self, *a, **k) -> None:
        raise AssertionError("the run started with a config that should have been refused")


def _cli(monkeypatch, tmp_path, *overrides: str) -> tuple[int, Path]:
    monkeypatch.setattr(run, "Runner", _NoRun)
    logdir = tmp_path / "run"
    argv = ["--agent", "random", "--logdir", str(logdir), "--no-progress"]
    for o in overrides:
        argv += ["--set", o]
    return run.main(argv), logdir


def test_huge_images_per_query_is_refused_before_anything_is_made(monkeypatch, tmp_path, capsys):
    code, logdir = _cli(monkeypatch, tmp_path, "env.images_per_query=100000000")
    err = capsys.readouterr().err
    assert code == 2
    assert "env.images_per_query=100000000" in err and "maximum 10_000" in err
    assert not logdir.exists()


@pytest.mark.parametrize("value", ["-1", "100000"])
def test_threads_out_of_range_is_a_clear_error(monkeypatch, tmp_path, capsys, value):
    code, logdir = _cli(monkeypatch, tmp_path, f"threads={value}")
    err = capsys.readouterr().err
    assert code == 2 and f"threads={value}" in err and "0..1024" in err
    assert "Traceback" not in err and not logdir.exists()


def test_memory_error_is_a_clear_error_exit_2(monkeypatch, tmp_path, capsys):
    class _Oom:
        def __init__(self, *a, **k) -> None:
            raise MemoryError()

    monkeypatch.setattr(run, "Runner", _Oom)
    code = run.main(["--agent", "random", "--logdir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and "docs/config.md" in err


def test_derived_product_is_refused():
    with pytest.raises(ConfigError, match="iteration_image_bytes") as exc:
        apply_overrides(run.RunConfig(), ["env.images_per_query=10000", "env.queries_per_iteration=10000",
                                          "env.world.image_size=256"])
    assert "env.iteration_image_bytes" in str(exc.value)


def _nested(key: str, value: object) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _cases():
    for prefix, root in roots():
        for key, cls, name, tp in walk(root, prefix):
            b = BOUNDS.get(class_key(cls), {}).get(name)
            if b is not None:
                yield pytest.param(root, prefix, key[len(prefix):], name, cls, tp, b, id=key)


@pytest.mark.parametrize("root,head,rel,name,cls,tp,b", list(_cases()))
def test_every_bounded_key_refuses_a_value_above_its_maximum(root, head, rel, name, cls, tp, b):
    over = int(b.hi) + 1 if float(b.hi).is_integer() and b.hi < 2 ** 50 else b.hi * 2
    value: object = over
    if typing.get_origin(tp) in (list, tuple) or any(typing.get_origin(a) in (list, tuple)
                                                      for a in typing.get_args(tp)):
        default = list(getattr(cls(), name))
        value = default[:-1] + [over]
    prefix = "" if not head else "x."
    with pytest.raises(ConfigError) as exc:
        from_dict(root, _nested(rel, value), prefix=prefix)
    msg = str(exc.value)
    assert f"{prefix}{rel}" in msg and (repr(over) in msg or repr(float(over)) in msg) and "maximum" in msg


def test_every_size_field_has_bounds_and_every_bound_names_a_field():
    classes: dict[str, type] = {}
    missing = []
    for prefix, root in roots():
        for key, cls, name, tp in walk(root, prefix):
            other = classes.setdefault(class_key(cls), cls)
            assert other is cls, f"two config classes named {class_key(cls)}: bounds are keyed by name"
            if is_size_type(tp) and name not in EXEMPT and name not in BOUNDS.get(class_key(cls), {}):
                missing.append(key)
    assert not missing, f"size fields without documented limits: {missing}"
    for cname, fields in BOUNDS.items():
        assert cname in classes, f"BOUNDS names {cname}, which no config holds"
        names = {f.name for f in dataclasses.fields(classes[cname])}
        assert set(fields) <= names, f"BOUNDS[{cname}] names unknown fields {set(fields) - names}"
        default = classes[cname]()
        for fname, b in fields.items():
            v = getattr(default, fname)
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                assert item is None or b.lo <= item <= b.hi, f"{cname}.{fname} default {item} outside its limits"
    assert set(DERIVED) <= set(classes)


def test_defaults_and_paper_settings_load():
    paper = ["env.images_per_query=100", "env.queries_per_iteration=256", "env.world.image_size=224",
             "env.ssl.image_size=224", "env.ssl.batch_size=224", "env.ssl.hidden_dim=4096"]
    cfg = apply_overrides(run.RunConfig(), paper)
    assert cfg.env.queries_per_iteration == 256
    assert copy.deepcopy(cfg) == cfg


def test_docs_config_md_matches_the_code():
    assert DOC.is_file(), "docs/config.md is missing: run python -m ie_experiments.config_doc"
    assert DOC.read_text() == render(), "docs/config.md is out of date: run python -m ie_experiments.config_doc"
