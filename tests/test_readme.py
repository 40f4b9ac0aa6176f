"""The README opens with its two commands and its loop runs as written."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    install = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && "
    explore = '.venv/bin/ie-explore --agent gp --logdir runs/gp && echo "tensorboard --logdir runs/gp/tb"'
    assert block[0] == install + explore
    assert block[1] == install + ".venv/bin/python -m pytest"
    assert README.index("```bash") < README.index("\n## ")  # before any section
    assert len(README.splitlines()) <= 200


def test_readme_loop_runs_and_beats_random():
    code = re.search(r"## The loop\n\n```python\n(.*?)```", README, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert summary["mean_true_relevance"] > 0.15  # random: 0.05 expected on this world
    assert summary["distinct_relevant_concepts"] >= 1
