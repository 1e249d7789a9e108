"""Cluster mode's deploy files: the compose stack, the Kubernetes objects, the cluster alerts and their
promtool tests, and that every cluster series the alerts use is one a replica exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from tests.deploy.promql import ROOT


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run scripts/system-deps")
    return found


def _run(*args: str) -> None:
    done = subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cluster_compose_config_is_valid_and_wires_three_replicas_behind_nginx() -> None:
    _run(_tool("docker-compose"), "-f", "docker-compose.cluster.yml", "config", "-q")
    services = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    replicas = [name for name in services if name.startswith("trackin-")]
    assert len(replicas) == 3
    for name in replicas:
        env = services[name]["environment"]
        assert env["TRACKIN_CLUSTER_NATS_URL"] == "nats://nats:4222"
        assert env["TRACKIN_CLUSTER_REPLICA_ID"] == name
        assert env["TRACKIN_BOOTSTRAP_ADMIN_KEY_FILE"].startswith("/run/secrets/")  # keys: bound off loopback
    assert "-js" in services["nats"]["command"]
    assert "--appendonly" in services["redis"]["command"]
    upstreams = re.findall(r"server (trackin-\d):8000", (ROOT / "deploy/nginx/cluster.conf").read_text())
    assert sorted(upstreams) == sorted(replicas)
    scraped = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-cluster.yml").read_text())
    assert sorted(scraped["scrape_configs"][0]["static_configs"][0]["targets"]) == [
        f"{r}:{services[r]['environment']['TRACKIN_METRICS_PORT']}" for r in replicas
    ]


def test_cluster_alerts_pass_their_promtool_tests() -> None:
    promtool = _tool("promtool")
    _run(promtool, "check", "config", "deploy/prometheus/prometheus-cluster.yml")
    _run(promtool, "test", "rules", "deploy/prometheus/alerts-cluster_test.yml")


def test_cluster_alert_series_are_exported_by_a_replica() -> None:
    from trackin.service.cluster.metrics import ClusterCollector, ClusterFigures

    exported: set[str] = set()
    for family in ClusterCollector(ClusterFigures(*(lambda: 0 for _ in range(8)))).collect():
        exported.update(sample.name for sample in family.samples)
    rules = (ROOT / "deploy/prometheus/alerts-cluster.yml").read_text()
    used = set(re.findall(r"trackin_cluster_\w+", rules))
    assert used
    assert used <= exported, used - exported


def test_kubernetes_cluster_objects_fit_together() -> None:
    docs = [
        d for d in yaml.safe_load_all((ROOT / "deploy/k8s/cluster/trackin-cluster.yaml").read_text()) if d
    ]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    by_kind = {d["kind"]: d for d in docs}
    stateful = by_kind["StatefulSet"]
    labels = stateful["spec"]["template"]["metadata"]["labels"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services[stateful["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # ready = owned partitions serving
    assert container["envFrom"][0]["configMapRef"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert "TRACKIN_CLUSTER_NATS_URL" in by_kind["ConfigMap"]["data"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TRACKIN_CLUSTER_REPLICA_ID"]["value"] == "$(POD_NAME)"
    config = by_kind["ConfigMap"]["data"]
    assert config["TRACKIN_BOOTSTRAP_ADMIN_KEY_FILE"].startswith("/run/secrets/")  # keys: bound off loopback
    annotations = stateful["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == config["TRACKIN_METRICS_PORT"]
