"""Every PromQL expression trackin ships: dashboard targets, dashboard variable queries, alert rules.

Shared by the static checks (metric names exist) and the end-to-end tests (each expression returns data
from a real Prometheus scraping a real trackin). Grafana template variables are substituted first.

Cluster expressions (the panels of the overview's cluster row, the rules of alerts-cluster.yml) read
series only a cluster replica exports: tests/deploy checks the single-node ones against a single node,
tests/cluster/test_dashboard.py the cluster ones against a real cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

__all__ = [
    "ALERTS",
    "CLUSTER_ALERTS",
    "CLUSTER_ROW",
    "DASHBOARDS",
    "ROOT",
    "Expression",
    "alert_expressions",
    "alert_measure",
    "all_expressions",
    "dashboard_expressions",
    "metric_names",
    "substitute",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
CLUSTER_ALERTS = ROOT / "deploy/prometheus/alerts-cluster.yml"
CLUSTER_ROW = "Cluster"
"""A row whose title starts with this holds cluster panels (nested: the row is collapsed)."""

# Grafana writes variables as $name, ${name}, ${name:format} or [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)
# `<measure> <op> <number>`: the convention of alerts.yml (one top-level comparison, at the end).
_THRESHOLD = re.compile(r"^(?P<measure>.*?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.eE+-]+\s*$", re.DOTALL)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_TRACKIN_NAME = re.compile(r"\btrackin_[a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Expression:
    """One expression and where it came from; ``expr`` has variables substituted (alerts: the measure)."""

    where: str
    kind: Literal["panel", "variable", "alert"]
    raw: str
    expr: str
    cluster: bool = False
    """Reads series only a cluster replica exports."""


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana template variables; an unknown variable is an error, not left in place."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(one, expr)


def alert_measure(expr: str) -> str:
    """The left-hand side of ``<measure> <op> <number>``; raise if a rule breaks that convention."""
    match = _THRESHOLD.match(expr.strip())
    if match is None:
        raise ValueError(f"alert expression is not `<measure> <op> <number>`: {expr!r}")
    return match["measure"]


def metric_names(expr: str) -> set[str]:
    """The ``trackin_*`` metric names an expression reads (string literals are skipped)."""
    return set(_TRACKIN_NAME.findall(_STRING.sub('""', expr)))


def _panels(panels: list[dict[str, Any]], cluster: bool = False) -> list[tuple[dict[str, Any], bool]]:
    """All panels, including those nested in collapsed rows, each with whether it is a cluster panel."""
    found: list[tuple[dict[str, Any], bool]] = []
    for panel in panels:
        found.append((panel, cluster))
        nested = cluster or (panel["type"] == "row" and panel["title"].startswith(CLUSTER_ROW))
        found.extend(_panels(panel.get("panels", []), nested))
    return found


def dashboard_expressions(path: Path, variables: Mapping[str, str]) -> list[Expression]:
    board = json.loads(path.read_text())
    found: list[Expression] = []
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        expr = match.group(1) if match else query  # label_values(series, label) reads `series`
        where = f"{path.name} variable {var['name']}"
        found.append(Expression(where, "variable", query, substitute(expr, variables)))
    for panel, cluster in _panels(board["panels"]):
        for target in panel.get("targets", []):
            where = f"{path.name} panel {panel['id']} {panel['title']!r} {target['refId']}"
            raw = target["expr"]
            found.append(Expression(where, "panel", raw, substitute(raw, variables), cluster))
    return found


def alert_expressions(path: Path = ALERTS) -> list[Expression]:
    rules = yaml.safe_load(path.read_text())
    return [
        Expression(
            f"{path.name} {rule['alert']}",
            "alert",
            rule["expr"],
            alert_measure(rule["expr"]),
            path == CLUSTER_ALERTS,
        )
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def all_expressions(variables: Mapping[str, str], *, cluster: bool = False) -> list[Expression]:
    """Both dashboards' targets and variable queries, then every alert's measure: those a single node
    answers, or (``cluster``) those only a cluster answers (its panels and alerts-cluster.yml)."""
    found = [e for path in DASHBOARDS for e in dashboard_expressions(path, variables) if e.cluster == cluster]
    return found + alert_expressions(CLUSTER_ALERTS if cluster else ALERTS)
