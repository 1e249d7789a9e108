"""Ports for test servers that restart on the same port, and whether a reply on a port is our process's.

The kernel hands out ports of its ephemeral range (``net.ipv4.ip_local_port_range``) both to ``bind(port 0)``
and, as the local end, to every outgoing connection of every process on the machine. A server stopped for a
restart leaves its port free for a moment; in that range any connection (this suite's clients, another
suite on the same machine) may take it, and the restart then fails to bind. So servers get a port below the
range, which only an explicit bind takes. And a reply on the port may still come from another process that
bound it meanwhile: `listens` tells whether the port's listening socket belongs to our child process.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path

__all__ = ["free_port", "listens"]

_LOWEST = 10_000  # below: well-known and registered services


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 49152, 65535  # IANA's range, the BSDs' and macOS's default
    return low, high


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ephemeral range when the range leaves room for that."""
    low, high = _ephemeral_range()
    spans = [range(_LOWEST, low), range(high + 1, 65536)]
    candidates = max(spans, key=len)
    if len(candidates) >= 1000:
        for port in random.sample(candidates, 100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on TCP ``port`` (Linux /proc; True where /proc
    cannot tell)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes: set[str] = set()
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fds = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fds.iterdir())
    except OSError:
        return False
    for entry in entries:
        with contextlib.suppress(OSError):
            if os.readlink(entry) in inodes:
                return True
    return False
