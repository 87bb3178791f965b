"""The chart's RBAC is least-privilege and exactly what the operator needs (issue 6).

The expected rules below are the contract: docs/install.md lists them (checked here), the
integration test tests/integration/test_chart_install.py proves them sufficient by running the
operator under the chart's ServiceAccount, and `test_operator_api_calls_are_granted` checks the
operator's source for API calls outside them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_chart_render import CHART, RELEASE_NS, REPO, find, render

Rule = tuple[str, str, frozenset[str]]  # (apiGroup, resource, verbs)

# What the operator may do in every namespace it watches (cluster-wide: ClusterRole).
WORKLOAD_RULES: dict[tuple[str, str], set[str]] = {
    ("kubetune.io", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("kubetune.io", "finetunejobs/status"): {"get", "patch"},
    ("kubetune.io", "finetunejobs/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "configmaps"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "serviceaccounts"): {"create", "get", "list", "watch", "delete", "patch"},
    ("", "services"): {"create", "get", "list", "watch", "delete", "patch"},
    ("rbac.authorization.k8s.io", "roles"): {"create", "get", "list", "watch", "delete", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings"): {
        "create",
        "get",
        "list",
        "watch",
        "delete",
        "patch",
    },
    ("", "events"): {"create", "patch"},
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

OPERATOR = REPO / "operator" / "kubetune_operator"
HTTP_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def operator_source() -> str:
    if not (OPERATOR / "__main__.py").exists() or not (OPERATOR / "k8s.py").exists():
        pytest.skip("the operator (operator/kubetune_operator/__main__.py, k8s.py) has not landed")
    return "\n".join(p.read_text() for p in sorted(OPERATOR.rglob("*.py")))


def operator_kinds() -> dict[str, tuple[str, str]]:
    """kind -> (apiGroup, plural) from the operator's API table (k8s.KINDS)."""
    k8s = pytest.importorskip("kubetune_operator.k8s")
    out = {}
    for kind, (prefix, plural) in k8s.KINDS.items():
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        out[kind] = (group, plural)
    return out


def test_operator_kinds_are_granted_or_unused() -> None:
    """Every kind the operator's client knows is granted, except Secrets, which it must never
    touch (only referenced by name in pod specs)."""
    src = operator_source()
    granted = {**WORKLOAD_RULES, **CRD_RULES, **LEASE_RULES}
    for kind, key in operator_kinds().items():
        if kind == "Secret":
            assert not re.search(r"""path\(\s*["']Secret["']""", src), "the operator reads Secrets"
            assert key not in granted
            continue
        assert key in granted, f"operator uses {kind} ({key}) but the chart grants nothing on it"


def test_operator_requests_are_granted() -> None:
    """Raw requests (`request("PUT", path("Lease", ...))`, `path("Event", ...)` POSTs...)."""
    src = operator_source()
    kinds = operator_kinds()
    granted = {**WORKLOAD_RULES, **CRD_RULES, **LEASE_RULES}
    pattern = re.compile(
        r"""request\(\s*["'](GET|POST|PUT|PATCH|DELETE)["'],\s*(?:url|path\(\s*["'](\w+)["'])"""
    )
    found = False
    for m in pattern.finditer(src):
        kind = m.group(2)
        if kind is None:
            continue
        found = True
        verb = HTTP_VERBS[m.group(1)]
        assert verb in granted[kinds[kind]], f"{m.group(0)}: {verb} {kinds[kind]} not granted"
    assert found
    for verb, kind in (("update", "Lease"), ("get", "Lease"), ("create", "Lease")):
        assert verb in granted[kinds[kind]]
    # Status is written with merge patches through the status subresource.
    assert "patch_status" in src and "patch" in granted[("kubetune.io", "finetunejobs/status")]


def test_namespaced_mode_turns_kopf_scanning_off() -> None:
    """Namespaced installs grant no access to Namespace objects; that holds only while the
    operator disables Kopf's namespace scanning when it is given namespaces."""
    src = operator_source()
    assert re.search(r"scanning\.disabled\s*=\s*bool\(\s*config\.namespaces\s*\)", src), (
        "the operator no longer disables Kopf scanning for explicit namespaces: namespaced "
        "installs would need list/watch on namespaces (see helm/kubetune/templates/rbac.yaml)"
    )


def test_kopf_watches_are_granted() -> None:
    """Every resource a Kopf handler watches needs list+watch."""
    src = operator_source()
    watched = re.findall(
        r"""@kopf\.on\.\w+\(\s*["']([^"']*)["'],\s*["']([^"']+)["'](?:,\s*["']([^"']+)["'])?""", src
    )
    assert watched, "no Kopf handlers found"
    granted = {**WORKLOAD_RULES, **CRD_RULES, **LEASE_RULES}
    for a, b, c in watched:
        # kopf.on.event(group, version, plural) or kopf.on.event("v1", "pods") for core.
        if c:
            group, plural = a, c
        else:
            group, plural = ("" if a == "v1" else a.split("/")[0]), b
        if group == "API_GROUP":
            group = "kubetune.io"
        verbs = granted.get((group, plural), set())
        assert {"list", "watch"} <= verbs, f"Kopf watches {group}/{plural}: not granted"


def test_chart_templates_name_no_secret_resources() -> None:
    for path in (CHART / "templates").rglob("*"):
        if path.is_file():
            assert not re.search(r"resources:.*secrets", path.read_text()), path
