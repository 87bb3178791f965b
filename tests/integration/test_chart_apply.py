"""The rendered chart against the real API server (hack/cluster): server-side dry-run of every
variant, and the RBAC it grants, asked of the API server's own authorizer.

- `kubectl apply --dry-run=server` runs admission, defaulting, schema validation and the RBAC
  escalation check on every object, for the default values and namespaced mode.
- The RBAC objects are then applied for real and `kubectl auth can-i --as=<the chart's
  ServiceAccount>` checks every verb the operator needs (yes) and a list of things it must not
  do (no), in both modes. The escalation check is exercised too: the operator's account may
  create a trainer Role like the ones it renders, and may not create one granting Secrets.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from helmlib import chart_contract

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubetune"


rbac_contract = chart_contract("test_chart_rbac")


def helm_template(
    cluster: Cluster, release: str, ns: str, values: dict[str, Any], *extra: str
) -> str:
    args = [cluster.helm_path, "template", release, str(CHART), "--namespace", ns, *extra]
    for k, v in values.items():
        args += ["--set-json", f"{k}={json.dumps(v)}"]
    res = subprocess.run(
        args, capture_output=True, text=True, env=cluster.process_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(autouse=True)
def crd(cluster: Cluster) -> None:
    """The FineTuneJob CRD as the chart ships it (RBAC answers for unknown resources are "no")."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"), timeout=60
    )
    cluster.wait_crd_established("finetunejobs.kubetune.io")


@pytest.fixture
def other_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    names = [f"kt-chart-team-{i}-{uuid.uuid4().hex[:5]}" for i in ("a", "b")]
    for n in names:
        cluster.kubectl("create", "namespace", n)
    try:
        yield names
    finally:
        for n in names:
            cluster.kubectl("delete", "namespace", n, "--wait=false", check=False)


def dry_run(cluster: Cluster, manifests: str) -> str:
    res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    return res.stdout


@pytest.mark.parametrize(
    "values",
    [{}, {"networkPolicy": {"enabled": True}, "replicas": 3}],
    ids=["default", "network-policy"],
)
def test_server_dry_run_cluster_wide(
    cluster: Cluster, namespace: str, values: dict[str, Any]
) -> None:
    out = dry_run(cluster, helm_template(cluster, "kt", namespace, values, "--include-crds"))
    kinds = {line.split("/", 1)[0].split(".", 1)[0] for line in out.splitlines() if "/" in line}
    assert kinds >= {
        "customresourcedefinition",
        "deployment",
        "clusterrole",
        "clusterrolebinding",
        "serviceaccount",
        "service",
        "poddisruptionbudget",
        "role",
        "rolebinding",
    }, out
    assert all(line.endswith("(server dry run)") for line in out.splitlines()), out


def test_server_dry_run_namespaced(
    cluster: Cluster, namespace: str, other_namespaces: list[str]
) -> None:
    out = dry_run(
        cluster, helm_template(cluster, "kt", namespace, {"watchNamespaces": other_namespaces})
    )
    # kubectl prints no namespace: one Role and RoleBinding per watched namespace.
    assert out.count("role.rbac.authorization.k8s.io/kt-kubetune created") == 2, out
    assert out.count("rolebinding.rbac.authorization.k8s.io/kt-kubetune created") == 2, out
    assert "clusterrole.rbac.authorization.k8s.io/" in out  # the CRD reader only


# ------------------------------------------------------------------------------- can-i


@contextlib.contextmanager
def applied_rbac(cluster: Cluster, ns: str, values: dict[str, Any]) -> Iterator[str]:
    """Apply the chart's ServiceAccount and RBAC for real; yield the SA's user name."""
    manifests = helm_template(
        cluster,
        "kt",
        ns,
        values,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    )
    with cluster.applied(manifests):
        yield f"system:serviceaccount:{ns}:kt-kubetune"


def can_i(
    cluster: Cluster, user: str, verb: str, resource: str, ns: str | None, name: str | None = None
) -> bool:
    """The API server's authorizer's answer for the ServiceAccount `user` (a SubjectAccessReview,
    with the groups a ServiceAccount token carries). `resource` may name a subresource
    (pods/log, finetunejobs.kubetune.io/status)."""
    from kubernetes import client

    res_type, _, sub = resource.partition("/")
    plural, _, group = res_type.partition(".")
    sa_ns = user.split(":")[2]
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_ns}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                namespace=ns or "",
                verb=verb,
                group=group,
                resource=plural,
                subresource=sub or None,
                name=name,
            ),
        )
    )
    answer = client.AuthorizationV1Api(cluster.api_client()).create_subject_access_review(review)
    return bool(answer.status and answer.status.allowed)


def resource_arg(group: str, resource: str) -> str:
    """`kubectl auth can-i` spelling: finetunejobs.kubetune.io, finetunejobs.kubetune.io/status"""
    base, _, sub = resource.partition("/")
    full = f"{base}.{group}" if group else base
    return f"{full}/{sub}" if sub else full


def assert_rules(
    cluster: Cluster, user: str, ns: str | None, rules: dict[tuple[str, str], set[str]]
) -> None:
    denied = [
        (g, r, v)
        for (g, r), verbs in rules.items()
        for v in sorted(verbs)
        if not can_i(cluster, user, v, resource_arg(g, r), ns)
    ]
    assert not denied, f"the chart's ServiceAccount may not: {denied} (namespace {ns})"


FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
    ("get", "pods/log"),
    # create/delete finetunejobs: granted since FineTuneSchedule stamps runs (in the schedule's
    # own namespace; the guardrails policy judges them as any author's) and prunes its history
    ("delete", "finetunejobs.kubetune.io/status"),
    ("create", "pods/eviction"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("create", "serviceaccounts/token"),
    ("list", "nodes"),
    ("deletecollection", "jobs.batch"),
]


def assert_forbidden(cluster: Cluster, user: str, ns: str | None) -> None:
    allowed = [(v, r) for v, r in FORBIDDEN if can_i(cluster, user, v, r, ns)]
    assert not allowed, f"the chart's ServiceAccount may: {allowed} (namespace {ns})"


def test_rbac_cluster_wide(cluster: Cluster, namespace: str) -> None:
    work = f"kt-chart-work-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", work)
    try:
        with applied_rbac(cluster, namespace, {}) as user:
            assert_rules(cluster, user, work, rbac_contract.WORKLOAD_RULES)
            assert_rules(cluster, user, None, rbac_contract.CRD_RULES)
            assert_lease(cluster, user, namespace)
            assert_forbidden(cluster, user, work)
            assert_forbidden(cluster, user, namespace)
            # The Lease: only in the release namespace, only the chart's one.
            assert not can_i(
                cluster, user, "update", "leases.coordination.k8s.io", work, "kubetune-operator"
            )
            assert not can_i(
                cluster,
                user,
                "update",
                "leases.coordination.k8s.io",
                namespace,
                "someone-elses-lease",
            )
            assert can_i(
                cluster,
                user,
                "update",
                "leases.coordination.k8s.io",
                namespace,
                "kubetune-operator",
            )
            # Kopf follows no namespaces (cluster-wide, or scanning off when given namespaces).
            assert not can_i(cluster, user, "list", "namespaces", None)
            escalation_check(cluster, user, work)
    finally:
        cluster.kubectl("delete", "namespace", work, "--wait=false", check=False)


def test_rbac_namespaced(cluster: Cluster, namespace: str, other_namespaces: list[str]) -> None:
    watched, unwatched = other_namespaces
    with applied_rbac(cluster, namespace, {"watchNamespaces": [watched]}) as user:
        assert_rules(cluster, user, watched, rbac_contract.WORKLOAD_RULES)
        assert_rules(cluster, user, None, rbac_contract.CRD_RULES)
        assert not can_i(cluster, user, "list", "namespaces", None)
        assert not can_i(cluster, user, "get", "namespaces", None, unwatched)
        assert_lease(cluster, user, namespace)
        assert_forbidden(cluster, user, watched)
        for verb in ("get", "list", "watch", "patch"):
            assert not can_i(cluster, user, verb, "finetunejobs.kubetune.io", unwatched)
            assert not can_i(cluster, user, verb, "finetunejobs.kubetune.io", None)
        assert not can_i(cluster, user, "create", "jobs.batch", unwatched)
        assert not can_i(cluster, user, "create", "roles.rbac.authorization.k8s.io", unwatched)
        escalation_check(cluster, user, watched)


def assert_lease(cluster: Cluster, user: str, ns: str) -> None:
    """Leader election: create any Lease, get/update only the chart's, in the release namespace."""
    lease = "leases.coordination.k8s.io"
    assert set(rbac_contract.LEASE_RULES[("coordination.k8s.io", "leases")]) == {
        "create",
        "get",
        "update",
    }
    assert can_i(cluster, user, "create", lease, ns)
    for verb in ("get", "update"):
        assert can_i(cluster, user, verb, lease, ns, "kubetune-operator")
        assert not can_i(cluster, user, verb, lease, ns, "someone-elses-lease")
    assert not can_i(cluster, user, "delete", lease, ns, "kubetune-operator")


def escalation_check(cluster: Cluster, user: str, ns: str) -> None:
    """RBAC lets the operator create the trainer Role it renders (it holds those rights) and
    refuses a Role granting more than it holds (Secrets)."""

    def create_as(user: str, obj: dict[str, Any]) -> Any:
        return cluster.kubectl(
            "create", "--dry-run=server", "--as", user, "-f", "-",
            input=yaml.safe_dump(obj), check=False,
        )  # fmt: skip

    trainer_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "x-trainer", "namespace": ns},
        "rules": [
            {
                "apiGroups": ["kubetune.io"],
                "resources": ["finetunejobs/status"],
                "resourceNames": ["x"],
                "verbs": ["get", "patch"],
            }
        ],
    }
    ok = create_as(user, trainer_role)
    assert ok.returncode == 0, ok.stderr
    greedy = dict(
        trainer_role, rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    )
    denied = create_as(user, greedy)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
