"""The platform's guardrails (issue 18, floor 4) on the real API server and operator:

- the chart's ValidatingAdmissionPolicy, rendered by helm from guardrails values, refuses a
  violating FineTuneJob at `kubectl apply`, naming the field and the chart value, per namespace;
  and a FineTuneSchedule whose template breaks the same rules, or which watches data outside
  the namespace's schedules.watchPrefixes;
- the operator refuses the same spec at reconcile (an object the policy did not see) with a
  Failed/Stalled status naming the field, and creates no Job.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj
from test_api_crd import install_crd

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "kubetune"


WATCH = {"*": ["s3://kubetune/{namespace}/"]}


def _policy(
    cluster: Cluster, release: str, guardrails: dict[str, Any], namespaces: list[str]
) -> str:
    return subprocess.run(
        [cluster.helm_path, "template", release, str(CHART),
         "--set-json", f"guardrails={json.dumps(guardrails)}",
         "--set-json", f"schedules={json.dumps({'watchPrefixes': WATCH})}",
         "--set-json", f"watchNamespaces={json.dumps(namespaces)}",
         "--show-only", "templates/guardrails-policy.yaml"],
        capture_output=True, text=True, check=True, env=cluster.process_env(), timeout=120,
    ).stdout  # fmt: skip


@pytest.fixture(name="teams")
def teams_fixture(cluster: Cluster, namespace: str) -> Iterator[tuple[str, str]]:
    """Two team namespaces under one policy: `namespace` gets the default limits, `big` its own
    (and may override the image)."""
    install_crd(cluster)
    cluster.kubectl("apply", "-f", str(CHART / "crds" / "kubetune.io_finetuneschedules.yaml"))
    cluster.wait_crd_established("finetuneschedules.kubetune.io")
    big = f"{namespace[:50]}-big"
    cluster.kubectl("create", "namespace", big)
    release = f"g{uuid.uuid4().hex[:6]}"
    manifest = _policy(
        cluster,
        release,
        {
            "admissionPolicy": True,
            "imageOverrideNamespaces": [big],
            "limits": {
                "*": {"gpus": 2, "nodes": 1, "activeDeadlineSeconds": 3600},
                big: {"gpus": 8, "nodes": 4},
            },
        },
        [namespace, big],
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(manifest) if d]
    assert kinds == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
    ]
    try:
        with cluster.applied(manifest):
            yield namespace, big
    finally:
        cluster.kubectl("delete", "namespace", big, "--wait=false", check=False)


def _apply(cluster: Cluster, ns: str, **spec: Any) -> subprocess.CompletedProcess[str]:
    obj = stub_ftj(f"g-{uuid.uuid4().hex[:6]}", **spec)
    return cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", namespace=ns, input=json.dumps(obj), check=False
    )


OK = {"runPolicy": {"backoffLimit": 0, "activeDeadlineSeconds": 600}}


def _wait_active(cluster: Cluster, ns: str) -> None:
    """The API server loads a new policy within a second or two: wait until it refuses."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _apply(cluster, ns, resources={"gpus": 0, "nodes": 3}, **OK).returncode != 0:
            return
        time.sleep(0.5)
    raise AssertionError("the guardrails policy never took effect")


def test_the_admission_policy_refuses_violations_at_apply_per_namespace(
    cluster: Cluster, teams: tuple[str, str]
) -> None:
    team, big = teams
    _wait_active(cluster, team)
    assert _apply(cluster, team, **OK).returncode == 0, "a plain spec must pass"

    refused = {
        "spec.resources.priorityClassName": {"resources": {"priorityClassName": "system-node-critical"}},
        "spec.resources.tolerations": {"resources": {"tolerations": [{"operator": "Exists"}]}},
        "spec.resources.image": {"resources": {"image": "ghcr.io/me/trainer:x"}},
        "spec.model.trustRemoteCode": {"model": {"hubId": "stub/ok", "trustRemoteCode": True}},
        "spec.resources.gpus": {"resources": {"gpus": 4}},
    }  # fmt: skip
    for field, patch in refused.items():
        out = _apply(cluster, team, **{**OK, **patch})
        assert out.returncode != 0, f"{field} was accepted"
        assert field in out.stderr and "chart value guardrails." in out.stderr, out.stderr
    missing_deadline = _apply(cluster, team, runPolicy={"backoffLimit": 0})
    assert "spec.runPolicy.activeDeadlineSeconds: must be set" in missing_deadline.stderr

    # The big team's own entry: 8 GPUs, 4 nodes, no deadline needed, its own image allowed.
    assert _apply(cluster, big, resources={"gpus": 8, "nodes": 4, "image": "ghcr.io/me/t:x"}).returncode == 0  # fmt: skip
    assert "at most 8 in namespace" in _apply(cluster, big, resources={"gpus": 9}).stderr


def _apply_schedule(
    cluster: Cluster, ns: str, watch: str | None = None, data: str | None = None, **spec: Any
) -> subprocess.CompletedProcess[str]:
    data = data or f"s3://kubetune/{ns}/d/"
    template = {**stub_ftj("x", **spec)["spec"], "dataset": {"s3Uri": data}}
    trigger = {"datasetChange": {"s3Uri": watch} if watch else {}}
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule",
           "metadata": {"name": f"s-{uuid.uuid4().hex[:6]}"},
           "spec": {"trigger": trigger, "template": {"spec": template}}}  # fmt: skip
    return cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", namespace=ns, input=json.dumps(obj), check=False
    )


def test_the_admission_policy_refuses_a_schedule_template_or_watch_at_apply(
    cluster: Cluster, teams: tuple[str, str]
) -> None:
    team, big = teams
    deadline = time.monotonic() + 30
    while _apply_schedule(cluster, team, resources={"gpus": 4}, **OK).returncode == 0:
        assert time.monotonic() < deadline, "the schedule policy never took effect"
        time.sleep(0.5)
    assert _apply_schedule(cluster, team, **OK).returncode == 0, "a plain schedule must pass"
    out = _apply_schedule(cluster, team, resources={"gpus": 4}, **OK)
    assert "spec.template.spec.resources.gpus: at most 2" in out.stderr, out.stderr
    out = _apply_schedule(cluster, team, runPolicy={"backoffLimit": 0})
    assert "spec.template.spec.runPolicy.activeDeadlineSeconds: must be set" in out.stderr

    # Watching: its own folder only ({namespace}), not the other team's, not by `..`.
    assert _apply_schedule(cluster, team, f"s3://kubetune/{team}/m.json", **OK).returncode == 0
    for uri in (f"s3://kubetune/{big}/m.json", f"s3://kubetune/{team}/../{big}/"):
        out = _apply_schedule(cluster, team, uri, **OK)
        assert out.returncode != 0, f"{uri} was accepted"
        assert f"spec.trigger.datasetChange.s3Uri: {uri} is outside" in out.stderr, out.stderr
        assert f"(s3://kubetune/{team})" in out.stderr and "schedules.watchPrefixes" in out.stderr
    # Without trigger.datasetChange.s3Uri the template's dataset is what is watched.
    out = _apply_schedule(cluster, big, data=f"s3://kubetune/{team}/d/")
    assert f"spec.template.spec.dataset.s3Uri: s3://kubetune/{team}/d/ is outside" in out.stderr


def test_the_operator_refuses_a_system_priority_class_without_creating_a_job(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    # No admission policy here: the object reaches the operator, which holds the same line.
    operators.new()
    cluster.apply(
        stub_ftj("greedy", resources={"priorityClassName": "system-node-critical"}),
        namespace=namespace,
    )
    ftj = Ftj(cluster, namespace, "greedy")
    _, cond = ftj.wait_refused("PriorityClassNotAllowed")
    assert cond["message"].startswith("spec.resources.priorityClassName: 'system-node-critical'")
    assert ftj.jobs() == []


# Only its presence as a mounted file is checked here (the stub trainer does not parse it).
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_pod_options_reach_the_running_pod(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    """spec.pod (issue 18, floor 6) through to the pod: labels and annotations on Job and pod,
    plain env, env from a ConfigMap and from an allowed Secret, an extra CA bundle file."""
    cluster.kubectl("create", "configmap", "hub-mirror", "--from-literal=HF_ENDPOINT=http://mirror.corp",
                    namespace=namespace)  # fmt: skip
    cluster.kubectl("create", "secret", "generic", "proxy-auth", "--from-literal=USER=svc-train",
                    namespace=namespace)  # fmt: skip
    cluster.kubectl("create", "configmap", "corp-ca", f"--from-literal=bundle.pem={CA_PEM}",
                    namespace=namespace)  # fmt: skip
    operators.new(env={"KUBETUNE_ALLOWED_SECRETS": f"{namespace}/proxy-auth"})
    pod_options = {
        "labels": {"cost-center": "nlp-42"},
        "annotations": {"example.com/owner": "team-nlp"},
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
        "envFrom": [
            {"configMapRef": {"name": "hub-mirror"}},
            {"secretRef": {"name": "proxy-auth"}, "prefix": "PROXY_"},
        ],
        "extraCaBundle": {"name": "corp-ca", "key": "bundle.pem"},
    }
    cluster.apply(stub_ftj("dressed", pod=pod_options), namespace=namespace)
    ftj = Ftj(cluster, namespace, "dressed")
    assert ftj.wait_phase("Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    (job,) = ftj.jobs()
    (pod,) = ftj.pods()
    for meta in (job["metadata"], pod["metadata"]):
        assert meta["labels"]["cost-center"] == "nlp-42"
        assert meta["annotations"]["example.com/owner"] == "team-nlp"
    log = cluster.pod_log(namespace, pod["metadata"]["name"])
    seen = json.loads(log.split("pod options ", 1)[1].splitlines()[0])
    assert seen == {
        "HTTPS_PROXY": "http://proxy.corp:3128",
        "HF_ENDPOINT": "http://mirror.corp",
        "PROXY_USER": "svc-train",
        "ca_file": True,
    }
