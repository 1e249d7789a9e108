"""A real ``trackin serve`` process per fixture, for end-to-end tests over loopback.

In-process ASGI clients skip what users actually hit: uvicorn's HTTP and WebSocket parsing, TCP
backpressure, signals and process exit codes. So tests start the real command line
(``python -m trackin.service.cli serve``) on a free port, in its own data directory, with extra ``TRACKIN_*``
variables or flags, and wait for ``/readyz``. The process is forked from a fork server that has already
imported the service (tests/support/forkserver.py: a start costs about a quarter of a fresh interpreter's);
``TRACKIN_TEST_FORK=0`` starts a fresh interpreter each time. Output goes to a log file whose tail is put
into every error this helper raises (and into failing tests' reports by the service suite's conftest).

Example::

    with TrackinServer(tmp_path, env={"TRACKIN_MAX_WS_IN_FLIGHT": "2"}) as server:
        httpx.get(f"{server.url}/healthz")
        websockets.connect(server.ws_url)      # ws://127.0.0.1:<port>/v1/ws
        server.stop()                          # SIGTERM, returns the exit code
        server.start()                         # same port and data directory
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from tests.support.forkserver import ForkedProcess, fork_server
from tests.support.ports import free_port, listens

__all__ = ["ServerError", "Servers", "TrackinServer"]

_REPO = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 40.0  # SIGTERM to exit; a test server drains in seconds, this only bounds a hang
_TAIL = 4000


class ServerError(RuntimeError):
    """The server did not start, or did not stop as asked; the message ends with its log's tail."""


class TrackinServer:
    """One ``trackin serve`` child process bound to 127.0.0.1.

    Args:
        data_dir: the service's ``--data-dir``; the log (``trackin-serve.log``) is written there too.
        env: extra environment (``TRACKIN_*`` settings); inherited ``TRACKIN_*`` variables are dropped so
            that the developer's shell cannot change what a test runs against.
        args: extra command-line arguments after ``serve``.
        store: ``--store`` (``memory`` by default: nothing written); None leaves it to the settings.
        device: ``--device``; ``cpu`` so results compare with an in-process CPU engine.
        port: a fixed port; by default a free one is picked (and re-picked if another process wins it).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        store: str | None = "memory",
        device: str = "cpu",
        port: int | None = None,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.env = dict(env or {})
        self.args = list(args)
        self.store = store
        self.device = device
        self.start_timeout = start_timeout
        self._pick_port = port is None
        self.port = port if port is not None else free_port()
        self.log_path = self.data_dir / "trackin-serve.log"
        self._proc: subprocess.Popen[bytes] | ForkedProcess | None = None
        self._log: IO[bytes] | None = None
        self.returncode: int | None = None

    # ----- addresses and status ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; stable across restarts."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket ingestion endpoint, ``ws://127.0.0.1:<port>/v1/ws``."""
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "trackin.service.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        cmd += ["--data-dir", str(self.data_dir), "--device", self.device]
        if self.store is not None:
            cmd += ["--store", self.store]
        return cmd + self.args

    def logs(self) -> str:
        """Everything the process (and earlier starts of it) printed."""
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def describe(self) -> str:
        """Who and where, with the log's tail: for assertion and error messages."""
        state = "running" if self.running else f"exited with {self.returncode}"
        tail = self.logs()[-_TAIL:]
        return f"trackin serve on {self.url} (pid {self.pid}, {state})\n--- log tail ---\n{tail}"

    # ----- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start (or restart) and wait until ``/readyz`` answers 200."""
        if self.running:
            return self
        for _ in range(3):
            try:
                self._start_once()
            except _PortTakenError:
                self.port = free_port()
                continue
            self._pick_port = False  # later restarts keep the port clients know
            return self
        raise ServerError(f"no free port found in 3 tries\n{self.describe()}")

    def _start_once(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKIN_")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"===== {' '.join(self.command())}\n".encode())
        self._log.flush()
        started_at = self.log_path.stat().st_size
        self.returncode = None
        forks = fork_server(_REPO, os.environ)
        proc: subprocess.Popen[bytes] | ForkedProcess
        if forks is not None:
            proc = forks.spawn(self.command(), env=env, cwd=_REPO, log=self.log_path)
        else:
            proc = subprocess.Popen(
                self.command(),
                cwd=_REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    self.returncode = code
                    output = self.logs()[started_at:]
                    if self._pick_port and "address already in use" in output:
                        raise _PortTakenError
                    raise ServerError(f"trackin serve exited at start with {code}\n{self.describe()}")
                with contextlib.suppress(httpx.TransportError):
                    # 200 from the port, and the port's listener is this process (not one that took the
                    # port while this one failed to bind it)
                    if client.get(f"{self.url}/readyz").status_code == 200 and listens(proc.pid, self.port):
                        return
                time.sleep(0.05)
        self.kill()
        raise ServerError(f"/readyz not 200 within {self.start_timeout}s\n{self.describe()}")

    def terminate(self) -> None:
        """Send SIGTERM and return at once (see `wait`): for tests that act during the shutdown."""
        self.send_signal(signal.SIGTERM)

    def send_signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def wait(self, timeout: float = _STOP_TIMEOUT) -> int:
        """Wait for the process to exit; its exit code. Raises `ServerError` (after SIGKILL) on timeout."""
        proc = self._proc
        if proc is None:
            return self.returncode if self.returncode is not None else 0
        try:
            self.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.returncode = proc.wait()
            raise ServerError(f"did not exit within {timeout}s; killed\n{self.describe()}") from None
        return self.returncode

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int:
        """Graceful stop: SIGTERM, then wait for the exit; the exit code (0 for a clean shutdown)."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> int:
        """Crash stop: SIGKILL (nothing is flushed or answered)."""
        self.send_signal(signal.SIGKILL)
        return self.wait()

    def restart(self) -> Self:
        """Graceful stop, then start again on the same port and data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop if running (killing it if it does not stop) and close the log."""
        try:
            if self.running:
                self.stop()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # a failed start must not leak its log file (a ResourceWarning hides the error)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Servers:
    """Dedicated servers for one test (a fixture's value): each in its own directory under ``base``, with
    ``env`` under each one's own; `close` stops them all. ``started`` lets reports show their logs."""

    def __init__(self, base: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.base = Path(base)
        self.env = dict(env or {})
        self.started: list[TrackinServer] = []

    def start(self, env: Mapping[str, str] | None = None, **kwargs: Any) -> TrackinServer:
        directory = self.base / f"server-{len(self.started)}"
        server = TrackinServer(directory, env={**self.env, **(env or {})}, **kwargs)
        self.started.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.started:
            server.close()


class _PortTakenError(Exception):
    """Another process bound the port between `free_port` and the server's bind."""
