"""Static checks of the deploy files: the real tools where they exist (docker-compose, hadolint, promtool),
and cross-file consistency (dashboards against service/metrics.py, compose against the Prometheus and Grafana
configs, the Kubernetes objects against each other). There is no Docker engine here: nothing is built or run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import (
    ALERTS,
    DASHBOARDS,
    ROOT,
    alert_expressions,
    all_expressions,
    metric_names,
)
from trackin.service.metrics import FleetSnapshot, Metrics, StreamFigures

VARIABLES = {"instance": ".*", "stream": "s1", "__rate_interval": "30s", "__interval": "30s"}
PROMETHEUS_BUILTIN = {"up"}


def tool(name: str) -> str:
    """A tool's path: next to this interpreter (venv tools like hadolint) or on PATH. Missing is a failure:
    scripts/bootstrap and scripts/system-deps install them."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run scripts/bootstrap and scripts/system-deps")
    return found


def run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((ROOT / relative).read_text())


def exposed_names() -> set[str]:
    """Every sample name a Metrics exports once each instrument has seen one event."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    snapshot = FleetSnapshot(
        loss_ewma=torch.ones(1),
        beta=torch.ones(1),
        eps_norm=torch.ones(1),
        resident_streams=1,
        total_streams=1,
        state_bytes=1,
        device_memory_bytes={"cpu": 1},
        per_stream=[StreamFigures("s1", 1, 1.0, 1.0, 1.0, 1.0)],
    )
    metrics.set_snapshot_source(lambda: snapshot)
    metrics.http_request("/healthz", "GET", 200, 0.001)
    metrics.set_store(up=True)
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def cluster_names() -> set[str]:
    """What a cluster replica exports besides: the cluster collector's samples."""
    from trackin.service.cluster.metrics import ClusterCollector, ClusterFigures

    figures = ClusterFigures(*(lambda: 0 for _ in range(8)))
    return {sample.name for family in ClusterCollector(figures).collect() for sample in family.samples}


# --- real tools ---------------------------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    run(tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q")


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "Dockerfile")


def test_prometheus_config_is_valid() -> None:
    out = run(tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")
    assert "1 rule files found" in out


def test_alert_rules_are_valid() -> None:
    run(tool("promtool"), "check", "rules", str(ALERTS))


# --- alerts -------------------------------------------------------------------------------------------


def test_alerts_follow_the_measure_threshold_convention() -> None:
    rules = [r for g in load_yaml("deploy/prometheus/alerts.yml")["groups"] for r in g["rules"]]
    found = alert_expressions()  # raises if an expr is not `<measure> <op> <number>`
    assert len(found) == len(rules) >= 5
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_promtool_test() -> None:
    tests = load_yaml("deploy/prometheus/alerts_test.yml")["tests"]
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    for expression in alert_expressions():
        name = expression.where.split()[-1]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no quiet case"


# --- dashboards ---------------------------------------------------------------------------------------


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(board["panels"])
    for panel in board["panels"]:
        found.extend(panel.get("panels", []))
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_consistent(path: Path) -> None:
    board = json.loads(path.read_text())
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == "prometheus", variable["name"]


def test_dashboards_are_the_two_expected() -> None:
    boards = {p.name: json.loads(p.read_text()) for p in DASHBOARDS}
    assert set(boards) == {"trackin-overview.json", "trackin-stream.json"}
    assert len({b["uid"] for b in boards.values()}) == 2
    variables = {v["name"]: v for v in boards["trackin-stream.json"]["templating"]["list"]}
    assert variables["stream"]["query"]["query"] == "label_values(trackin_stream_loss_ewma, stream)"


@pytest.mark.parametrize("cluster", [False, True], ids=["single-node", "cluster"])
def test_every_promql_metric_exists_in_metrics(cluster: bool) -> None:
    exposed = exposed_names() | PROMETHEUS_BUILTIN | (cluster_names() if cluster else set())
    expressions = all_expressions(VARIABLES, cluster=cluster)
    assert len(expressions) > (8 if cluster else 40)
    read = {name for e in expressions for name in metric_names(e.expr)}
    assert read, "no trackin_ metric found in any expression"
    missing = {e.where: metric_names(e.expr) - exposed for e in expressions}
    assert not {w: m for w, m in missing.items() if m}


def test_substitution_leaves_no_variable() -> None:
    for expression in all_expressions(VARIABLES) + all_expressions(VARIABLES, cluster=True):
        assert "$" not in expression.expr, expression.where
        assert "[[" not in expression.expr, expression.where


# --- compose, Prometheus and Grafana agree ------------------------------------------------------------


def test_compose_wires_the_stack() -> None:
    compose = load_yaml("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"trackin", "redis", "prometheus", "grafana"}
    for name, service in services.items():
        assert "healthcheck" in service, name
    trackin = services["trackin"]
    assert trackin["environment"]["TRACKIN_REDIS_URL"] == "redis://redis:6379/0"
    assert trackin["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    # the log is in Redis here: an acknowledged append is fsynced before its answer, as benchmarked
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "always"
    named = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), volume
            else:
                assert source in named, volume


def test_prometheus_scrapes_trackin_as_compose_names_it() -> None:
    config = load_yaml("deploy/prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["trackin"]["static_configs"] for t in sc["targets"]]
    assert targets == ["trackin:9100"]  # the private metrics port: /metrics on 8000 needs an API key
    environment = load_yaml("docker-compose.yml")["services"]["trackin"]["environment"]
    assert environment["TRACKIN_METRICS_PORT"] == "9100"
    assert config["rule_files"] == ["alerts.yml"]
    ports = load_yaml("docker-compose.yml")["services"]["trackin"]["ports"]
    assert any(str(p).endswith(":8000") for p in ports)


def test_grafana_provisioning_matches_compose() -> None:
    datasource = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider = load_yaml("deploy/grafana/provisioning/dashboards/trackin.yml")["providers"][0]
    mounts = dict(v.split(":")[:2] for v in load_yaml("docker-compose.yml")["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- Dockerfile and Kubernetes ------------------------------------------------------------------------


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2, "multi-stage on BASE_IMAGE"
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu", text, re.M)
    client_then_project = r'^RUN pip install .*\./client "\./\[replay\]"$'
    assert re.search(client_then_project, text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    cmd = '["trackin", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    assert f"CMD {cmd}" in text
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines[0] == "*", ".dockerignore is an allow-list: ignore everything, then re-include"
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, re.M))
    linked = {p.name for p in (ROOT / "trackin").iterdir() if p.is_symlink()}
    assert linked <= copied, "every folder trackin/ links to is in the image"
    included = {"!" + c.rstrip("/") + ("/" if (ROOT / c).is_dir() else "") for c in copied}
    assert included <= set(lines)


def test_kubernetes_objects_fit_together() -> None:
    docs = [
        d
        for path in sorted((ROOT / "deploy/k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ConfigMap", "Deployment", "Service"}
    config, deployment, service = by_kind["ConfigMap"], by_kind["Deployment"], by_kind["Service"]
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    assert ports["http"] == 8000
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert "TRACKIN_REDIS_URL" in config["data"]
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert config["data"]["TRACKIN_METRICS_PORT"] == str(ports["metrics"])
    assert all(p["targetPort"] != "metrics" for p in service["spec"]["ports"]), "metrics stay private"
    # The bootstrap admin key is read from the mounted Secret.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    key_file = config["data"]["TRACKIN_BOOTSTRAP_ADMIN_KEY_FILE"]
    (secret_volume,) = [n for n, v in volumes.items() if "secret" in v]
    assert key_file.startswith(mounts[secret_volume] + "/")


def test_compose_bootstraps_an_admin_key_from_a_secret() -> None:
    compose = load_yaml("docker-compose.yml")
    trackin = compose["services"]["trackin"]
    (secret,) = trackin["secrets"]
    assert secret in compose["secrets"]
    assert trackin["environment"]["TRACKIN_BOOTSTRAP_ADMIN_KEY_FILE"] == f"/run/secrets/{secret}"
