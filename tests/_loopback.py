"""Which processes a test started, and which of their internet sockets leave loopback (Linux /proc).

Tests that start servers of another engine (Ray) use this to prove that every process binds and
talks on 127.0.0.0/8 or ::1 only: a socket bound to a wildcard (0.0.0.0, ::) or to an interface
address, or connected anywhere but loopback, is reported.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

__all__ = ["cmdline", "descendants", "inet_sockets", "non_loopback_sockets"]

_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "06": "TIME_WAIT", "0A": "LISTEN"}


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(*pids: int) -> list[int]:
    """``pids`` and every living process below them."""
    kids, out, todo = _children_map(), [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out and Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(kids.get(pid, []))
    return out


def cmdline(pid: int) -> str:
    """A process's command line as it shows it (Ray workers rewrite theirs to ``ray::TASK``); '' once gone."""
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        return ""


def _address(hex_addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return ip, int(port, 16)


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def inet_sockets(pids: list[int]) -> list[tuple[str, bool]]:
    """Every TCP/UDP socket of ``pids``: a line describing it, and whether it stays on loopback (bound to
    a loopback address, and connected, if at all, to one); a wildcard or interface bind does not."""
    owners: dict[str, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            owners[inode] = pid
    out, tables_read = [], set()
    for pid in pids:
        try:
            netns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if netns in tables_read:
            continue
        tables_read.add(netns)
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            try:
                rows = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                f = row.split()
                if f[9] not in owners:
                    continue
                (lip, lport), (rip, rport) = _address(f[1]), _address(f[2])
                connected = rport != 0 or not rip.is_unspecified
                ok = _loopback(lip) and (not connected or _loopback(rip))
                owner = owners[f[9]]
                state = _TCP_STATES.get(f[3], f[3]) if proto.startswith("tcp") else "udp"
                out.append((f"pid {owner} ({cmdline(owner)[:60]}): {proto} {lip}:{lport} -> {rip}:{rport} {state}", ok))
    return out


def non_loopback_sockets(pids: list[int]) -> list[str]:
    """The sockets of ``pids`` that leave loopback (see :func:`inet_sockets`); [] when none does."""
    return [line for line, ok in inet_sockets(pids) if not ok]
