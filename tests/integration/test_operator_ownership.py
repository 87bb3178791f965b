"""Confused deputy, on the real control plane with the real operator (issue 12, floors 2 and 4):

- a child name that is taken by an object this FineTuneJob does not control is never adopted,
  changed or deleted: the FineTuneJob is Stalled with reason NameConflict naming the object, and
  the object is byte-for-byte unchanged after the FineTuneJob is created and deleted (a
  pre-existing `<job>-trainer` ServiceAccount is never used by a pod);
- a status forged with the trainer's own token (run, phase, artifacts) is reverted and never
  acted on: the live run keeps running and ends with its real artifacts.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from clusterlib import Cluster
from kubetune_operator import render
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def decoy(kind: str, name: str) -> dict[str, Any]:
    meta = {"name": name, "labels": {"owner": "someone-else"}}
    if kind == "Job":
        return {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"suspend": True, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox.invalid/x", "command": ["true"]}],
            }}},
        }  # fmt: skip
    if kind == "ConfigMap":
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"a": "b"}}
    if kind == "ServiceAccount":
        meta["annotations"] = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/deploy"}
        return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    if kind == "Role":
        rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
                "rules": rules}  # fmt: skip
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default"}],
    }  # fmt: skip


def child_name(kind: str, ftj: str) -> str:
    if kind in ("Job", "ConfigMap"):
        return render.job_name(ftj, 1) if kind == "Job" else render.config_map_name(ftj, 1)
    return render.trainer_sa_name(ftj)  # the ServiceAccount, Role and RoleBinding share it


def snapshot(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", kind, name, namespace=namespace)
    meta = obj["metadata"]
    keep = {k: meta.get(k) for k in ("uid", "resourceVersion", "labels", "annotations")}
    keep["ownerReferences"] = meta.get("ownerReferences")
    return {"meta": keep, **{k: v for k, v in obj.items() if k not in ("metadata", "status")}}


@pytest.mark.parametrize("kind", ["Job", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"])
def test_a_taken_child_name_is_never_adopted_changed_or_deleted(
    cluster: Cluster, namespace: str, operators: Operators, kind: str
) -> None:
    operators.new()
    name = f"taken-{kind.lower()}"
    taken = child_name(kind, name)
    cluster.apply(decoy(kind, taken), namespace=namespace)
    before = snapshot(cluster, namespace, kind, taken)

    cluster.apply(stub_ftj(name), namespace=namespace)
    ftj = Ftj(cluster, namespace, name)

    def stalled() -> dict[str, Any] | None:
        c = ftj.condition("Stalled")
        return c if c.get("status") == "True" and c.get("reason") == "NameConflict" else None

    cond = ftj.wait(stalled, "Stalled/NameConflict", timeout=60)
    assert (
        f"{kind} {taken} already exists and is not controlled by this FineTuneJob"
        in (cond["message"])
    )
    # No pod ever ran: in particular none as a pre-existing `<job>-trainer` ServiceAccount.
    assert [j for j in ftj.jobs() if j["metadata"]["name"] != taken] == []
    assert snapshot(cluster, namespace, kind, taken) == before

    cluster.kubectl("delete", "finetunejob", name, namespace=namespace)
    time.sleep(3)  # the garbage collector would have acted by now on anything we owned
    assert snapshot(cluster, namespace, kind, taken) == before


def test_a_status_forged_with_the_trainer_token_is_reverted_and_never_acted_on(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(stub_ftj("forge", hyperparameters={"maxSteps": 250}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "forge")
    ftj.wait_phase("Running")
    token = cluster.kubectl(
        "create", "token", render.trainer_sa_name("forge"), namespace=namespace
    ).stdout.strip()
    forged = {"status": {
        "run": 2, "phase": "Succeeded", "specHash": "0000", "jobName": "forge-run-2",
        "artifacts": {"mergedModelUri": "s3://attacker/model/"},
    }}  # fmt: skip
    # The trainer's identity may patch its own job's status (RBAC cannot narrow it to
    # status.progress), so the forged patch lands.
    patched = subprocess.run(
        [cluster.kubectl_path, "--kubeconfig", "/dev/null", "--server", cluster.apiserver,
         "--certificate-authority", cluster.ca_file, "--token", token, "-n", namespace,
         "patch", "finetunejob", "forge", "--subresource=status", "--type=merge",
         "-p", json.dumps(forged)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr

    def reverted() -> dict[str, Any] | None:
        st = ftj.status()
        return st if st.get("run") == 1 and st.get("phase") == "Running" else None

    st = ftj.wait(reverted, "the forged status to be reverted", timeout=30)
    assert "artifacts" not in st and st["jobName"] == "forge-run-1"
    (job,) = ftj.jobs()  # the live run was not deleted as "an earlier run"
    assert job["metadata"]["name"] == "forge-run-1" and not job["metadata"].get("deletionTimestamp")
    st = ftj.wait_phase("Succeeded", "Failed", timeout=120)
    assert st["phase"] == "Succeeded" and st["run"] == 1
    assert st["artifacts"]["mergedModelUri"].startswith(f"s3://kubetune/op-tests/{namespace}/")
    ready = ftj.condition("Ready")
    assert ready["status"] == "True"
