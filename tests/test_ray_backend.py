"""``--ray``: a run executed as a Ray task gives the process pool's results, a run whose Ray worker
process is killed mid-run is retried and completes, and a bad address or Ray version is refused
before anything starts.

The cluster is one Ray node on loopback, started by the test: ``ray start --head
--node-ip-address=127.0.0.1`` (one CPU, no dashboard, no autoscaler or log monitor) with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's switch for a one-machine cluster; without it Ray
replaces 127.0.0.1 with the host's interface address. The test checks that it stays there: the
cluster reports its node at 127.0.0.1, and while it runs every socket of its processes and of the
driver is bound to and connected with loopback only. A token of its own keeps other local users
out. A whole node's death is not exercised here (a second node would need a non-loopback address).

One run (a pinned latent task, one seed): about 15-20 s of CPU, most of it four processes importing
the run's stack (the pool's worker, the driver, the Ray worker, and the Ray worker of the retry).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _loopback import cmdline, descendants, inet_sockets

from ie_env.config import ConfigError
from ie_experiments import benchmark, compare, ray_backend

ray = pytest.importorskip("ray")

TASK = "IELatent-Easy-v1"
ARGS = ["--suite", TASK, "--agents", "random", "--seeds", "1", "--bootstrap-reps", "50", "--quiet"]
RAY = str(Path(sys.executable).with_name("ray"))
RUN_TASK = "ray::_run_task"  # the title Ray gives a worker process while it executes a run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(token: str) -> dict[str, str]:
    """The environment of every Ray process and of the driver: this checkout importable, Ray kept on
    loopback, this cluster's own token."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token
    )
    return env


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen
    env: dict[str, str]
    off_loopback: list[str] = field(default_factory=list)
    on_loopback: int = 0  # sockets seen that stay on loopback (summed over the looks)

    def check_sockets(self, *pids: int) -> list[int]:
        """Record every socket of the cluster's processes (and ``pids``'s trees) that leaves loopback;
        returns the processes looked at."""
        procs = descendants(self.head.pid, *pids)
        for line, ok in inet_sockets(procs):
            self.on_loopback += ok
            if not ok and line not in self.off_loopback:
                self.off_loopback.append(line)
        return procs


def _stop(proc: subprocess.Popen) -> None:
    """End the node: the process group of its ``ray start --block`` (the processes this test started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=3)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _nodes(cluster: Cluster) -> list[dict]:
    """The cluster's nodes as Ray reports them to a driver, once its CPU is registered."""
    code = (
        "import json, time, ray\n"
        f"ray.init(address={cluster.address!r}, log_to_driver=False, configure_logging=False)\n"
        "end = time.time() + 60\n"
        "while ray.cluster_resources().get('CPU', 0) < 1 and time.time() < end:\n"
        "    time.sleep(0.2)\n"
        "print(json.dumps([{k: n[k] for k in ('NodeManagerAddress', 'Alive', 'Resources')} for n in ray.nodes()]))\n"
    )
    probe = subprocess.Popen(
        [sys.executable, "-c", code], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        while probe.poll() is None:
            cluster.check_sockets(probe.pid)
            time.sleep(0.1)
        out, err = probe.communicate(timeout=120)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert probe.returncode == 0, err.decode(errors="replace")[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    tmp = Path(tempfile.mkdtemp(prefix="ier", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    env = _env(secrets.token_hex(32))
    args = [
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--ray-client-server-port={_free_port()}",
        "--num-cpus=1",
        "--object-store-memory=80000000",
        "--include-dashboard=false",
        "--no-monitor",
        "--include-log-monitor=false",
        f"--temp-dir={tmp / 'r'}",
        "--disable-usage-stats",
        "--block",
    ]
    with open(tmp / "head.log", "wb") as log:
        head = subprocess.Popen(
            [RAY, "start", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    c = Cluster(f"127.0.0.1:{port}", head, env)
    try:
        deadline = time.time() + 60
        while True:
            c.check_sockets()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("the Ray head did not start: " + (tmp / "head.log").read_text()[-2000:])
                time.sleep(0.2)
        nodes = _nodes(c)
        assert [(n["NodeManagerAddress"], n["Alive"], n["Resources"].get("CPU")) for n in nodes] == [
            ("127.0.0.1", True, 1.0)
        ]
        assert c.on_loopback > 0  # the look sees Ray's sockets (its GCS listens on one)
        yield c
    finally:
        _stop(head)
        shutil.rmtree(tmp, ignore_errors=True)
    assert c.off_loopback == [], "Ray left loopback:\n" + "\n".join(c.off_loopback)


def _comparable(res: dict) -> dict:
    """results.json less what differs between any two runs of the same command (times, the command)."""
    res = {k: v for k, v in res.items() if k not in ("seconds", "command")}
    res["runs"] = {k: v["status"] for k, v in res["runs"].items()}
    return res


@pytest.fixture(scope="module")
def pool_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    assert benchmark.main([*ARGS, "--out", str(out), "--workers", "1", "--threads", "1"]) == 0
    return _comparable(json.loads((out / "results.json").read_text()))


def _mid_run(runs: Path) -> bool:
    """Whether a run has checkpointed an iteration and not finished (its retry resumes from there)."""
    return any(
        not (d / "summary.json").exists() and any((d / "checkpoints").glob("iter_*.pt")) for d in runs.glob("*/seed*")
    )


def _kill_if_mid_run(pid: int, runs: Path) -> bool:
    """SIGKILL the worker ``pid`` if its run is mid-run. It is stopped while the run folder is read, so
    the run cannot finish between the look and the kill (one CPU: the only run in flight is its own)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    try:
        if cmdline(pid).startswith(RUN_TASK) and _mid_run(runs):
            os.kill(pid, signal.SIGKILL)
            return True
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return False


def test_ray_results_equal_the_pool_and_a_killed_worker_process_is_retried(cluster, pool_results, tmp_path):
    out = tmp_path / "ray"
    runs = out / "runs" / TASK
    cmd = [sys.executable, "-m", "ie_experiments.benchmark", *ARGS, "--out", str(out), "--ray", cluster.address]
    driver = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed, retried_by = None, None
    try:
        deadline = time.time() + 240
        while driver.poll() is None and time.time() < deadline:
            executing = [p for p in cluster.check_sockets(driver.pid) if cmdline(p).startswith(RUN_TASK)]
            if killed is None:
                killed = next((p for p in executing if _kill_if_mid_run(p, runs)), None)
            elif retried_by is None:
                retried_by = next((p for p in executing if p != killed), None)
            time.sleep(0.1)
        stdout, _ = driver.communicate(timeout=max(1.0, deadline - time.time()))
    finally:
        if driver.poll() is None:
            driver.kill()
    text = stdout.decode(errors="replace")
    assert killed, "no worker was seen mid-run: " + text[-2000:]
    assert retried_by, "no other worker took the killed worker's run: " + text[-2000:]
    assert driver.returncode == 0, text[-3000:]
    assert cluster.off_loopback == [], "Ray left loopback:\n" + "\n".join(cluster.off_loopback)
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == [] and len(res["runs"]) == 1
    assert _comparable(res) == pool_results
    for run in runs.glob("*/seed*"):  # the retried run resumed: its log whole, no query twice
        summary = json.loads((run / "summary.json").read_text())
        lines = (run / "queries.jsonl").read_text().splitlines()
        assert len(lines) == summary["queries"] > 0


def test_unreachable_address_is_refused_within_seconds_and_nothing_starts(tmp_path, capsys):
    out = tmp_path / "b"
    t0 = time.time()
    assert benchmark.main([*ARGS, "--out", str(out), "--ray", f"127.0.0.1:{_free_port()}"]) == 2
    assert time.time() - t0 < 15
    assert "cannot reach the Ray cluster at 127.0.0.1:" in capsys.readouterr().err
    assert not out.exists()
    assert (
        compare.main(["--agents", "random", "--seeds", "1", "--out", str(tmp_path / "c"), "--ray", "no-port-here"]) == 2
    )
    assert "HOST:PORT" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert not ray.is_initialized()


def test_old_ray_is_refused_naming_its_version(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.3.1")
    with pytest.raises(ConfigError, match=r"Ray >= 2\.10; this is Ray 2\.3\.1"):
        ray_backend.require_ray()
