from dataclasses import dataclass, field

import pytest

from ie_env.config import ConfigError, apply_overrides, from_dict, load_yaml, parse_overrides, resolve, to_dict


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3
    tags: list[str] = field(default_factory=list)


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, {"inner": {"lrr": 1}})
    msg = str(exc.value)
    assert "inner.lrr" in msg and "lr" in msg and "name" in msg


def test_overrides_parse_yaml_values_and_nest():
    cfg = apply_overrides(Outer(), ["inner.lr=0.5", "steps=7", "tags=[x, y]"])
    assert cfg.inner.lr == 0.5 and cfg.steps == 7 and cfg.tags == ["x", "y"]
    assert cfg.inner.name == "a"  # untouched keys keep their defaults


def test_type_errors_are_clear():
    with pytest.raises(ConfigError, match="steps"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_resolve_default_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  lr: 0.2\nsteps: 5\n")
    cfg = resolve(Outer, f, ["steps=9"])
    assert (cfg.inner.lr, cfg.steps) == (0.2, 9)
    assert to_dict(cfg)["inner"]["lr"] == 0.2


def test_malformed_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(f)
