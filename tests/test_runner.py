"""ie-explore: the run directory, bad input, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ie_experiments.run import Checkpoints, RunDirError, main, read_checkpoint, weights_sha256
from tests.conftest import latent_config, pixel_config

ROOT = Path(__file__).resolve().parents[1]


def _write_cfg(tmp_path: Path, env: dict, **top) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"env": env, "threads": 1, **top}))
    return path


def test_latent_run_writes_the_run_directory(tmp_path):
    cfg = _write_cfg(tmp_path, latent_config())
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"] == "random" and summary["iterations"] == 3 and summary["queries"] == 12
    assert len(summary["knn_accuracy"]) == 4  # index 0 before exploring
    assert len(summary["mean_reward_per_iteration"]) == 3
    assert len(summary["mean_true_relevance_per_iteration"]) == 3
    for key in ("distinct_relevant_concepts", "new_relevant_images", "target_classes_hit_share", "knn_accuracy_k10"):
        assert key in summary
    lines = (out / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["step"] == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["agent"] == "random" and saved["env"]["queries_per_iteration"] == 4
    assert list((out / "tb").rglob("events.out.tfevents*"))
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["iter_0002.pt", "iter_0003.pt"]


def test_bad_input_is_refused_clearly(tmp_path, capsys):
    cfg = _write_cfg(tmp_path, latent_config())
    assert main(["--config", str(cfg), "--set", "env.bogus=1", "--logdir", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "env.bogus" in err and "queries_per_iteration" in err
    assert main(["--config", str(cfg), "--agent", "nope", "--logdir", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "random" in capsys.readouterr().err  # lists the registered agents
    assert not (tmp_path / "b").exists()  # nothing written: the corrected command can use the same folder
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(tmp_path / "b"), "--no-progress"]) == 0
    capsys.readouterr()
    run = tmp_path / "c"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 0
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err  # never overwrites a run silently
    assert main(["--config", str(cfg), "--agent", "random", "--set", "env.k=3", "--logdir", str(run), "--resume", "--no-progress"]) == 2
    assert "env.k" in capsys.readouterr().err  # resume against another config is refused


def _checkpoint_weights_hash(run: Path) -> str:
    state = read_checkpoint(sorted((run / "checkpoints").glob("iter_*.pt"))[-1])
    return weights_sha256(state["env"]["learner"])


def _cmd(cfg: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ie_experiments.run", "--config", str(cfg), "--agent", "gp", "--logdir", str(run), "--no-progress", *extra]


def _lines(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _closing_iteration(run: Path, last_line: int) -> bool:
    """True once the query after line ``last_line`` (an iteration's last) has its images stored but is
    not logged yet: the process is scoring it and training (SSL) before it logs it."""
    log = run / "queries.jsonl"
    n = _lines(log)
    if n != last_line:
        return n > last_line
    logged = {json.loads(line)["key"] for line in log.read_bytes().splitlines()[:n]}
    return any(p.stem not in logged for p in (run / "downloads").glob("*/*.npz"))


def _run_and_kill(cmd: list[str], env: dict[str, str], should_kill, timeout: float = 300.0) -> int:
    """Run ``cmd``; SIGKILL it as soon as ``should_kill()`` holds. Returns its exit status."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if should_kill is not None and should_kill():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


_PER_PROCESS = ("seconds_this_process", "counters_this_process")


def test_repeated_sigkill_then_resume_matches_uninterrupted(tmp_path, capsys):
    """SIGKILLed mid-iteration, during SSL training and mid-way through a checkpoint write (in a
    seeded-random order of iterations), resumed after each kill: the same queries.jsonl, final
    weights and figures as an uninterrupted run; then a corrupt newest checkpoint is detected and the
    previous one used, with the same result again."""
    iterations, qpi = 3, 3
    env_cfg = pixel_config(iterations=iterations, queries_per_iteration=qpi, ssl={"max_steps": 3})
    cfg = _write_cfg(tmp_path, env_cfg)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    envvars = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), "OMP_NUM_THREADS": "1"}
    envvars.pop("IE_EXPLORE_KILL_AT", None)
    ref_proc = subprocess.Popen(_cmd(cfg, ref), cwd=ROOT, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    rng = random.Random(20240607)
    phases = ["query", "ssl", "checkpoint_write"]
    rng.shuffle(phases)  # phases[i] lands in iteration i + 1
    log, ckdir = killed / "queries.jsonl", killed / "checkpoints"
    landed = []
    for i, phase in enumerate(phases):
        it = i + 1
        extra = ("--resume",) if i else ()
        start = _lines(log)
        if phase == "checkpoint_write":  # the process kills itself halfway through writing iter_<it>.pt
            status = _run_and_kill(_cmd(cfg, killed, *extra), {**envvars, "IE_EXPLORE_KILL_AT": f"checkpoint_write:{it}"}, None)
            tmp = list(ckdir.glob(f".iter_{it:04d}.pt.*"))
            assert tmp and not (ckdir / f"iter_{it:04d}.pt").exists(), "killed before the checkpoint's rename"
        else:
            if phase == "query":  # after a random query of the iteration, before the next one is logged
                target = max((it - 1) * qpi + rng.randint(1, qpi - 1), start + 1)
                status = _run_and_kill(_cmd(cfg, killed, *extra), envvars, lambda: _lines(log) >= target)
            else:  # while the iteration's last query is scored and the encoder trained
                last = max(it * qpi - 1, start)
                status = _run_and_kill(_cmd(cfg, killed, *extra), envvars, lambda: _closing_iteration(killed, last))
        assert status == -signal.SIGKILL, f"{phase} kill did not land (exit {status})"
        n = _lines(log)
        landed.append((phase, n, sorted(p.name for p in ckdir.glob("iter_*.pt"))))
        assert not (killed / "summary.json").exists(), landed
    status = _run_and_kill(_cmd(cfg, killed, "--resume"), envvars, None)
    assert status == 0, landed
    assert not list(ckdir.glob(".iter_*")), "stale temp files of the interrupted write are removed"

    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err.decode()[-2000:]
    ref_log = (ref / "queries.jsonl").read_bytes()
    assert log.read_bytes() == ref_log, landed  # no line lost, none repeated, same rewards
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((killed / "summary.json").read_text())
    assert s_res["final_weights_sha256"] == s_ref["final_weights_sha256"] == _checkpoint_weights_hash(ref)
    assert _checkpoint_weights_hash(killed) == s_ref["final_weights_sha256"]
    assert s_res["knn_accuracy"] == s_ref["knn_accuracy"]
    assert {k: v for k, v in s_res.items() if k not in _PER_PROCESS} == {k: v for k, v in s_ref.items() if k not in _PER_PROCESS}

    # A corrupt newest checkpoint (bytes changed inside tensor data: torch.load would read it) is
    # detected by its digest; the run resumes from the previous one and ends the same.
    newest = sorted(ckdir.glob("iter_*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    newest.write_bytes(bytes(data))
    (killed / "summary.json").unlink()
    capsys.readouterr()
    assert main(["--config", str(cfg), "--agent", "gp", "--logdir", str(killed), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest.name} is corrupt" in err and "previous one" in err
    assert log.read_bytes() == ref_log
    s_fix = json.loads((killed / "summary.json").read_text())
    assert s_fix["final_weights_sha256"] == s_ref["final_weights_sha256"]
    assert s_fix["knn_accuracy"] == s_ref["knn_accuracy"]
    assert s_fix["counters_this_process"]["materialized_images"] == 0  # nothing downloaded again
    assert s_fix["counters_this_process"]["ssl_updates"] <= 1  # only the last iteration trained again


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    cfg = _write_cfg(tmp_path, latent_config())
    run = tmp_path / "run"
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--no-progress"]) == 0
    ref = (run / "queries.jsonl").read_text()
    ref_summary = json.loads((run / "summary.json").read_text())
    latest = sorted((run / "checkpoints").glob("*.pt"))[-1]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert main(["--config", str(cfg), "--agent", "random", "--logdir", str(run), "--resume", "--no-progress"]) == 0
    assert f"checkpoint {latest.name} is corrupt or truncated" in capsys.readouterr().err
    assert (run / "queries.jsonl").read_text() == ref
    summary = json.loads((run / "summary.json").read_text())
    assert summary["queries"] == 12
    assert summary["final_weights_sha256"] == ref_summary["final_weights_sha256"]


def test_checkpoints_verify_digest_and_clean_interrupted_writes(tmp_path, capsys):
    root = tmp_path / "ck"
    ck = Checkpoints(root, keep=2)
    for it in range(4):
        ck.save(it, {"it": it, "w": torch.full((3,), float(it))})
    assert sorted(p.name for p in root.iterdir()) == ["iter_0002.pt", "iter_0002.pt.sha256", "iter_0003.pt", "iter_0003.pt.sha256"]
    assert ck.load_latest()["it"] == 3
    # A byte changed in the tensor data of the newest: torch.load alone would not notice.
    p3 = root / "iter_0003.pt"
    raw = p3.read_bytes()
    pos = raw.index(struct.pack("<3f", 3.0, 3.0, 3.0))
    p3.write_bytes(raw[:pos] + struct.pack("<f", 4.0) + raw[pos + 4 :])
    assert torch.load(p3, weights_only=True)["w"][0] == 4.0
    capsys.readouterr()
    assert ck.load_latest()["it"] == 2
    err = capsys.readouterr().err
    assert "iter_0003.pt is corrupt" in err and "previous one, iter_0002.pt" in err
    # Without a digest a checkpoint is not trusted (ie-explore did not write it), unless the user says so.
    p3.write_bytes(raw)
    Checkpoints.digest_path(p3).unlink()
    with pytest.raises(RunDirError, match="no iter_0003.pt.sha256"):
        ck.load_latest()
    assert Checkpoints(root, keep=2, trust_pickle=True).load_latest()["it"] == 3
    # An interrupted write leaves a hidden temp file; the writer opening the folder removes it.
    (root / ".iter_0004.pt.abc123").write_bytes(raw[:10])
    Checkpoints(root, keep=2).clean()
    assert not list(root.glob(".iter_*"))
    # Nothing readable: refused (never a silent fresh start), naming each damaged file.
    p3.unlink()
    (root / "iter_0002.pt").write_bytes(b"junk")
    with pytest.raises(RunDirError, match="every checkpoint is damaged: iter_0002.pt") as err:
        ck.load_latest()
    assert "previous one" not in str(err.value) and "to start over" in str(err.value)
    # An empty folder: nothing to resume from (a fresh start is for the caller to decide).
    (root / "iter_0002.pt").unlink()
    assert ck.load_latest() is None


def test_weights_hash_is_canonical_and_sensitive():
    a = {"model": {"b": torch.ones(2), "a": torch.zeros(2, dtype=torch.float64), "n": torch.tensor(3)}, "optimizer": {"x": 1}}
    b = {"model": {"n": torch.tensor(3), "a": torch.zeros(2, dtype=torch.float64), "b": torch.ones(2)}, "optimizer": {"x": 2}}
    assert weights_sha256(a) == weights_sha256(b)  # key order and non-weight entries do not count
    b["model"]["b"] = torch.tensor([1.0, 1.0 + 2**-23])
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256({"mean": np.zeros(2)}) != weights_sha256({"mean": np.zeros(3)})


def test_a_model_trained_in_another_fidelity_gets_a_note(capsys):
    from ie_env.config import apply_overrides
    from ie_experiments.run import RunConfig, _note_model_fidelity

    class Trained:
        meta = {"env": {"world": {"fidelity": "latent"}}}

    _note_model_fidelity(Trained(), apply_overrides(RunConfig(), ["env.world.fidelity=pixels"]))
    assert "env.world.fidelity=latent" in capsys.readouterr().err
    _note_model_fidelity(Trained(), apply_overrides(RunConfig(), ["env.world.fidelity=latent"]))
    _note_model_fidelity(object(), RunConfig())  # agents without a model: nothing to say
    assert capsys.readouterr().err == ""
