"""REST load from ``wrk`` (Debian's package, installed with apt-get when missing) and a Lua script that
replays pre-made requests: the generator costs the shared cores a few microseconds per request, where a
Python client costs milliseconds."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkResult", "ensure_wrk", "run_wrk", "write_requests"]

SCRIPT = Path(__file__).resolve().with_name("requests.lua")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def ensure_wrk() -> str:
    """The path of ``wrk``, installing Debian's package first if needed."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("could not install wrk (apt-get install wrk)")
    return found


def write_requests(requests: list[tuple[str, str, bytes]], content_type: str = "application/json") -> Path:
    """A temporary directory of ``<i>.req`` files (method, path, content type, body) for ``requests.lua``."""
    folder = Path(tempfile.mkdtemp(prefix="trackin-wrk-"))
    for i, (method, path, body) in enumerate(requests, start=1):
        (folder / f"{i}.req").write_bytes(f"{method} {path} {content_type}\n".encode() + body)
    return folder


def run_wrk(
    url: str, folder: Path, count: int, *, connections: int, seconds: float, key: str | None = None
) -> WrkResult:
    """``wrk -t1 -c<connections>`` for ``seconds`` over the requests in ``folder`` (``key``: sent as
    ``Authorization: Bearer``)."""
    command = [
        ensure_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(SCRIPT), url, "--", str(folder), str(count), *([key] if key else []),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, micros, p50, p99, errors = line.split()[1:]
    return WrkResult(int(n), int(micros) / 1e6, float(p50) / 1e3, float(p99) / 1e3, int(errors))
