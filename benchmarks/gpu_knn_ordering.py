"""The k-NN ordering at the larger SSL budget on one GPU, self-contained: gp, random and target-only,
5 seeds, with paired differences (ie_experiments.paired), in about 8 minutes.

    python3 benchmarks/gpu_knn_ordering.py --out "$OUT"              # on the GPU machine, from the repo root
    python3 benchmarks/gpu_knn_ordering.py --out /tmp/x --dry-run    # print the plan and check the setup

What it does, in order (docs/gpu.md says how to prepare and launch it):

1. Installs what the machine lacks from the wheels carried in ``--wheels`` (default ``.whl/``):
   gymnasium, farama-notifications, cloudpickle, stable-baselines3, sb3-contrib and, when missing,
   requests and its dependencies; with ``pip --no-index --no-deps --target`` into a folder of its own
   (the machine's Python is not modified). No network.
2. Checks that the project imports and that CUDA is there (``--allow-cpu`` runs anyway, for tests).
3. Runs ``ie-compare`` on ``--config`` (default ``experiments/configs/knn_ordering.yaml``: batch 256,
   12 epochs per iteration, about 1,000 SSL steps a run) with ``--seeds`` seeds (default 5) and
   ``--workers`` worker processes sharing the GPU, in a scratch folder.
4. Copies into ``--out``: ``results.json`` (with ``paired``: gp − random, gp − target_only and
   random − target_only of final k-NN and linear-probe accuracy, bootstrap 95% intervals over
   seeds), ``results.md``, the figures, each run's ``summary.json`` and ``config.yaml`` (no
   checkpoints), and ``device.json`` (GPU, versions, wall time, the command).

Exit status: ie-compare's (0 all runs finished, 1 some failed, 2 bad input), or 3 when the setup
(wheels, imports, CUDA) is not right.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "knn_ordering.yaml"
#: (module, distribution) the project needs beyond the GPU machine's torch / timm / scikit-learn stack.
NEEDED = [
    ("farama_notifications", "farama_notifications"),
    ("cloudpickle", "cloudpickle"),
    ("gymnasium", "gymnasium"),
    ("stable_baselines3", "stable_baselines3"),
    ("sb3_contrib", "sb3_contrib"),
    ("certifi", "certifi"),
    ("idna", "idna"),
    ("urllib3", "urllib3"),
    ("charset_normalizer", "charset_normalizer"),
    ("requests", "requests"),
]
COPIED = ("results.json", "results.md", "compare.yaml", "reward.png", "knn.png", "regret.png")
RUN_FILES = ("summary.json", "config.yaml", "error.txt")


def log(msg: str) -> None:
    print(f"[gpu-knn-ordering] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="where results go (default $OUT)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--agents", default="gp,random", help="exploring agents (target-only is added)")
    p.add_argument("--workers", type=int, default=10, help="ie-compare worker processes sharing the GPU")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default CPUs // workers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of carried wheels")
    p.add_argument("--site", default="", help="where wheels are installed (default: a folder in the scratch dir)")
    p.add_argument("--work", default="", help="scratch folder for the run folders (default: a temp folder)")
    p.add_argument("--no-install", action="store_true", help="install nothing (the environment is complete)")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (tests, CPU checks)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-time target; exceeding it is reported")
    p.add_argument("--dry-run", action="store_true", help="check the setup and print the plan; run nothing")
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out is required when $OUT is not set")
    if args.seeds < 1 or args.workers < 0:
        p.error("--seeds must be >= 1 and --workers >= 0")
    if not Path(args.config).is_file():
        p.error(f"--config {args.config} does not exist")
    return args


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001  (a broken install counts as missing)
        return False


def install_missing(wheels: Path, site: Path) -> list[str]:
    """Install each missing module of :data:`NEEDED` from ``wheels`` into ``site`` (put first on
    ``sys.path`` and ``PYTHONPATH``); returns what was installed. Raises if a wheel is missing."""
    site.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()
    missing = [(m, d) for m, d in NEEDED if not _importable(m)]
    if not missing:
        return []
    files = []
    for module, dist in missing:
        found = sorted(wheels.glob(f"{dist}-*.whl")) + sorted(wheels.glob(f"{dist.replace('_', '-')}-*.whl"))
        if not found:
            raise FileNotFoundError(
                f"{module} is not installed and no {dist}-*.whl is in {wheels} (docs/gpu.md: pip download ... -d .whl)"
            )
        files.append(str(found[-1]))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(site),
        *files,
    ]
    log("installing " + ", ".join(Path(f).name for f in files))
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    still = [m for m, _ in missing if not _importable(m)]
    if still:
        raise RuntimeError(f"installed the wheels but cannot import {', '.join(still)}")
    return [Path(f).name for f in files]


def device_record() -> dict:
    import torch

    rec = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        rec["gpu"] = torch.cuda.get_device_name(0)
        rec["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return rec


def copy_results(work: Path, out: Path) -> list[str]:
    """The comparison's result files and each run's summary and config (no checkpoints) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in COPIED:
        if (work / name).is_file():
            shutil.copy2(work / name, out / name)
            copied.append(name)
    for run in sorted((work / "runs").glob("*/seed*")):
        for name in RUN_FILES:
            if (run / name).is_file():
                dest = out / "runs" / run.parent.name / run.name / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, dest)
                copied.append(str(dest.relative_to(out)))
    return copied


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    scratch = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-knn-ordering-"))
    site = Path(args.site) if args.site else scratch / "site"
    installed: list[str] = []
    try:
        if not args.no_install:
            installed = install_missing(Path(args.wheels), site)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        from ie_env.checkout import use_checkout_names

        use_checkout_names(ROOT)  # ie_agents, ie_experiments from this checkout when not installed
        from ie_experiments import compare  # noqa: F401  (the project imports)

        dev = device_record()
    except Exception as exc:  # noqa: BLE001  (any setup failure: exit 3 with its message)
        log(f"setup failed: {type(exc).__name__}: {exc}")
        return 3
    if not dev["cuda"] and not args.allow_cpu:
        log("CUDA is not available; this check is for a GPU (pass --allow-cpu to run on the CPU anyway)")
        return 3
    cmd = [
        "--config",
        args.config,
        "--agents",
        args.agents,
        "--seeds",
        str(args.seeds),
        "--out",
        str(scratch / "compare"),
        "--workers",
        str(args.workers),
        "--overwrite",
        "--quiet",
        "--set",
        "keep_checkpoints=1",
        "--set",
        "log_images=false",
        *[x for o in args.overrides for x in ("--set", o)],
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    runs = args.seeds * (len([a for a in args.agents.split(",") if a.strip()]) + 1)
    log(f"device: {json.dumps(dev)}; installed: {installed or 'nothing'}")
    log(f"plan: ie-compare {' '.join(cmd)}  ({runs} runs)")
    if args.dry_run:
        return 0
    from ie_experiments.compare import main as compare_main

    code = compare_main(cmd)
    wall = time.time() - t0
    copied = copy_results(scratch / "compare", out)
    record = {
        **dev,
        "installed": installed,
        "command": "ie-compare " + " ".join(cmd),
        "runs": runs,
        "exit_status": code,
        "wall_seconds": round(wall, 1),
        "budget_seconds": args.budget_s,
        "within_budget": wall <= args.budget_s,
        "files": copied,
    }
    res_path = scratch / "compare" / "results.json"
    if res_path.is_file():
        res = json.loads(res_path.read_text())
        record["paired"] = [
            {
                "agent": r["agent"],
                "baseline": r["baseline"],
                **{m: {k: r[m][k] for k in ("mean", "low", "high", "n")} for m in res["paired"]["metrics"]},
            }
            for r in res["paired"]["comparisons"]
        ]
    (out / "device.json").write_text(json.dumps(record, indent=2))
    log(f"done in {wall:.0f} s (target {args.budget_s:.0f} s), exit {code}; results in {out}")
    if (out / "results.md").is_file():
        print((out / "results.md").read_text())
    if not args.work:
        shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
