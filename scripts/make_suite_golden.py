"""Write (or check) the task suite's golden values: ``tests/golden/suite.json``.

    python scripts/make_suite_golden.py            # regenerate every registered id
    python scripts/make_suite_golden.py --check    # report ids whose figures moved (exit 1)
    python scripts/make_suite_golden.py --new-only # add records for ids the file lacks; keep the others as they are

Regenerate only together with a new version of every id whose figures moved and a ``CHANGELOG.md``
line saying why (``tests/test_suite_golden.py`` fails until then).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ie_env import suite  # noqa: E402
from ie_env.config import atomic_write_text  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "suite.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    p.add_argument("--out", default=str(GOLDEN))
    p.add_argument("--new-only", action="store_true",
                   help="write records only for registered ids missing from the file; every existing record is kept")
    args = p.parse_args(argv)
    if args.check:
        problems = suite.check_golden(json.loads(Path(args.out).read_text()))
        for tid, msgs in problems.items():
            print(f"{tid}:\n  " + "\n  ".join(msgs))
        print("golden values match" if not problems else f"{len(problems)} task(s) moved")
        return 1 if problems else 0
    if args.new_only and Path(args.out).is_file():
        data = json.loads(Path(args.out).read_text())
        missing = [tid for tid in suite.TASKS if tid not in data["tasks"]]
        data["tasks"].update({tid: suite.golden_record(tid) for tid in missing})
        kept = len(data["tasks"]) - len(missing)
        print(f"adding {', '.join(missing) or 'nothing'}; keeping {kept} records as they are")
    else:
        data = {"format": 1, "tolerance": suite.TOLERANCE, "episodes": suite.GOLDEN_EPISODES,
                "tasks": {tid: suite.golden_record(tid) for tid in suite.TASKS}}
    atomic_write_text(args.out, json.dumps(data, indent=1, sort_keys=True) + "\n")
    for tid, rec in data["tasks"].items():
        extra = f", return {rec['random_return']:.3f}" if "random_return" in rec else ""
        print(f"{tid}: world {rec['world_hash']}, random gap closed {rec['random_gap_closed']:+.5f}{extra}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
