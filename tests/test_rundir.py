"""The run directory under damage and hostile input: nothing lost, nothing executed, one writer.

Each test reproduces one way a run directory was damaged or misused (issue F1-F9) and asserts the
outcome: the records kept, the message, exit code 2, nothing overwritten, nothing unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ie_env.plain_state import (
    from_torch_plain,
    load_torch_bytes,
    save_torch_bytes,
    to_torch_plain,
)
from ie_experiments import rundir
from ie_experiments.run import main, read_checkpoint
from ie_experiments.rundir import QueryLog
from tests.conftest import latent_config, pixel_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, name: str = "cfg.yaml", **env_over) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"env": latent_config(**env_over), "threads": 1}))
    return path


def _explore(cfg: Path, run: Path, *extra: str, agent: str = "gp") -> int:
    return main(["--config", str(cfg), "--agent", agent, "--logdir", str(run), "--no-progress", *extra])


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run that holds results (the log, checkpoints, digests, summary, config)."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and not rel.startswith(("tb/", "downloads/")) and rel != "run.lock":
            out[rel] = p.read_bytes()
    return out


class _Planted:
    """Unpickling this creates the file at ``path``: how a planted pickle would run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted latent gp run (3 iterations x 4 queries) and its config."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _cfg(tmp)
    run = tmp / "run"
    assert _explore(cfg, run) == 0
    return cfg, run


def _copy(reference, tmp_path: Path) -> tuple[Path, Path]:
    cfg, run = reference
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return cfg, dst


def _as_killed_after_iteration(run: Path, iteration: int) -> None:
    """Make ``run`` look killed in the iteration after ``iteration``: later checkpoints and the
    summary removed (the log keeps the queries logged since)."""
    (run / "summary.json").unlink()
    for p in (run / "checkpoints").glob("iter_*.pt"):
        if int(p.stem.split("_")[1]) > iteration:
            p.unlink()
            rundir.Checkpoints.digest_path(p).unlink()


# ---------------------------------------------------------------------------------------------
# F1: a damaged line in the middle of queries.jsonl
# ---------------------------------------------------------------------------------------------
def test_damaged_old_log_line_is_quarantined_never_truncated(reference, tmp_path, capsys):
    cfg, run = _copy(reference, tmp_path)
    ref_lines = (reference[1] / "queries.jsonl").read_bytes().splitlines(keepends=True)
    _as_killed_after_iteration(run, 2)  # resumes at step 8 of 12
    lines = list(ref_lines)
    lines[2] = b'{"step": 3, "iteration": 0, "act#garbage\n'  # line 3 of 12, long before the checkpoint
    (run / "queries.jsonl").write_bytes(b"".join(lines))
    capsys.readouterr()
    assert _explore(cfg, run, "--resume") == 0
    err = capsys.readouterr().err
    assert "1 damaged line(s) of queries.jsonl moved to queries.quarantine.jsonl" in err
    kept = (run / "queries.jsonl").read_bytes()
    assert kept == b"".join(ref_lines[:2] + ref_lines[3:])  # every intact record, nothing else lost
    quarantined = [json.loads(x) for x in (run / "queries.quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == 1 and quarantined[0]["line"] == 3 and quarantined[0]["after_step"] == 2
    assert quarantined[0]["raw"].encode("utf-8", "surrogateescape") == lines[2].rstrip(b"\n")  # kept as it was
    summary = json.loads((run / "summary.json").read_text())
    assert summary["quarantined_log_lines"] == 1
    ref_summary = json.loads((reference[1] / "summary.json").read_text())
    assert summary["final_weights_sha256"] == ref_summary["final_weights_sha256"]


def test_damaged_line_of_the_unfinished_iteration_is_quarantined_and_rerun(reference, tmp_path, capsys):
    """Line 10 damaged, checkpoint at step 8: step 9 is replayed, steps 10-12 run again (the later
    records, which cannot be replayed out of order, are quarantined, not dropped)."""
    cfg, run = _copy(reference, tmp_path)
    ref_log = (reference[1] / "queries.jsonl").read_bytes()
    _as_killed_after_iteration(run, 2)
    lines = ref_log.splitlines(keepends=True)
    lines[9] = b"\x00" * 40 + b"\n"
    (run / "queries.jsonl").write_bytes(b"".join(lines))
    assert _explore(cfg, run, "--resume") == 0
    assert (run / "queries.jsonl").read_bytes() == ref_log  # deterministic: the re-run steps log the same
    quarantined = [json.loads(x) for x in (run / "queries.quarantine.jsonl").read_text().splitlines()]
    assert [q.get("line") for q in quarantined] == [10, None, None]
    assert [q["record"]["step"] for q in quarantined[1:]] == [11, 12]
    assert json.loads((run / "summary.json").read_text())["quarantined_log_lines"] == 3


def test_query_log_keeps_intact_records_and_cuts_only_a_torn_tail(tmp_path, capsys):
    log = QueryLog(tmp_path / "queries.jsonl")
    recs = [{"step": i, "x": i * 0.5} for i in range(1, 6)]
    body = [json.dumps(r).encode() + b"\n" for r in recs]
    log.path.write_bytes(body[0] + b"not json\n" + b"".join(body[1:4]) + b"[1, 2]\n" + b"\xff\xfe{\n" + body[4]
                         + b'{"step": 6, "x"')
    assert log.read() == recs
    assert log.path.read_bytes() == b"".join(body)
    q = [json.loads(x) for x in log.quarantine_path.read_text().splitlines()]
    assert [(e["line"], e["raw"].encode("utf-8", "surrogateescape")) for e in q] == [
        (2, b"not json"), (6, b"[1, 2]"), (7, b"\xff\xfe{")]
    assert "torn last line" in capsys.readouterr().err
    assert log.read() == recs and log.quarantined() == 3  # nothing quarantined twice
    log.path.write_bytes(b"".join(body) + json.dumps({"step": 6}).encode())  # complete but for its newline
    assert log.read()[-1] == {"step": 6} and log.path.read_bytes().endswith(b'{"step": 6}\n')


# ---------------------------------------------------------------------------------------------
# F2: one writer
# ---------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    """Two real ie-explore processes on one directory: the second is refused (exit 2, the first's
    pid), with and without --resume; the lock goes with the first process's kill -9. (Three process
    starts, two at once: ~10-20 s.)"""
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ie_experiments.run", "--config", str(cfg), "--agent", "random",
           "--logdir", str(run), "--no-progress"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if rundir.RunLock(run).read_meta().get("pid") == first.pid:  # it holds the lock and has started
                first.send_signal(signal.SIGSTOP)  # keep it there, holding the lock, until it is killed
                break
            time.sleep(0.005)
        assert first.poll() is None, "the first run ended early"
        seconds = [subprocess.Popen(cmd + extra, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True) for extra in (["--resume"], [])]
        for second in seconds:
            _, err = second.communicate(timeout=300)
            assert second.returncode == 2, err[-2000:]
            assert f"in use by another ie-explore process (pid {first.pid})" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    # Killed: the OS released the lock, and the next process resumes the run.
    assert _explore(cfg, run, "--resume", agent="random") == 0
    steps = [json.loads(x)["step"] for x in (run / "queries.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # one writer: no step logged twice


# ---------------------------------------------------------------------------------------------
# F3: no code execution from data files
# ---------------------------------------------------------------------------------------------
def _plant(path: Path, marker: Path, digest: bool) -> None:
    buf = io.BytesIO()
    torch.save({"env": {}, "agent": _Planted(str(marker)), "steps": 0}, buf)
    path.write_bytes(buf.getvalue())
    if digest:  # whoever can write the checkpoint can write its digest too
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest() + "\n")


@pytest.mark.parametrize("digest", [True, False], ids=["with_digest", "without_digest"])
def test_planted_pickle_checkpoint_is_refused_without_running(reference, tmp_path, capsys, digest):
    cfg, run = _copy(reference, tmp_path)
    (run / "summary.json").unlink()
    marker = tmp_path / "pickle_ran"
    _plant(run / "checkpoints" / "iter_0099.pt", marker, digest)
    before = _snapshot(run)
    capsys.readouterr()
    assert _explore(cfg, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "iter_0099.pt" in err and "--trust-pickle" in err
    assert ("pickled Python objects" if digest else "has no iter_0099.pt.sha256") in err
    assert not marker.exists()
    assert _snapshot(run) == before


def test_ie_eval_refuses_a_pickled_checkpoint(tmp_path, capsys):
    from ie_experiments.eval import main as eval_main

    marker = tmp_path / "pickle_ran"
    _plant(tmp_path / "learner.pt", marker, digest=False)
    assert eval_main(["--checkpoint", str(tmp_path / "learner.pt"), "--target-kind", "imagefolder",
                      "--root", str(tmp_path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()


def _same(a, b, where="state") -> None:
    """Deep equality with types: arrays (dtype, shape, values), tensors, containers, scalars."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def test_run_state_round_trips_as_plain_data():
    """What a checkpoint holds (env with learner, replay, RNG states and caches; GP agent; SSL
    optimiser and generator; numpy scalars; Python ``random`` state) reads back equal through
    ``torch.load(weights_only=True)``; an object that is not plain data fails when written."""
    from ie_agents.base import AgentContext
    from ie_agents.gp_sampler import GPSamplerAgent
    from ie_env.env import InternetExplorerEnv
    from ie_env.learner.ssl import SSLConfig, SSLLearner

    states = {}
    for name, cfg in (("latent", latent_config()), ("pixels", pixel_config())):
        env = InternetExplorerEnv(cfg)
        agent = GPSamplerAgent()
        agent.setup(AgentContext.from_env(env, seed=1))
        obs, info = env.reset(seed=1)
        while not info.get("iteration_closed"):
            action = agent.act(obs, info)
            obs, reward, _, _, info = env.step(action)
            agent.observe(action, reward, obs, info)
        states[name] = {"env": env.state_dict(), "agent": agent.state_dict()}
    learner = SSLLearner(SSLConfig(**pixel_config()["ssl"]))
    learner.update(np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8))
    states["learner"] = learner.state_dict()
    states["misc"] = {"py_random": random.Random(3).getstate(), "np_scalar": np.float32(1.5), "nan": float("nan"),
                      "knn": [{20: 0.5, 10: 0.25}], "big": np.random.default_rng(2).bit_generator.state,
                      "empty": np.zeros((0, 4), np.float16), "big_endian": np.arange(3, dtype=">i4")}
    data = save_torch_bytes(states)
    back = from_torch_plain(torch.load(io.BytesIO(data), weights_only=True))
    expected = from_torch_plain(to_torch_plain(states))  # big-endian arrays come back native
    _same(back, expected)
    _same(back["latent"], states["latent"])
    _same(back["learner"]["optimizer"], states["learner"]["optimizer"])
    assert load_torch_bytes(data)["misc"]["py_random"] == random.Random(3).getstate()
    with pytest.raises(TypeError, match=r"state.rng: a numpy.random._generator.Generator is not plain data"):
        save_torch_bytes({"rng": np.random.default_rng()})


# ---------------------------------------------------------------------------------------------
# F5: unwritable directory, disk full, downloads/ deleted
# ---------------------------------------------------------------------------------------------
def test_unwritable_log_directory_is_a_clear_error(tmp_path, capsys, monkeypatch):
    cfg = _cfg(tmp_path)
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: refuse the write the way a read-only folder does
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if str(path).startswith(str(parent)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(rundir.os, "open", refusing_open)
    else:
        parent.chmod(0o555)
    try:
        capsys.readouterr()
        assert _explore(cfg, parent / "run" if os.geteuid() else parent) == 2
        err = capsys.readouterr().err
        assert "ie-explore: error: Permission denied" in err and "Traceback" not in err
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []


def test_disk_full_while_writing_a_checkpoint(reference, tmp_path, capsys, monkeypatch):
    cfg, ref = reference
    run = tmp_path / "run"
    real_write = rundir.atomic_write_bytes

    def full_at_iter_2(path, data):
        if Path(path).name == "iter_0002.pt":
            Path(path).with_name(".iter_0002.pt.partial").write_bytes(data[:10])  # as far as it got
            Path(path).with_name(".iter_0002.pt.partial").unlink()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(rundir, "atomic_write_bytes", full_at_iter_2)
    capsys.readouterr()
    assert _explore(cfg, run) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint iter_0002.pt (No space left on device)" in err and "--resume" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000.pt", "iter_0000.pt.sha256",
                                                                       "iter_0001.pt", "iter_0001.pt.sha256"]
    assert read_checkpoint(run / "checkpoints" / "iter_0001.pt")["steps"] == 4
    ref_log = (ref / "queries.jsonl").read_bytes()
    assert (run / "queries.jsonl").read_bytes() == b"".join(ref_log.splitlines(keepends=True)[:8])
    monkeypatch.setattr(rundir, "atomic_write_bytes", real_write)  # space freed
    assert _explore(cfg, run, "--resume") == 0
    assert (run / "queries.jsonl").read_bytes() == ref_log
    assert (json.loads((run / "summary.json").read_text())["final_weights_sha256"]
            == json.loads((ref / "summary.json").read_text())["final_weights_sha256"])


def test_downloads_deleted_before_resume(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"env": pixel_config(), "threads": 1, "log_images": False}))
    run = tmp_path / "run"
    assert _explore(cfg, run, agent="random") == 0
    (run / "summary.json").unlink()
    shutil.rmtree(run / "downloads")
    before = _snapshot(run)
    capsys.readouterr()
    assert _explore(cfg, run, "--resume", agent="random") == 2
    err = capsys.readouterr().err
    assert "downloads/ lacks the images of" in err and "Traceback" not in err
    assert _snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# F6: a run directory without config.yaml
# ---------------------------------------------------------------------------------------------
def test_missing_config_yaml_keeps_both_guards(reference, tmp_path, capsys):
    cfg, run = _copy(reference, tmp_path)
    (run / "config.yaml").unlink()
    (run / "run.lock").unlink(missing_ok=True)  # its config digest too: the checkpoint's still guards
    before = _snapshot(run)
    capsys.readouterr()
    assert _explore(cfg, run) == 2  # no --resume: never overwritten
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(run) == before
    assert _explore(cfg, run, "--resume", "--set", "env.iterations=4") == 2
    assert "its config (its checkpoint) differs in env.iterations" in capsys.readouterr().err
    assert _snapshot(run) == before
    state = read_checkpoint(max((run / "checkpoints").glob("iter_*.pt")))
    assert state["config_sha256"] == rundir.config_digest(state["config"])


# ---------------------------------------------------------------------------------------------
# F8: a failed start leaves nothing that blocks the corrected command
# ---------------------------------------------------------------------------------------------
def test_failed_start_leaves_no_run_directory(tmp_path, capsys):
    from tests.test_targets import make_folder

    bad = make_folder(tmp_path / "bad", per_class=4)
    (bad / "empty_class").mkdir()
    good = make_folder(tmp_path / "good", per_class=4)
    run = tmp_path / "run"

    def cfg_for(root: Path) -> Path:
        env = pixel_config(target={"kind": "imagefolder", "root": str(root), "test_fraction": 0.5}, iterations=1)
        path = tmp_path / f"cfg_{root.name}.yaml"
        path.write_text(yaml.safe_dump({"env": env, "threads": 1, "log_images": False}))
        return path

    capsys.readouterr()
    assert _explore(cfg_for(bad), run, agent="random") == 2
    assert "empty_class holds no readable images" in capsys.readouterr().err
    assert not run.exists()
    assert _explore(cfg_for(good), run, agent="random") == 0


# ---------------------------------------------------------------------------------------------
# F9: every checkpoint damaged
# ---------------------------------------------------------------------------------------------
def test_all_checkpoints_damaged_is_refused_keeping_the_log(reference, tmp_path, capsys):
    cfg, run = _copy(reference, tmp_path)
    (run / "summary.json").unlink()
    for p in (run / "checkpoints").glob("iter_*.pt"):
        p.write_bytes(p.read_bytes()[:200])
    before = _snapshot(run)
    capsys.readouterr()
    assert _explore(cfg, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "every checkpoint is damaged: iter_0003.pt" in err and "iter_0002.pt" in err
    assert "previous one" not in err and f"to start over, delete {run}" in err
    assert _snapshot(run) == before  # queries.jsonl intact


def test_log_without_any_checkpoint_is_refused(reference, tmp_path, capsys):
    cfg, run = _copy(reference, tmp_path)
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints")
    before = _snapshot(run)
    capsys.readouterr()
    assert _explore(cfg, run, "--resume") == 2
    assert "queries.jsonl holds 12 records but there is no checkpoint" in capsys.readouterr().err
    assert _snapshot(run) == before
