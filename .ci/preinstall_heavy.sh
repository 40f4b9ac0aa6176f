#!/usr/bin/env bash
# Install the project's biggest dependencies (torch, torchvision, triton, the nvidia-* CUDA wheels)
# one wheel at a time into the venv given as $1, so that the disk never holds all of their
# downloads and their installed files at once. Resolution is pip's own (a dry run's report).
set -euo pipefail
venv="$1"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
"$venv/bin/pip" install -q --dry-run --ignore-installed --report "$report" -e '.[dev]'
"$venv/bin/python" - "$report" <<'EOF' | while read -r spec; do
import json, re, sys
heavy = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
items = json.load(open(sys.argv[1]))["install"]
for it in items:
    name = it["metadata"]["name"].lower().replace("_", "-")
    if heavy.match(name) and not it.get("is_direct"):
        print(f"{name}=={it['metadata']['version']}")
EOF
  echo "installing $spec"
  "$venv/bin/pip" install -q --no-deps "$spec"
done
