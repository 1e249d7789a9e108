"""Start test servers by forking a process that has already imported the service.

Most of a ``trackin serve`` start is imports (torch, numba with scipy, FastAPI and pydantic: about 3 s of
CPU of a 4 s start on 2 cores), and the suite starts, restarts and crashes about 150 servers. A fork server
pays the imports once per pytest worker: it imports the service's modules and then, for each start, forks a
child that runs exactly what ``python -m trackin.service.cli serve ...`` runs (`trackin.service.cli.main`),
with the environment, working directory and log file the test asked for. The child is a real process with
its own pid, sockets, signal handlers and exit code, so SIGTERM drains, SIGKILL crashes and ``/readyz``
behave as for a fresh interpreter. What it shares with its siblings is only what the imports left behind
(nothing has run yet: the fork server checks before every fork that no thread has started since the imports,
as forking a process with running threads is unsafe).

The fork server is not the children's parent from the test's point of view, so it reports each child's exit
(as `subprocess.Popen.returncode` would read: ``-N`` for signal N) on its stdout, and `ForkedProcess` offers
the part of `subprocess.Popen` that `tests.support.server.TrackinServer` uses. ``TRACKIN_TEST_FORK=0``
starts every server as its own interpreter instead; the packaging and Prometheus tests always run the
installed ``trackin`` command.

Protocol (JSON lines): the test writes ``{"argv": [...], "env": {...}, "cwd": ..., "log": ...}``; the fork
server answers ``{"pid": n}`` (or ``{"error": "..."}``), and later ``{"exit": n, "code": c}`` per child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ForkServer", "ForkedProcess", "fork_server"]

# What ``trackin serve`` imports before it answers; modules it imports later still load in each child.
_PRELOAD = (
    "uvicorn",
    "trackin.service.cli",
    "trackin.service.app",
    "trackin.service.connections",
    "trackin.service.settings",
    "trackin.service.transport.ws",
    "trackin.service.transport.ws_protocol",
)


class ForkedProcess:
    """A child of the fork server, seen through the part of `subprocess.Popen`'s interface tests use."""

    def __init__(self, server: ForkServer, pid: int, args: Sequence[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._server.exit_code(self.pid, timeout=timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # the child stays a zombie until the fork server reaps it and reports it, so the pid is not reused
        # before `poll` can see the exit
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The test side: one fork-server process, its answers read by a thread into ``pid -> exit code``."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forkserver"],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._requests: IO[bytes] = self._proc.stdin
        self._lock = threading.Lock()  # one start at a time: answers to starts come in request order
        self._changed = threading.Condition()
        self._exits: dict[int, int] = {}
        self._started: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, answers: IO[bytes]) -> None:
        for line in answers:
            message = json.loads(line)
            with self._changed:
                if "exit" in message:
                    self._exits[message["exit"]] = message["code"]
                else:
                    self._started.append(message)
                self._changed.notify_all()
        with self._changed:
            self._started.append({"error": f"fork server exited with {self._proc.wait()}"})
            self._changed.notify_all()

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> ForkedProcess:
        """Fork a child that runs ``argv`` (``python -m trackin.service.cli ...``) with stdout and stderr
        appended to ``log``."""
        if list(argv[1:3]) != ["-m", "trackin.service.cli"]:
            raise ValueError(f"the fork server runs trackin.service.cli only, not {argv}")
        if self._proc.poll() is not None:
            raise RuntimeError(f"fork server exited with {self._proc.returncode}")
        request = {"argv": list(argv[3:]), "env": dict(env), "cwd": str(cwd), "log": str(log)}
        with self._lock:
            self._requests.write(json.dumps(request).encode() + b"\n")
            with self._changed:
                self._changed.wait_for(lambda: bool(self._started), timeout=30)
                answer: dict[str, Any] = (
                    self._started.pop(0) if self._started else {"error": "no answer in 30 s"}
                )
        if "pid" not in answer:
            raise RuntimeError(f"fork server: {answer['error']}")
        return ForkedProcess(self, answer["pid"], argv)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits, timeout=timeout)
            return self._exits.get(pid)


_shared: ForkServer | None = None
_shared_lock = threading.Lock()


def fork_server(cwd: Path, env: Mapping[str, str]) -> ForkServer | None:
    """This test process's fork server (started on first use), or None when ``TRACKIN_TEST_FORK=0``."""
    global _shared
    if os.environ.get("TRACKIN_TEST_FORK", "1") == "0":
        return None
    with _shared_lock:
        if _shared is None:
            _shared = ForkServer(cwd, {k: v for k, v in env.items() if not k.startswith("TRACKIN_")})
        return _shared


# ----- the fork server's own process ---------------------------------------------------------------------


def _run_child(request: dict[str, Any], inherited: Sequence[int]) -> None:
    """In the forked child: become ``python -m trackin.service.cli <argv>`` and never return."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        for fd in inherited:
            os.close(fd)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own descriptors
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["trackin.service.cli", *request["argv"]]
        import numpy

        numpy.random.seed()  # a fresh interpreter's global numpy generator is seeded from entropy

        from trackin.service.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            import atexit
            import logging

            atexit._run_exitfuncs()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1


def _serve() -> None:
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the tests, which stop their servers
    for name in _PRELOAD:
        importlib.import_module(name)
    # numpy's OpenBLAS starts its thread pool on import; it stops the pool before a fork (pthread_atfork)
    # and the child starts its own. Any other thread would be copied half-way through whatever it was doing.
    imported_with = _threads()
    answers = os.fdopen(1, "wb", buffering=0)
    pidfds: dict[int, int] = {}  # pidfd -> pid

    def say(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message).encode() + b"\n")

    pending = b""
    while True:
        ready, _, _ = select.select([0, *pidfds], [], [])
        for fd in ready:
            if fd == 0:
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    return  # the test process is gone; running children carry on, as Popen's would
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if _threads() > imported_with:
                        say({"error": f"{_threads()} threads: forking now is unsafe"})
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _run_child(json.loads(line), list(pidfds))
                    pidfds[os.pidfd_open(pid)] = pid
                    say({"pid": pid})
            else:
                pid = pidfds.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                say({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _serve()
