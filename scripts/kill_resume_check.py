"""Kill -9 equivalence: SIGKILL an ``ie-explore`` run again and again, resume it each time, and
compare with an uninterrupted run of the same config.

Kills land at seeded-random moments of three kinds: after a query is logged (mid-iteration), while
an iteration closes (its last query scored, the encoder training), and halfway through writing a
checkpoint (the ``IE_EXPLORE_KILL_AT`` hook). After the last resume the run must match the
reference: ``queries.jsonl`` byte for byte, ``final_weights_sha256`` and every figure of
``summary.json`` but the per-process ones. Prints one JSON object per run and exits 1 on a mismatch.

    python scripts/kill_resume_check.py --latent-kills 10 --pixel-kills 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
_PER_PROCESS = ("seconds_this_process", "counters_this_process")


def latent_env(iterations: int) -> dict[str, Any]:
    return {"world": {"fidelity": "latent"}, "images_per_query": 20, "queries_per_iteration": 4,
            "iterations": iterations, "warmup_images": 100}


def pixel_env(iterations: int) -> dict[str, Any]:
    return {
        "world": {"fidelity": "pixels", "image_size": 32, "num_targets": 4, "target_train_per_class": 5,
                  "target_test_per_class": 5},
        "ssl": {"backbone": "test_resnet", "batch_size": 32, "hidden_dim": 64, "proj_dim": 32, "max_steps": 3,
                "min_steps": 1, "deterministic": True, "device": "cpu"},
        "images_per_query": 12, "queries_per_iteration": 3, "iterations": iterations, "warmup_images": 32,
        "knn_k": [20, 10],
    }


def _lines(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _closing(run: Path, last_line: int) -> bool:
    """True once the query after line ``last_line`` (an iteration's last) is being scored / trained on:
    its images are stored but it is not logged yet (or it has been logged: the kill came late)."""
    log = run / "queries.jsonl"
    n = _lines(log)
    if n != last_line:
        return n > last_line
    logged = {json.loads(x)["key"] for x in log.read_bytes().splitlines()[:n]}
    return any(p.stem not in logged for p in (run / "downloads").glob("*/*.npz"))


def _run(cmd: list[str], env: dict[str, str], kill_when: Callable[[], bool] | None, timeout: float) -> int:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_when is not None and kill_when():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode not in (0, -signal.SIGKILL):
            sys.stderr.write(proc.stderr.read().decode()[-3000:])
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def check(name: str, env_cfg: dict[str, Any], kills: int, agent: str, seed: int, work: Path) -> dict[str, Any]:
    """``kills`` kills in distinct iterations (``env_cfg['iterations'] >= kills``), then a final resume."""
    iterations, qpi = env_cfg["iterations"], env_cfg["queries_per_iteration"]
    if iterations < kills:
        raise ValueError(f"{name}: {kills} kills need at least as many iterations, got {iterations}")
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"env": env_cfg, "threads": 1, "log_images": False}))
    ref, killed = work / f"{name}-ref", work / f"{name}-killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "OMP_NUM_THREADS": "1"}
    env.pop("IE_EXPLORE_KILL_AT", None)

    def cmd(run: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "ie_experiments.run", "--config", str(cfg), "--agent", agent,
                "--logdir", str(run), "--no-progress", *extra]

    t0 = time.monotonic()
    if _run(cmd(ref), env, None, 1800) != 0:
        raise RuntimeError(f"{name}: the reference run failed")
    rng = random.Random(seed)
    its = sorted(rng.sample(range(1, iterations + 1), kills))
    phases = [("query", "closing", "checkpoint_write")[i % 3] for i in range(kills)]
    rng.shuffle(phases)
    log = killed / "queries.jsonl"
    landed = []
    for i, (it, phase) in enumerate(zip(its, phases, strict=False)):
        extra = ("--resume",) if i else ()
        start = _lines(log)
        if phase == "checkpoint_write":
            status = _run(cmd(killed, *extra), {**env, "IE_EXPLORE_KILL_AT": f"checkpoint_write:{it}"}, None, 1800)
        elif phase == "query":
            target = max((it - 1) * qpi + rng.randint(1, qpi - 1), start + 1)
            status = _run(cmd(killed, *extra), env, lambda t=target: _lines(log) >= t, 1800)
        else:
            last = max(it * qpi - 1, start)
            status = _run(cmd(killed, *extra), env, lambda n=last: _closing(killed, n), 1800)
        landed.append({"iteration": it, "phase": phase, "status": status, "lines_after": _lines(log)})
        if status != -signal.SIGKILL:
            raise RuntimeError(f"{name}: kill {i + 1} ({phase} in iteration {it}) did not land: exit {status}")
    if _run(cmd(killed, "--resume"), env, None, 1800) != 0:
        raise RuntimeError(f"{name}: the final resume failed")
    s_ref = json.loads((ref / "summary.json").read_text())
    s_res = json.loads((killed / "summary.json").read_text())
    out = {
        "run": name, "agent": agent, "kills": kills, "landed": landed,
        "queries_jsonl_identical": log.read_bytes() == (ref / "queries.jsonl").read_bytes(),
        "final_weights_sha256_identical": s_res["final_weights_sha256"] == s_ref["final_weights_sha256"],
        "summary_identical": ({k: v for k, v in s_res.items() if k not in _PER_PROCESS}
                              == {k: v for k, v in s_ref.items() if k not in _PER_PROCESS}),
        "queries": s_ref["queries"], "seconds": round(time.monotonic() - t0, 1),
    }
    out["ok"] = out["queries_jsonl_identical"] and out["final_weights_sha256_identical"] and out["summary_identical"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent-kills", type=int, default=10)
    p.add_argument("--pixel-kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temp folder)")
    args = p.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = []
        if args.latent_kills:
            runs.append(("latent", latent_env(max(args.latent_kills, 3)), args.latent_kills, "gp"))
        if args.pixel_kills:
            runs.append(("pixels", pixel_env(max(args.pixel_kills, 2)), args.pixel_kills, "gp"))
        for name, env_cfg, kills, agent in runs:
            res = check(name, env_cfg, kills, agent, args.seed, work)
            print(json.dumps(res), flush=True)
            ok &= res["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
