"""The Helm chart renders what the operator and design.md expect, and rejects wrong values.

Runs helm v3.22.0 from the tool cache (`hack/build-tools helm`); no cluster needed.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmlib import CHART, RELEASE_NS, REPO, Obj, find, helm, one, render, set_args


def container(objs: list[Obj]) -> Obj:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(objs: list[Obj]) -> dict[str, Any]:
    """name -> value (plain) or the valueFrom dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def design_env_vars() -> list[str]:
    """Every KUBETUNE_* variable of design.md's "Operator configuration" table."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## Operator configuration", 1)[1]
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `KUBETUNE_"):
            names += re.findall(r"`(KUBETUNE_[A-Z0-9_]+)`", line.split("|")[1])
    assert len(names) >= 15, names
    return names


ALL_SET: dict[str, Any] = {
    "trainer": {
        "image": {"repository": "registry.example/trainer", "tag": "9.9.9", "digest": ""},
        "command": ["python", "-m", "kubetune_trainer"],
        "progressIntervalSeconds": 5,
        "defaultCpu": "4",
        "defaultMemory": "16Gi",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "allowedServiceAccounts": ["trainer-a", "trainer-b"],
    },
    "gpu": {"resourceName": "amd.com/gpu", "productLabel": "amd.com/gpu.product-name"},
    "s3": {
        "endpoint": "https://minio.example:9000",
        "region": "eu-west-1",
        "credentialsSecret": "s3",
        "retrySeconds": 120,
    },
    "watchNamespaces": ["ml-a", "ml-b"],
    "metrics": {"port": 9090},
    "health": {"port": 9091},
    "leaderElection": {"enabled": True, "leaseName": "my-lease"},
}


# ---------------------------------------------------------------------------------- lint


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"watchNamespaces": ["a", "b"]},
        {
            "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {}}]},
            "metrics": {"port": 8080, "serviceMonitor": {"enabled": True}},
        },
        {"replicas": 1, "leaderElection": {"enabled": False, "leaseName": "x"}},
    ],
    ids=["default", "namespaced", "all-features", "single"],
)
def test_helm_lint_strict(values: dict[str, Any] | None) -> None:
    res = helm("lint", "--strict", str(CHART), "--namespace", RELEASE_NS, *set_args(values))
    assert "0 chart(s) failed" in res.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "replicas=two"], "/replicas"),
        (["--set-json", 'replicas="two"'], "/replicas"),
        (["--set", "replicas=0"], "/replicas"),
        (["--set", "metrics.port=99999"], "/metrics/port"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
        (["--set", "replica=2"], "replica"),  # typo: unknown keys are refused
        (["--set", "trainer.imag.tag=x"], "imag"),
        (["--set-json", "trainer.command=[]"], "/trainer/command"),
        (["--set", "image.digest=latest"], "/image/digest"),
    ],
)
def test_schema_rejects_wrong_values(args: list[str], error: str) -> None:
    for cmd in (["template", "kt"], ["lint", "--strict"]):
        res = helm(*cmd, str(CHART), *args, check=False)
        assert res.returncode != 0, f"helm {' '.join(cmd)} {args} accepted a wrong value"
        out = res.stdout + res.stderr
        assert "schema" in out and error in out, out


# ---------------------------------------------------------------------- versions, images


def test_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == version
    assert chart["appVersion"] == version


def test_image_tags_default_to_app_version() -> None:
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == "" and values["trainer"]["image"]["tag"] == ""
    objs = render()
    assert container(objs)["image"] == f"ghcr.io/kubetune/operator:{app}"
    assert env_of(objs)["KUBETUNE_TRAINER_IMAGE"] == f"ghcr.io/kubetune/trainer:{app}"
    digest = "sha256:" + "a" * 64
    objs = render({"image": {"repository": "r/op", "digest": digest}})
    assert container(objs)["image"] == f"r/op@{digest}"


# -------------------------------------------------------------------------- deployment


def test_deployment_starts_the_operator_console_script() -> None:
    c = container(render())
    assert c["command"] == ["kubetune-operator"]
    assert "args" not in c
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "kubetune-operator" in pyproject["project"]["scripts"]


def test_env_covers_design_operator_configuration() -> None:
    """Every variable of design.md's operator table is settable through values."""
    env = env_of(render(ALL_SET))
    missing = [v for v in design_env_vars() if v not in env]
    assert not missing, f"design.md variables the chart never sets: {missing}"


def test_env_names_are_operator_settings() -> None:
    """Every KUBETUNE_* variable the chart sets is a field of the operator's settings (which
    ignores unknown variables, so a typo here would be silently lost)."""
    from kubetune_operator import settings

    fields = {f"KUBETUNE_{name.upper()}" for name in settings.OperatorSettings.model_fields}
    env = env_of(render(ALL_SET))
    unknown = sorted(n for n in env if n.startswith("KUBETUNE_") and n not in fields)
    assert not unknown, f"chart sets variables the operator does not read: {unknown}"
    # Identity and namespace come from the downward API under the names the operator reads.
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_env_settings_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator parses the chart's rendered env into the values that were set."""
    from kubetune_operator import settings

    for name in list(os.environ):
        if name.startswith("KUBETUNE_") or name in ("POD_NAME", "POD_NAMESPACE"):
            monkeypatch.delenv(name)
    for name, value in env_of(render(ALL_SET)).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("POD_NAMESPACE", RELEASE_NS)
    s = settings.OperatorSettings()
    assert s.namespaces == ["ml-a", "ml-b"]
    assert s.trainer_image == "registry.example/trainer:9.9.9"
    assert s.trainer_command == ["python", "-m", "kubetune_trainer"]
    assert s.default_node_selector == {"pool": "gpu"}
    assert s.default_tolerations == ALL_SET["trainer"]["tolerations"]
    assert s.allowed_service_accounts == ["trainer-a", "trainer-b"]
    assert (s.metrics_port, s.health_port) == (9090, 9091)
    assert s.s3_endpoint == "https://minio.example:9000"
    assert s.s3_credentials_secret == "s3"
    assert s.lease_name == "my-lease"
    assert s.progress_interval_seconds == 5


def test_env_values_follow_values() -> None:
    env = env_of(render(ALL_SET))
    assert env["KUBETUNE_NAMESPACES"] == "ml-a,ml-b"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.example/trainer:9.9.9"
    assert json.loads(env["KUBETUNE_TRAINER_COMMAND"]) == ["python", "-m", "kubetune_trainer"]
    assert env["KUBETUNE_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["KUBETUNE_GPU_PRODUCT_LABEL"] == "amd.com/gpu.product-name"
    assert json.loads(env["KUBETUNE_DEFAULT_NODE_SELECTOR"]) == {"pool": "gpu"}
    assert json.loads(env["KUBETUNE_DEFAULT_TOLERATIONS"]) == ALL_SET["trainer"]["tolerations"]
    assert env["KUBETUNE_DEFAULT_CPU"] == "4"
    assert env["KUBETUNE_DEFAULT_MEMORY"] == "16Gi"
    assert env["KUBETUNE_S3_ENDPOINT"] == "https://minio.example:9000"
    assert env["KUBETUNE_S3_REGION"] == "eu-west-1"
    assert env["KUBETUNE_S3_CREDENTIALS_SECRET"] == "s3"
    assert env["KUBETUNE_S3_RETRY_SECONDS"] == "120"
    assert env["KUBETUNE_ALLOWED_SERVICE_ACCOUNTS"] == "trainer-a,trainer-b"
    assert env["KUBETUNE_METRICS_PORT"] == "9090"
    assert env["KUBETUNE_HEALTH_PORT"] == "9091"
    assert env["KUBETUNE_LEADER_ELECTION"] == "true"
    assert env["KUBETUNE_LEASE_NAME"] == "my-lease"
    assert env["KUBETUNE_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["KUBETUNE_LOG_LEVEL"] == "INFO"
    assert env["KUBETUNE_PROGRESS_INTERVAL_SECONDS"] == "5"


def test_defaults_match_design_defaults() -> None:
    env = env_of(render())
    assert env["KUBETUNE_NAMESPACES"] == ""
    assert json.loads(env["KUBETUNE_TRAINER_COMMAND"]) == ["kubetune-train"]
    assert env["KUBETUNE_GPU_RESOURCE_NAME"] == "nvidia.com/gpu"
    assert env["KUBETUNE_GPU_PRODUCT_LABEL"] == "nvidia.com/gpu.product"
    assert env["KUBETUNE_DEFAULT_NODE_SELECTOR"] == "{}"
    assert env["KUBETUNE_DEFAULT_TOLERATIONS"] == "[]"
    assert env["KUBETUNE_S3_REGION"] == "us-east-1"
    assert env["KUBETUNE_METRICS_PORT"] == "8080"
    assert env["KUBETUNE_HEALTH_PORT"] == "8081"
    assert env["KUBETUNE_LEADER_ELECTION"] == "true"
    assert env["KUBETUNE_LEASE_NAME"] == "kubetune-operator"
    assert env["KUBETUNE_PROGRESS_INTERVAL_SECONDS"] == "10"
    assert env["KUBETUNE_S3_RETRY_SECONDS"] == "600"
    # Unset by default in design.md: the operator's own defaults apply.
    for unset in (
        "KUBETUNE_DEFAULT_CPU",
        "KUBETUNE_DEFAULT_MEMORY",
        "KUBETUNE_S3_ENDPOINT",
        "KUBETUNE_S3_CREDENTIALS_SECRET",
    ):
        assert unset not in env


def test_no_secret_values_in_operator_env() -> None:
    for e in container(render(ALL_SET))["env"]:
        assert "secretKeyRef" not in (e.get("valueFrom") or {}), e
        assert not re.search(r"SECRET_ACCESS|PASSWORD|TOKEN", e["name"]), e


def test_probes_ports_and_resources() -> None:
    c = container(render())
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # Liveness is slower than readiness: a blip un-readies before it restarts.
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > (
        ready["periodSeconds"] * ready["failureThreshold"]
    )
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    c = container(render({"metrics": {"port": 9100}, "health": {"port": 9101}}))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9100, "health": 9101}


def test_probe_paths_are_served_by_the_operator() -> None:
    """The operator's health server answers 200 on the paths and port the chart probes (the
    node agent in the integration tests does not run probes, so this is checked here)."""
    import asyncio
    import socket
    import urllib.request

    from fakekube import FakeKube
    from kubetune_operator.handlers import Runtime
    from kubetune_operator.settings import OperatorSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = container(render({"health": {"port": port}}))
    probes = [c[p]["httpGet"] for p in ("livenessProbe", "readinessProbe")]
    settings = OperatorSettings(
        trainer_image="t", lease_namespace="x", health_port=port, leader_election=False
    )
    runtime = Runtime(settings, kube=FakeKube())

    def get(path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)

    async def probe() -> list[int]:
        await runtime._serve_health()
        try:
            return [await asyncio.to_thread(get, p["path"]) for p in probes]
        finally:
            await runtime.queue.close()
            assert runtime._health is not None
            await runtime._health.cleanup()

    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {named.get(p["port"], p["port"]) for p in probes} == {port}
    assert asyncio.run(probe()) == [200, 200]


def test_restricted_pod_security() -> None:
    """The pod meets the restricted Pod Security Standard."""
    objs = render()
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    sc = container(objs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc.get("privileged") is not True
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))


def test_replicas_and_pod_disruption_budget() -> None:
    objs = render()
    assert one(objs, "Deployment")["spec"]["replicas"] == 2
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    sel = one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == sel
    assert find(render({"replicas": 1}), "PodDisruptionBudget") == []
    assert find(render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget") == []


def test_metrics_service_servicemonitor_networkpolicy() -> None:
    objs = render()
    svc = one(objs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert find(objs, "ServiceMonitor") == [] and find(objs, "NetworkPolicy") == []

    objs = render(
        {
            "metrics": {"port": 8080, "serviceMonitor": {"enabled": True}},
            "networkPolicy": {"enabled": True, "apiServerCidrs": ["10.0.0.1/32"]},
        }
    )
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    np = one(objs, "NetworkPolicy")
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert np["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    api_rule = np["spec"]["egress"][0]
    assert {p["port"] for p in api_rule["ports"]} == {443, 6443}
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


def test_trainer_egress_networkpolicy_is_opt_in_and_allows_only_what_is_listed() -> None:
    assert [o for o in render() if o["metadata"]["name"].endswith("-trainer-egress")] == []
    objs = render(
        {
            "watchNamespaces": ["ml-a", "ml-b"],
            "trainerNetworkPolicy": {
                "enabled": True,
                "s3": {"cidrs": ["10.1.0.0/16"], "ports": [9000]},
                "tracking": {"cidrs": ["10.2.0.5/32"], "ports": [5000]},
            },
        }
    )
    nps = [o for o in objs if o["metadata"]["name"].endswith("-trainer-egress")]
    assert sorted(np["metadata"]["namespace"] for np in nps) == ["ml-a", "ml-b"]
    spec = nps[0]["spec"]
    # Selects the pods the operator renders (naming.child_labels), and nothing else.
    from kubetune_operator import naming as op_naming
    from kubetune_operator import render as op_render

    pod_labels = op_naming.child_labels(op_render.Owner("ml-a", "j", "u"), run=1)
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Egress"]
    rules = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in rules[0]["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert "to" not in rules[0]
    assert {p["port"] for p in rules[1]["ports"]} == {443, 6443}
    assert rules[2] == {"to": [{"podSelector": spec["podSelector"]}]}  # a group's rendezvous
    assert rules[3:] == [
        {
            "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
            "ports": [{"port": 9000, "protocol": "TCP"}],
        },
        {
            "to": [{"ipBlock": {"cidr": "10.2.0.5/32"}}],
            "ports": [{"port": 5000, "protocol": "TCP"}],
        },
    ]  # no Hub rule: no hub cidrs, so no Hub access


def test_trainer_egress_networkpolicy_needs_namespaces() -> None:
    res = helm("template", "kt", str(CHART), *set_args({"trainerNetworkPolicy": {"enabled": True}}),
               check=False)  # fmt: skip
    assert res.returncode != 0 and "trainerNetworkPolicy.namespaces" in res.stderr


CLUSTER_SCOPED = (
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


def test_every_namespaced_object_is_in_the_release_namespace() -> None:
    for o in render():
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"].get("namespace") == RELEASE_NS, o["kind"]


def test_two_releases_do_not_collide_on_cluster_objects() -> None:
    a = {o["metadata"]["name"] for o in render(release="one") if o["kind"].startswith("Cluster")}
    b = {o["metadata"]["name"] for o in render(release="two") if o["kind"].startswith("Cluster")}
    assert a and b and not a & b


def render_notes(tmp_path: Path, values: dict[str, Any] | None = None) -> str:
    """NOTES.txt as `helm install` prints it. `helm install --dry-run` needs a cluster, so a
    copy of the chart renders NOTES.txt through `tpl` into a ConfigMap instead."""
    import shutil

    chart = tmp_path / "kubetune"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{- tpl (.Files.Get "notes.txt") . | nindent 4 }}\n'
    )
    res = helm(
        "template",
        "kt",
        str(chart),
        "--namespace",
        RELEASE_NS,
        "--show-only",
        "templates/zz-notes.yaml",
        *set_args(values),
    )
    return str(yaml.safe_load(res.stdout)["data"]["notes"])


def test_notes_say_what_to_do_next(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    for needle in (
        "It watches FineTuneJobs in all namespaces.",
        "rollout status deployment/kt-kubetune",
        "get lease kubetune-operator",
        "create secret generic",
        "AWS_ACCESS_KEY_ID",
        "credentialsSecretRef",
        "kubectl get ftj",
        "kubectl describe ftj",
        "docs/troubleshooting.md",
    ):
        assert needle in notes, needle
    notes = render_notes(tmp_path / "2", {"watchNamespaces": ["ml-a", "ml-b"]})
    assert "It watches FineTuneJobs in: ml-a, ml-b." in notes


def test_chart_crds_come_from_the_api_build() -> None:
    """crds/ is written by `make crds`; if present it must equal the top-level crds/."""
    chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart_crds, "helm/kubetune/crds/ is empty: run `make crds`"
    for name in chart_crds:
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), name
