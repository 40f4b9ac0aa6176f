"""``--ray``: runs as Ray tasks on a two-node loopback cluster give the process pool's results, a run
whose node is killed mid-run is retried and completes, and a bad address or Ray version is refused
before anything starts.

The cluster (a head and one worker node on this machine, one CPU each, reached at 127.0.0.1, with a
token of its own) is started by the test with ``ray start --block`` in its own process groups and
ended by killing those groups. Slow for a unit test (a local pool run, two Ray nodes and a driver
process start): it is the only end-to-end check of the Ray backend and of a node's death.
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
from pathlib import Path

import pytest

from experiments import benchmark, compare, ray_backend
from ie_env.config import ConfigError

ray = pytest.importorskip("ray")

TASK = "IELatent-Easy-v1"
ARGS = ["--suite", TASK, "--agents", "random,uniform", "--seeds", "1", "--bootstrap-reps", "200", "--quiet"]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="4")
    return env


def _start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    common = ["--num-cpus=1", "--object-store-memory=80000000", "--block", "--disable-usage-stats"]
    with open(log, "wb") as fh:
        return subprocess.Popen([RAY, "start", *args, *common], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop_node(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """End the node: its ``ray start --block`` process group (the processes this test started)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for_cpus(address: str, cpus: int, timeout: float) -> bool:
    """Whether the cluster reached ``cpus`` CPUs within ``timeout`` s (asked from a fresh process: this
    one's Ray read its settings at import, before the test's token)."""
    code = ("import sys, time, ray\n"
            f"ray.init(address={address!r}, log_to_driver=False, configure_logging=False)\n"
            f"end = time.time() + {timeout}\n"
            f"while ray.cluster_resources().get('CPU', 0) < {cpus} and time.time() < end:\n"
            "    time.sleep(0.3)\n"
            f"sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= {cpus} else 1)\n")
    return subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, timeout=timeout + 60, check=False).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)  # this cluster's own token, not one in the user's ~/.ray
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        yield from _cluster()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cluster():
    tmp = Path(tempfile.mkdtemp(prefix="ier", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # The test names 127.0.0.1 only. Ray 2.x advertises a multi-node cluster's nodes under the host's own
    # interface address (it maps loopback to it; pure loopback is for one-node clusters only), so the
    # traffic stays on this machine; the cluster's own random token keeps other local users out.
    head = _start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp / 'r'}",
                        f"--ray-client-server-port={_free_port()}"], tmp / "head.log", _env())
    nodes = {"head": head}
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("the Ray head did not start: " + (tmp / "head.log").read_text()[-2000:])
                time.sleep(0.5)
        nodes["worker"] = _start_node([f"--address={address}"], tmp / "worker.log", _env())
        if not _wait_for_cpus(address, 2, timeout=60):
            pytest.fail("the Ray worker node did not join: " + (tmp / "worker.log").read_text()[-2000:])
        yield address, nodes
    finally:
        for proc in nodes.values():
            _stop_node(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _comparable(res: dict) -> dict:
    """results.json less what differs between any two runs of the same command (times, the command)."""
    res = {k: v for k, v in res.items() if k not in ("seconds", "command")}
    res["runs"] = {k: v["status"] for k, v in res["runs"].items()}
    return res


@pytest.fixture(scope="module")
def pool_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    assert benchmark.main([*ARGS, "--out", str(out), "--workers", "2", "--threads", "1"]) == 0
    return _comparable(json.loads((out / "results.json").read_text()))


def test_ray_results_equal_the_pool_and_survive_a_killed_worker_node(cluster, pool_results, tmp_path):
    address, nodes = cluster
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "experiments.benchmark", *ARGS, "--out", str(out), "--ray", address]
    driver = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runs = out / "runs" / TASK
    killed_with_unfinished = None
    try:
        deadline = time.time() + 240
        while driver.poll() is None and time.time() < deadline:
            started = list(runs.glob("*/seed*/config.yaml"))
            unfinished = [p.parent for p in started if not (p.parent / "summary.json").exists()]
            if unfinished:  # both nodes hold a run (one CPU each): kill the worker node under its run
                _stop_node(nodes["worker"], signal.SIGKILL)
                killed_with_unfinished = len(unfinished)
                break
            time.sleep(0.05)
        stdout, _ = driver.communicate(timeout=max(1.0, deadline - time.time()))
    finally:
        if driver.poll() is None:
            driver.kill()
    text = stdout.decode(errors="replace")
    assert killed_with_unfinished, "no run was seen in flight: " + text[-2000:]
    assert driver.returncode == 0, text[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["failed_runs"] == [] and len(res["runs"]) == 2
    assert _comparable(res) == pool_results
    for run in runs.glob("*/seed*"):  # every run finished, its log whole (a retried run resumed or restarted)
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
    assert compare.main(["--agents", "random", "--seeds", "1", "--out", str(tmp_path / "c"),
                         "--ray", "no-port-here"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert not ray.is_initialized()


def test_old_ray_is_refused_naming_its_version(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.3.1")
    with pytest.raises(ConfigError, match=r"Ray >= 2\.10; this is Ray 2\.3\.1"):
        ray_backend.require_ray()
