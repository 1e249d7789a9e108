"""A real ``nats-server -js`` process per test module, for tests that must see NATS fail and come back.

Like `tests.support.redis_server.RedisServer`: a free port, its own store directory (JetStream file
storage, so a restart keeps the log and the buckets), and restarts on the same port and directory.

Example::

    with NatsServer(tmp_path) as server:
        ...  # nats://127.0.0.1:<port>
        server.stop()      # SIGTERM: clients see the connection drop
        server.start()     # same port, same JetStream store
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port, listens

__all__ = ["NatsServer", "nats_server_binary"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def nats_server_binary() -> str | None:
    """Path of ``nats-server`` (``$NATS_SERVER`` wins), or None so callers can skip cleanly."""
    return os.environ.get("NATS_SERVER") or shutil.which("nats-server")


class NatsServer:
    """One ``nats-server -js`` child process bound to 127.0.0.1, storing JetStream in ``directory``."""

    def __init__(self, directory: Path) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server not found; install it or set $NATS_SERVER")
        self.binary = binary
        self.directory = Path(directory)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start (or restart) and wait until the port answers with NATS's INFO line."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "nats.log"
        self._proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.directory / "js"),
             "-l", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self._proc = None
                raise RuntimeError(f"nats-server exited at start on port {self.port}:\n{tail}")
            if _answers_info(self.port) and listens(self._proc.pid, self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"nats-server on port {self.port} did not answer within {_START_TIMEOUT}s")

    def stop(self) -> None:
        """SIGTERM: NATS closes its clients' connections and flushes JetStream."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL)

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def _answers_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(64).startswith(b"INFO")
    except OSError:
        return False
