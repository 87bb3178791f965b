"""The per-job identity: a ServiceAccount, and a Role that may get and patch this FineTuneJob's
status and nothing else, bound to the pod's account (docs/design.md). Pure, like render.py."""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import API_GROUP, PLURAL, FineTuneJobSpec

from .admission import service_account
from .naming import Owner, child_meta, trainer_sa_name
from .settings import OperatorSettings


def service_account_object(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_meta(owner, trainer_sa_name(owner.name)),
        "automountServiceAccountToken": True,
    }


def role(owner: Owner) -> dict[str, Any]:
    """May get and patch the status of this FineTuneJob, and nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_meta(owner, trainer_sa_name(owner.name)),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [owner.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(owner: Owner, service_account_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_meta(owner, trainer_sa_name(owner.name)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": trainer_sa_name(owner.name),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account_name, "namespace": owner.namespace}
        ],
    }


def rbac(spec: FineTuneJobSpec, owner: Owner, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The per-job identity: ServiceAccount, Role, RoleBinding (bound to the pod's account)."""
    return [
        service_account_object(owner),
        role(owner),
        role_binding(owner, service_account(spec, owner.name, settings)),
    ]
