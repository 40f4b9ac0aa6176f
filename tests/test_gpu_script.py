"""benchmarks/gpu_knn_ordering.py on the CPU: argument handling, the plan, wheel installs and a tiny run
whose results (with paired differences) land in --out."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_knn_ordering as gko  # noqa: E402 - after the sys.path entry

from tests.conftest import latent_config  # noqa: E402


def _tiny(tmp_path: Path) -> Path:
    cfg = {
        "threads": 1,
        "env": latent_config(queries_per_iteration=3, iterations=2, images_per_query=12),
        "compare": {"agents": ["gp", "random"], "seeds": 3, "target_only": True},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_arguments_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    for argv in (
        [],
        ["--out", str(tmp_path), "--seeds", "0"],
        ["--out", str(tmp_path), "--config", str(tmp_path / "no.yaml")],
    ):
        with pytest.raises(SystemExit) as exc:
            gko.parse_args(argv)
        assert exc.value.code == 2
    monkeypatch.setenv("OUT", str(tmp_path / "from_env"))
    args = gko.parse_args([])
    assert args.out == str(tmp_path / "from_env") and args.seeds == 5 and Path(args.config) == gko.DEFAULT_CONFIG


def test_dry_run_prints_the_plan_at_the_larger_budget(tmp_path, capsys):
    assert gko.main(["--out", str(tmp_path / "o"), "--dry-run", "--no-install", "--allow-cpu"]) == 0
    err = capsys.readouterr().err
    assert "knn_ordering.yaml" in err and "--seeds 5" in err and "(15 runs)" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_to_run_without_cuda_unless_allowed(tmp_path, capsys):
    assert gko.main(["--out", str(tmp_path / "o"), "--no-install", "--dry-run"]) == 3
    assert "CUDA is not available" in capsys.readouterr().err


def _wheel(folder: Path, dist: str) -> Path:
    """A minimal pure-Python wheel of module ``dist`` (what pip needs: METADATA, WHEEL, RECORD)."""
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    info = f"{dist}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{dist}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_missing_modules_are_installed_from_the_carried_wheels_only(tmp_path, monkeypatch):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "ie_gpu_probe_pkg")
    monkeypatch.setattr(gko, "NEEDED", [("json", "json"), ("ie_gpu_probe_pkg", "ie_gpu_probe_pkg")])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    installed = gko.install_missing(wheels, tmp_path / "site")
    assert installed == ["ie_gpu_probe_pkg-0.1-py3-none-any.whl"]  # json is there: not installed
    assert (tmp_path / "site" / "ie_gpu_probe_pkg" / "__init__.py").is_file()
    assert __import__("ie_gpu_probe_pkg").VALUE == 42
    monkeypatch.setattr(gko, "NEEDED", [("ie_gpu_absent_pkg", "ie_gpu_absent_pkg")])
    with pytest.raises(FileNotFoundError, match="no ie_gpu_absent_pkg-\\*.whl"):
        gko.install_missing(wheels, tmp_path / "site")


def test_tiny_run_writes_results_with_paired_differences_to_out(tmp_path):
    out = tmp_path / "out"
    code = gko.main(
        [
            "--out",
            str(out),
            "--config",
            str(_tiny(tmp_path)),
            "--seeds",
            "3",
            "--agents",
            "random",
            "--workers",
            "0",
            "--no-install",
            "--allow-cpu",
            "--work",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["paired"]["comparisons"]
    assert (row["agent"], row["baseline"]) == ("random", "target_only") and row["final_knn_accuracy"]["n"] == 3
    dev = json.loads((out / "device.json").read_text())
    assert dev["exit_status"] == 0 and dev["runs"] == 6 and dev["paired"][0]["linear_probe_accuracy"]["n"] == 3
    assert "within_budget" in dev and "keep_checkpoints=1" in dev["command"]
    assert sorted(p.parent.name for p in (out / "runs").glob("*/seed*/summary.json")) == [
        "seed0",
        "seed0",
        "seed1",
        "seed1",
        "seed2",
        "seed2",
    ]
    assert not list(out.rglob("*.pt")) and (out / "results.md").is_file()
