"""The chart's RBAC is least-privilege and exactly what the operator needs (issue 6).

The expected rules below are the contract: docs/install.md lists them (checked here), the
integration test tests/integration/test_chart_install.py proves them sufficient by running the
operator under the chart's ServiceAccount, and `test_granted_is_what_the_operator_does` checks
them against every request the operator made in the middle tier (tests/middle, over a fake API
server that records them) and every resource its Kopf handlers watch.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from helmlib import CHART, RELEASE_NS, REPO, find, render

Rule = tuple[str, str, frozenset[str]]  # (apiGroup, resource, verbs)

# What the operator may do in every namespace it watches (cluster-wide: ClusterRole).
WORKLOAD_RULES: dict[tuple[str, str], set[str]] = {
    ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "patch", "create", "delete"},
    ("kubetune.io", "finetuneschedules"): {"get", "list", "watch"},
    ("kubetune.io", "finetuneschedules/status"): {"patch"},
    ("kubetune.io", "finetunejobs/status"): {"get", "patch"},
    ("kubetune.io", "finetunejobs/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "configmaps"): {"create", "get", "delete"},
    ("", "services"): {"create", "get", "delete"},
    ("", "serviceaccounts"): {"create", "get"},
    ("rbac.authorization.k8s.io", "roles"): {"create", "get", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"create", "get", "patch", "delete"},
    ("", "events"): {"create"},
    # Kueue's Workload of a queued run (queueing.py): status.queue, and spec.active for suspend.
    ("kueue.x-k8s.io", "workloads"): {"list", "patch"},
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
# Leader election: in the release namespace only; get/update only on the chart's Lease.
LEASE_RULES = {("coordination.k8s.io", "leases"): {"create", "get", "update"}}

FORBIDDEN_VERBS = {"*", "bind", "escalate", "impersonate", "approve", "sign", "deletecollection"}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def bound_rules(objs: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], set[str]]]:
    """namespace ('*' = cluster-wide) -> rules the chart's ServiceAccount gets there."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
    }
    out: dict[str, dict[tuple[str, str], set[str]]] = {}
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        assert [s["kind"] for s in b["subjects"]] == ["ServiceAccount"]
        assert b["subjects"][0]["namespace"] == RELEASE_NS
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace")
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        where = "*" if b["kind"] == "ClusterRoleBinding" else ns
        for key, verbs in flatten(role["rules"]).items():
            out.setdefault(where, {}).setdefault(key, set()).update(verbs)
    return out


def test_cluster_wide_mode_grants_exactly_the_contract() -> None:
    granted = bound_rules(render())
    assert set(granted) == {"*", RELEASE_NS}
    assert granted["*"] == {**WORKLOAD_RULES, **CRD_RULES}
    assert granted[RELEASE_NS] == LEASE_RULES


def test_namespaced_mode_grants_only_in_watched_namespaces() -> None:
    granted = bound_rules(render({"watchNamespaces": ["ml-a", "ml-b"]}))
    assert set(granted) == {"*", "ml-a", "ml-b", RELEASE_NS}
    # Nothing cluster-wide except reading CRDs (Kopf's namespace scanning is off when the
    # operator is given namespaces, so Namespace objects are not needed).
    assert granted["*"] == CRD_RULES
    assert granted["ml-a"] == WORKLOAD_RULES
    assert granted["ml-b"] == WORKLOAD_RULES
    assert granted[RELEASE_NS] == LEASE_RULES


def test_release_namespace_can_also_be_watched() -> None:
    granted = bound_rules(render({"watchNamespaces": [RELEASE_NS]}))
    merged = {**WORKLOAD_RULES, **LEASE_RULES}
    assert granted[RELEASE_NS] == merged


def test_leader_election_lease_is_pinned_by_name() -> None:
    objs = render()
    (role,) = [o for o in find(objs, "Role") if o["metadata"]["name"].endswith("leader-election")]
    assert role["metadata"]["namespace"] == RELEASE_NS
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["kubetune-operator"],
            "verbs": ["get", "update"],
        }
    ]
    # create cannot be limited by name (the name is not known before the object exists).
    assert [r["verbs"] for r in role["rules"] if not r.get("resourceNames")] == [["create"]]
    no_le = render({"leaderElection": {"enabled": False, "leaseName": "x"}})
    assert not [o for o in no_le if "leader-election" in o["metadata"]["name"]]


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["a", "b"]}])
def test_no_wildcards_no_secrets_no_escalation(values: dict[str, Any] | None) -> None:
    for o in render(values):
        for r in o.get("rules", []):
            assert "*" not in r.get("apiGroups", []) and "*" not in r.get("resources", []), r
            assert not FORBIDDEN_VERBS & set(r["verbs"]), r
            assert "secrets" not in r.get("resources", []), f"{o['kind']} grants secrets: {r}"
            assert not r.get("nonResourceURLs"), r


def test_operator_may_grant_what_trainer_roles_hold() -> None:
    """RBAC's escalation check: the operator can only create a Role granting `get`,`patch` on
    finetunejobs/status if it holds them itself (without the `escalate` verb)."""
    for values in (None, {"watchNamespaces": ["a"]}):
        for ns, rules in bound_rules(render(values)).items():
            if ("kubetune.io", "finetunejobs") in rules:
                assert {"get", "patch"} <= rules[("kubetune.io", "finetunejobs/status")], ns


def test_rbac_off_renders_no_rbac() -> None:
    objs = render({"rbac": {"create": False}})
    assert not [o for o in objs if "rbac" in o["apiVersion"]]


def test_install_doc_lists_the_granted_rules() -> None:
    """docs/install.md's permission table is the rendered RBAC, row for row."""
    doc = (REPO / "docs" / "install.md").read_text()
    table = doc.split("<!-- rbac-table -->", 2)[1]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`")
        group = "" if group == "core" else group
        for res in re.findall(r"`([^`]+)`", cells[1]):
            rows[(group, res)] = set(re.findall(r"`([^`]+)`", cells[2]))
    assert rows == {**WORKLOAD_RULES, **CRD_RULES, **LEASE_RULES}


# -------------------------------------------------------------- against the operator code

# Granted although no request of the operator uses it, and why (the chart's comments say the
# same). A grant that is neither used nor listed here fails the test below, and so does an
# entry here that has become used.
GRANTED_UNUSED: dict[tuple[str, str, str], str] = {
    ("kubetune.io", "finetunejobs/status", "get"): "granted on to each run's trainer Role",
    ("kubetune.io", "finetunejobs/finalizers", "update"): (
        "OwnerReferencesPermissionEnforcement: creating children with blockOwnerDeletion"
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "Kopf's resource scanning",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "Kopf's resource scanning",
    ("kueue.x-k8s.io", "workloads", "patch"): (
        "runPolicy.suspend of a queued run (Workload spec.active); needs a real Kueue's Workload: "
        "tests/integration/test_kueue.py"
    ),
}


def kopf_watches() -> set[tuple[str, str, str]]:
    """list+watch of every resource a registered Kopf handler of the operator watches."""
    import kopf
    from kubetune_operator import handlers

    assert handlers.job_event  # registered on import
    out: set[tuple[str, str, str]] = set()
    for handler in kopf.get_default_registry()._watching.get_all_handlers():
        sel = handler.selector
        assert sel is not None
        plural = sel.plural or sel.any_name
        assert plural, sel
        out |= {(sel.group or "", plural, "list"), (sel.group or "", plural, "watch")}
    return out


def test_granted_is_what_the_operator_does(operator_settings: Any) -> None:
    """Every request the operator made across the middle tier's scenarios (reconcile passes,
    crash recovery, name conflicts, leader election, the CRD wait, the resync) plus its Kopf
    watches is granted, in both install modes; and nothing is granted that none of them uses,
    unless GRANTED_UNUSED says why."""
    from middle.scenarios import exercise

    seen = exercise(operator_settings) | kopf_watches()
    granted = {
        (group, res, verb)
        for (group, res), verbs in {**WORKLOAD_RULES, **CRD_RULES, **LEASE_RULES}.items()
        for verb in verbs
    }
    assert not seen - granted, f"the operator does what the chart does not grant: {seen - granted}"
    assert granted - seen == set(GRANTED_UNUSED), (
        f"granted but unused, with no reason in GRANTED_UNUSED: {granted - seen - set(GRANTED_UNUSED)}"
        f"; listed as unused but used: {set(GRANTED_UNUSED) - (granted - seen)}"
    )
    # The chart renders exactly these tables: test_cluster_wide_mode_grants_exactly_the_contract.


def test_the_operator_client_cannot_address_secrets(operator_settings: Any) -> None:
    """The operator never reads a Secret (pods reference them by name), so its client's kind
    table has none, and no request of the middle tier touched one."""
    from kubetune_operator import k8s
    from middle.scenarios import exercise

    assert "Secret" not in k8s.KINDS
    assert "secrets" not in {plural for _, plural in k8s.KINDS.values()}
    with pytest.raises(KeyError):
        k8s.path("Secret", "team-a", "s3-credentials")
    assert not [s for s in exercise(operator_settings) if s[1] == "secrets"]


def test_namespaced_mode_turns_kopf_scanning_off() -> None:
    """Namespaced installs grant no access to Namespace objects; that holds only while the
    operator disables Kopf's namespace scanning when it is given namespaces."""
    import kopf
    from kubetune_operator.handlers import configure_kopf
    from kubetune_operator.settings import OperatorSettings

    for namespaces, disabled in ((["ml-a"], True), ([], False)):
        settings = kopf.OperatorSettings()
        configure_kopf(settings, OperatorSettings(trainer_image="t", lease_namespace="x",
                                                  namespaces=namespaces))  # fmt: skip
        assert settings.scanning.disabled is disabled


def test_chart_templates_name_no_secret_resources() -> None:
    for path in (CHART / "templates").rglob("*"):
        if path.is_file():
            assert not re.search(r"resources:.*secrets", path.read_text()), path
