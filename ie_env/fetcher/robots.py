"""``X-Robots-Tag`` opt-outs: ``noai`` / ``noimageai``, globally or scoped to a user agent.

Each header line is a comma-separated list of directives; a ``name:`` prefix scopes the directives
that follow it (until the next prefix) to that crawler, as in ``X-Robots-Tag: otherbot: noai,
noimageai``. A line applies to this fetcher when unscoped, scoped to ``*``, or scoped to its token.
"""

from __future__ import annotations

from typing import Iterable

# Directives that carry a value after a colon; their colon does not open a user-agent scope.
_VALUED = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}


def parse_x_robots(lines: Iterable[str]) -> list[tuple[str | None, str]]:
    """``[(scope or None, directive)]`` from the header lines, directives lower-cased."""
    out: list[tuple[str | None, str]] = []
    for line in lines:
        scope: str | None = None
        for raw in str(line).split(","):
            token = raw.strip()
            if not token:
                continue
            if ":" in token:
                head, tail = token.split(":", 1)
                head_l = head.strip().lower()
                if head_l not in _VALUED:
                    scope = head_l
                    token = tail.strip()
                    if not token:
                        continue
            out.append((scope, token.split(":", 1)[0].strip().lower()))
    return out


def blocked_by_robots(lines: Iterable[str], token: str, directives: Iterable[str]) -> str | None:
    """The directive that forbids this fetcher from using the image, or None."""
    wanted = {d.lower() for d in directives}
    me = token.lower()
    for scope, directive in parse_x_robots(lines):
        if directive in wanted and scope in (None, "*", me):
            return directive
    return None
