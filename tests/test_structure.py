"""The shape docs/architecture.md promises: an acyclic module graph, one-way layers, small modules.

Imports are read from the source (every ``import``, including those under ``TYPE_CHECKING`` and inside
functions: a cycle there is still two modules that cannot be understood one without the other).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "trackin.models": ROOT / "models",
    "trackin.service": ROOT / "service",
    "trackin.replay": ROOT / "replay",
}
PACKAGES["trackin_client"] = ROOT / "client" / "trackin_client"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    found["trackin"] = ROOT / "trackin" / "__init__.py"
    found["trackin.cli"] = ROOT / "trackin" / "cli.py"
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The project's modules that ``name`` imports (``from package import module`` included)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports(name, path, known)) for name, path in found.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    # A package's __init__ re-exporting its own modules is not a cycle of meaning; anything else is.
    real = [c for c in cycles if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert not real, "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("trackin.models", ("trackin.service", "trackin.replay", "trackin_client")),
        ("trackin_client", ("trackin.",)),
        ("trackin.service", ("trackin.replay", "trackin_client")),
        ("trackin.service.domain", ("trackin.service.durability", "trackin.service.transport.routes")),
        ("trackin.service.store", ("trackin.service.domain", "trackin.service.transport")),
    ],
)
def test_layers_import_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = {
        (name, target)
        for name, targets in graph().items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if target.startswith(forbidden)
    }
    assert not wrong, sorted(wrong)
