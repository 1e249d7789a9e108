"""A real ``redis-server`` process per test, for tests that must see Redis fail and come back.

Mocks cannot show what a store does when the server dies mid-request or replays its AOF on restart,
so tests run the real binary: on a free port, in its own directory, with ``appendfsync always`` so
that every acknowledged write survives even `RedisServer.kill` (SIGKILL). Restarting keeps the port
and directory, so the same client URL reconnects to the same data.

Example::

    with RedisServer(tmp_path) as server:
        store = RedisStore(server.url)
        ...
        server.kill()      # crash: nothing acknowledged is lost
        server.start()     # same port, same AOF
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

__all__ = ["RedisServer", "redis_server_binary"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` (``$REDIS_SERVER`` wins), or None so callers can skip cleanly."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


class RedisServer:
    """One ``redis-server`` child process bound to 127.0.0.1, with AOF on, in ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server not found; install it or set $REDIS_SERVER")
        self.binary = binary
        self.base_directory = Path(directory)
        self._pick_port = port is None  # until the first start, a lost port race may pick another
        self.port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        """Where the AOF and log live: one subdirectory per port, so servers can share a tmp_path."""
        return self.base_directory / f"redis-{self.port}"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``; stable across restarts."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> Self:
        """Start (or restart) the server and wait until it answers PING (AOF fully loaded)."""
        if self.running:
            return self
        for _ in range(3):
            try:
                self._start_once()
            except _PortTakenError:
                self.port = free_port()
                continue
            self._pick_port = False
            return self
        raise RuntimeError("redis-server could not find a free port in 3 tries")

    def _start_once(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self._proc = None
                if self._pick_port and "already in use" in tail:
                    raise _PortTakenError
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{tail}")
            if _answers_ping(self.port) and listens(self._proc.pid, self.port):
                return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {_START_TIMEOUT}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Redis flushes the AOF and exits."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Crash stop (SIGKILL): only what the AOF already holds survives."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> Self:
        """Graceful stop, then start on the same port and directory."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers, like a hung server."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.send_signal(sig)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _PortTakenError(Exception):
    """Another process bound the port between `free_port` and redis-server's bind."""


def _answers_ping(port: int) -> bool:
    """True once the server replies +PONG (it replies -LOADING while replaying the AOF)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
