"""Issue 18 floor 5: when the API server refuses one of a run's children, the FineTuneJob says
so (Failed, Stalled=True, reason ChildRejected, the server's own message) within one reconcile,
instead of retrying forever with the reason only in the operator's log. One case per child
kind. The refusal is real: a ValidatingAdmissionPolicy in the test namespace denies that kind,
or a ResourceQuota leaves no room for it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = [pytest.mark.integration]

# kind -> (API group, resource, a minimal object of that kind, to probe that the policy is live)
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ServiceAccount": ("", "serviceaccounts", {}),
    "Role": ("rbac.authorization.k8s.io", "roles", {"rules": []}),
    "RoleBinding": (
        "rbac.authorization.k8s.io",
        "rolebindings",
        {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"}},
    ),
    "ConfigMap": ("", "configmaps", {"data": {}}),
    "Service": ("", "services", {"spec": {"clusterIP": "None", "ports": [{"port": 1}]}}),
    "Job": (
        "batch",
        "jobs",
        {
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "x", "command": ["true"]}],
                    }
                }
            }
        },
    ),
}
API_VERSIONS = {"": "v1", "rbac.authorization.k8s.io": "rbac.authorization.k8s.io/v1",
                "batch": "batch/v1"}  # fmt: skip


def probe_refused(cluster: Cluster, namespace: str, kind: str) -> str | None:
    """The server's refusal of a dry-run create of `kind` in `namespace`; None if accepted."""
    group, _, body = KINDS[kind]
    obj = {"apiVersion": API_VERSIONS[group], "kind": kind,
           "metadata": {"name": "probe", "namespace": namespace}, **body}  # fmt: skip
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", namespace=namespace, input=json.dumps(obj),
        check=False,
    )  # fmt: skip
    return proc.stderr if proc.returncode != 0 else None


@contextlib.contextmanager
def deny(cluster: Cluster, namespace: str, kind: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (+ binding) refusing to create `kind` in `namespace`."""
    group, resource, _ = KINDS[kind]
    name = f"deny-{resource}-{namespace[-5:]}"
    message = f"kubetune test policy {name}: no {resource} here"
    cluster.apply(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [group],
                                "apiVersions": ["*"],
                                "operations": ["CREATE"],
                                "resources": [resource],
                            }
                        ]
                    },
                    "validations": [{"expression": "false", "message": message}],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        }
                    },
                },
            },
        ]
    )
    try:
        cluster.wait_for(
            lambda: probe_refused(cluster, namespace, kind), timeout=30, what=f"{name} in effect"
        )
        yield message
    finally:
        for k in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cluster.kubectl("delete", k, name, "--wait=false", check=False)


def assert_refused(ftj: Ftj, kind: str, message: str, t0: float) -> dict[str, Any]:
    st = ftj.wait(lambda: (s := ftj.status()).get("phase") == "Failed" and s, "Failed", timeout=30)
    elapsed = time.monotonic() - t0
    stalled = {c["type"]: c for c in st["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "ChildRejected", st
    assert f"the API server refused {kind} " in stalled["message"], stalled
    assert message in stalled["message"], stalled  # the server's own words
    assert "ChildRejected" in ftj.event_reasons()
    assert not ftj.jobs()  # the run did not start
    print(f"[refused] {kind}: Failed/ChildRejected {elapsed:.1f}s after apply")
    return dict(st)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_refused_child_fails_the_job_with_the_servers_message(
    cluster: Cluster, namespace: str, operators: Operators, kind: str
) -> None:
    spec: dict[str, Any] = {}
    if kind == "Service":  # only a run of several pods has one (its rendezvous)
        spec["resources"] = {"gpus": 1, "nodes": 2}
    with deny(cluster, namespace, kind) as message:
        operators.new()
        t0 = time.monotonic()
        cluster.apply(stub_ftj("refused", **spec), namespace=namespace)
        assert_refused(Ftj(cluster, namespace, "refused"), kind, message, t0)


def test_a_quota_refusal_clears_when_the_quota_allows_the_job(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    """A ResourceQuota with room for no Job: Failed with the quota's message; once the quota is
    raised, the next pass starts the run and it Succeeds."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/jobs.batch": "0"}},
        },
        namespace=namespace,
    )
    cluster.wait_for(
        lambda: probe_refused(cluster, namespace, "Job"), timeout=30, what="quota in effect"
    )
    operators.new()
    t0 = time.monotonic()
    cluster.apply(stub_ftj("quota"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "quota")
    assert_refused(ftj, "Job", "exceeded quota: no-jobs", t0)
    cluster.kubectl(
        "patch", "resourcequota", "no-jobs", "--type=merge",
        "-p", json.dumps({"spec": {"hard": {"count/jobs.batch": "5"}}}), namespace=namespace,
    )  # fmt: skip
    st = ftj.wait_phase("Succeeded", timeout=90)
    assert {c["type"]: c for c in st["conditions"]}["Stalled"]["status"] == "False"
