"""benchmarks/paper_iteration.py: paper settings by default; ``--tiny`` runs on a CPU without gymnasium or numba."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_iteration.py"


def _module():
    spec = importlib.util.spec_from_file_location("paper_iteration", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defaults_are_the_papers():
    args = _module().parse_args([])
    assert (args.queries, args.images_per_query, args.backbone, args.image_size) == (256, 100, "resnet50", 224)
    assert (args.batch_size, args.epochs, args.pcr, args.k, args.top_images) == (224, 10.0, 2.0, 15, 10)
    assert args.max_steps is None  # one full epoch unless cut short


def test_tiny_run_on_cpu_prints_sane_figures_without_gymnasium_or_numba():
    blocked = ("gymnasium", "numba", "stable_baselines3", "sb3_contrib", "faiss")
    code = (
        "import runpy, sys\n"
        f"for m in {blocked!r}:\n    sys.modules[m] = None  # importing it now fails\n"
        f"sys.argv = ['paper_iteration.py', '--tiny', '--device', 'cpu', '--threads', '1']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    s = res["settings"]
    assert res["device"] == "cpu" and res["tiny"] is True
    assert (s["queries"], s["images_per_query"], s["new_images"], s["mixed_images"], s["train_images"]) == (8, 10, 80, 160, 240)
    assert (s["backbone"], s["image_size"], s["batch_size"], s["optimizer"]) == ("test_resnet", 32, 32, "lars")
    assert math.isclose(s["lr"], 0.8 * 32 / 256) and s["momentum_ema"] == 0.9985 and s["crop_min_scale"] == 0.2
    assert s["k"] == 15 and s["pcr"] == 2.0 and s["epochs_per_iteration"] == 10.0
    timed = [
        "render_seconds", "render_images_per_second", "score_seconds", "score_images_per_second",
        "ssl_seconds_timed", "ssl_seconds_per_step", "ssl_images_per_second", "ssl_epoch_seconds",
        "ssl_seconds_per_iteration", "eval_seconds", "seconds_per_iteration", "minutes_per_iteration",
    ]
    for key in timed:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    assert res["ssl_steps_timed"] == 2 and res["ssl_steps_per_epoch"] == 8  # ceil(240 / 32)
    assert res["ssl_steps_per_iteration"] == 75 and res["ssl_epoch_extrapolated"] is True  # ceil(10 * 240 / 32)
    assert math.isclose(res["ssl_epoch_seconds"], 8 * res["ssl_seconds_per_step"])
    assert math.isclose(res["ssl_seconds_per_iteration"], 75 * res["ssl_seconds_per_step"])
    parts = res["render_seconds"] + 2 * res["score_seconds"] + res["upload_seconds"] + res["ssl_seconds_per_iteration"] + res["eval_seconds"]
    assert math.isclose(res["seconds_per_iteration"], parts)
    assert math.isfinite(res["ssl_loss_first"]) and math.isfinite(res["ssl_loss_last"])
    assert 0.0 <= res["knn_accuracy_k20"] <= 1.0 and -1.0 <= res["mean_query_reward"] <= 1.0
    assert res["gpu_peak_memory_gib"] is None
