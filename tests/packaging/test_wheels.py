"""Both distributions, built as wheels and installed into fresh virtual environments, as a user gets them.

The server wheel must install only the namespaced name ``trackin`` (a user's own ``models.py`` and
``service.py`` beside it must not matter); the client wheel must pull in neither torch, nor the server's
web stack, nor redis. The two installed copies then talk to each other over a real socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_SOURCES = ["pyproject.toml", "README.md", "trackin", "models", "service", "replay"]
FORBIDDEN_FOR_CLIENT = {"torch", "fastapi", "starlette", "uvicorn", "redis", "numpy", "pydantic", "trackin"}
SHADOWS = {
    "models.py": "raise RuntimeError('the user\\'s own models.py was imported')\n",
    "service.py": "raise RuntimeError('the user\\'s own service.py was imported')\n",
}

pytestmark = pytest.mark.timeout(600)

# What the installed copies import must come from their venvs, not from a checkout the caller put on the
# path (the development setup exports PYTHONPATH=<checkout>): every process here runs without it.
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(sources: Path, out: Path) -> Path:
    """A wheel built from a copy of the tracked sources (so the checkout gets no build/ or egg-info)."""
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        out,
        sources,
    )
    [wheel] = out.glob("*.whl")
    return wheel


def site_packages(venv: Path) -> Path:
    [found] = (venv / "lib").glob("python3*/site-packages")
    return found


def installed_names(venv: Path) -> set[str]:
    """Top-level entries of a venv's site-packages, without pip's own and the dependency link."""
    own = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth", "deps.pth"}
    return {p.name for p in site_packages(venv).iterdir() if p.name not in own and "pip-" not in p.name}


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the server wheel; its dependencies come from this venv through one .pth line."""
    tmp = tmp_path_factory.mktemp("server-wheel")
    src = tmp / "src"
    for name in SERVER_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    wheel = build_wheel(src, tmp / "dist")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    # Only paths: .pth files found on an added path are not run, so this venv's editable finders stay off.
    (site_packages(venv) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "--quiet", "--no-deps", wheel
    )
    return venv


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the client wheel and whatever pip resolves for it from the package index."""
    tmp = tmp_path_factory.mktemp("client-wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "client", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    wheel = build_wheel(src, tmp / "dist")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin/python", "-m", "pip", "install", "--quiet", wheel)
    return venv


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A working directory holding a user's own modules with the generic names."""
    for name, text in SHADOWS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_server_wheel_installs_one_namespaced_name(server_venv: Path) -> None:
    names = installed_names(server_venv)
    assert {n for n in names if not n.endswith(".dist-info")} == {"trackin"}
    assert {n.split("-")[0] for n in names if n.endswith(".dist-info")} == {"trackin"}
    assert (server_venv / "bin/trackin").exists(), "the console script"


def test_server_wheel_runs_beside_generic_user_modules(server_venv: Path, user_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import numpy as np
        import trackin
        from trackin.models.engine import Engine
        from trackin.models.specs import StreamSpec
        assert trackin.__file__.startswith(%r), trackin.__file__
        engine = Engine()
        engine.add("s1", StreamSpec.model_validate({"model": {"family": "linear", "in_dim": 2}}))
        x, y = np.array([1.0, 2.0], np.float32), np.array([3.0], np.float32)
        first = engine.observe(["s1"], [x], [y])
        second = engine.observe(["s1"], [x], [y])
        print(first[0].prediction[0], second[0].prediction[0])
        """
    ).replace("%r", repr(str(server_venv)))
    out = run(server_venv / "bin/python", "-c", script, cwd=user_dir).split()
    assert float(out[0]) == 0.0, "zero weights predict zero"
    assert float(out[1]) != 0.0, "a step was taken"
    assert "usage" in run(server_venv / "bin/trackin", "--help", cwd=user_dir)


def test_replay_runs_in_process_without_the_client_or_bench_extras(server_venv: Path, user_dir: Path) -> None:
    ticks = user_dir / "ticks.csv"
    prices = [100 + 0.25 * ((i * 7919) % 13 - 6) for i in range(300)]
    ticks.write_text(
        "DateTime,Price,Volume\n"
        + "".join(f"2013-09-01 17:00:{i // 10:02d}.{i % 10}00,{p},1\n" for i, p in enumerate(prices))
    )
    out = run(server_venv / "bin/trackin", "replay", ticks, "--in-process", "--no-progress", cwd=user_dir)
    assert "observations   300" in out


def test_client_wheel_pulls_in_neither_torch_nor_the_server(client_venv: Path) -> None:
    names = {n.lower().split("-")[0].removesuffix(".dist") for n in installed_names(client_venv)}
    assert not names & FORBIDDEN_FOR_CLIENT, sorted(names & FORBIDDEN_FOR_CLIENT)
    assert {"trackin_client", "httpx", "msgspec", "websockets"} <= names


@pytest.fixture
def installed_server(server_venv: Path, user_dir: Path) -> Iterator[str]:
    """The server from its wheel, on a free port, started in the user's directory. On the torch rounds:
    this is the client's and the server's packaging, and compiling the fused kernels in a fresh install
    (about a minute here: the wheel's copy has no numba cache) is covered in process by
    ``test_server_wheel_runs_beside_generic_user_modules``."""
    port = free_port()
    with (user_dir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [server_venv / "bin/trackin", "serve", "--port", str(port), "--store", "memory"],
            cwd=user_dir,
            env={**ENV, "TRACKIN_KERNELS": "torch"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # /readyz, not /healthz: until the kernels are compiled (a fresh install has no numba cache) the
        # first observation waits for the compilation, which on a loaded CI machine outlasted the client's
        # 30 s request timeout.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, (user_dir / "server.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the installed server did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_installed_client_talks_to_installed_server(client_venv: Path, installed_server: str) -> None:
    script = textwrap.dedent(
        """
        import sys
        from trackin_client import TrackinClient, TrackinError
        with TrackinClient(sys.argv[1]) as client:
            client.create_stream("s1", {"model": {"family": "linear", "in_dim": 2}})
            client.observe("s1", {"x": [1.0, 2.0], "y": 3.0})
            [result] = client.observe("s1", {"x": [1.0, 2.0], "y": 3.0})
            try:
                client.observe("s1", {"x": [1.0], "y": 3.0})
            except TrackinError as error:
                print(result["step"], result["prediction"], error.status, error.field)
        """
    )
    step, prediction, status, field = run(client_venv / "bin/python", "-c", script, installed_server).split()
    assert (step, status) == ("2", "422")
    assert float(prediction) != 0.0
    assert field.endswith("x")
