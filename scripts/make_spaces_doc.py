"""Write ``docs/spaces.md`` (the observation and action spaces of every action mode) from the code."""

from __future__ import annotations

from pathlib import Path

from ie_env.spaces_doc import spaces_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "spaces.md"
    out.write_text(spaces_markdown())
    print(f"wrote {out}")
