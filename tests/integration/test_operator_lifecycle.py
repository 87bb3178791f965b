"""The operator end to end on the real control plane, with the stub trainer (fast).

Each test runs `kubetune-operator` as a subprocess (the chart's RBAC, a ServiceAccount token)
watching the test's namespace; the node agent runs the trainer pods as local processes.
"""

from __future__ import annotations

import json
import time

import pytest
from clusterlib import Cluster
from operator_harness import VENV_BIN, Ftj, Operators, stub_ftj, wait_gone

pytestmark = pytest.mark.integration


def test_run_succeeds_with_children_events_and_status(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    op = operators.new()
    cluster.apply(stub_ftj("ok"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "ok")
    t0 = time.monotonic()
    wait = cluster.kubectl(
        "wait", "--for=condition=Succeeded", "ftj/ok", "--timeout=90s", namespace=namespace,
        check=False, timeout=120,
    )  # fmt: skip
    assert wait.returncode == 0, wait.stderr
    elapsed = time.monotonic() - t0
    st = ftj.status()
    assert st["phase"] == "Succeeded", st
    assert st["run"] == 1 and st["jobName"] == "ok-run-1" and st["observedGeneration"] == 1
    uid8 = ftj.get()["metadata"]["uid"][:8]  # the run prefix carries the object's uid
    prefix = f"s3://kubetune/op-tests/{namespace}/ok/{uid8}/run-1/"
    assert st["artifacts"]["mergedModelUri"] == prefix + "merged/"
    assert st["artifacts"]["manifestUri"] == prefix + "manifest.json"
    assert st["metrics"]["eval_loss"] == 0.75
    assert st["model"] == "stub/ok"
    # status.progress is the trainer's (patched with its own token) and left as it wrote it.
    assert st["progress"]["step"] == 10 and st["progress"]["stage"] == "upload"
    assert st["progressSummary"] == "10/10 (100%)"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
    assert conds["Reconciling"]["status"] == "False" and conds["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conds.values())
    reasons = ftj.event_reasons()
    assert reasons[0] == "Created" and reasons[-1] == "Completed", reasons

    (job,) = ftj.jobs()
    meta = job["metadata"]
    owner = ftj.get()["metadata"]["uid"]
    assert meta["ownerReferences"][0]["uid"] == owner
    assert meta["labels"]["kubetune.io/run"] == "1"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[1]["action"] == "Ignore"
    for kind, name in (("configmap", "ok-run-1"), ("serviceaccount", "ok-trainer"),
                       ("role", "ok-trainer"), ("rolebinding", "ok-trainer")):  # fmt: skip
        obj = cluster.kubectl_json("get", kind, name, namespace=namespace)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == owner, kind

    # Kopf keeps no state on the resource: no finalizer, no annotations of its own. The one
    # kubetune annotation is the operator's status record (ledger.py), equal to the status.
    fmeta = ftj.get()["metadata"]
    assert not fmeta.get("finalizers")
    ann = fmeta.get("annotations") or {}
    assert [a for a in ann if "kopf" in a or "kubetune.io/" in a] == ["kubetune.io/status-record"]
    record = json.loads(ann["kubetune.io/status-record"])
    assert record == {k: v for k, v in ftj.status().items() if k != "progress"}

    # Observability: metrics, health, JSON log lines that name the object.
    code, body = op.http(op.metrics_port, "/metrics")
    assert code == 200
    assert 'kubetune_finetunejobs{phase="Succeeded"} 1.0' in body
    assert "kubetune_reconcile_duration_seconds_count" in body
    assert op.http(op.health_port, "/healthz")[0] == 200
    assert op.http(op.health_port, "/readyz")[0] == 200
    lines = [json.loads(line) for line in op.log().splitlines() if line.strip()]
    assert all("namespace" in r and "name" in r for r in lines)
    assert any(r["name"] == "ok" and r["namespace"] == namespace for r in lines)
    print(f"stub run: apply -> Succeeded in {elapsed:.1f}s")


def test_identical_reapply_and_metadata_edits_start_nothing(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    manifest = stub_ftj("same")
    cluster.apply(manifest, namespace=namespace)
    ftj = Ftj(cluster, namespace, "same")
    ftj.wait_phase("Succeeded")
    before = ftj.get()
    events = len(ftj.events())
    cluster.apply(manifest, namespace=namespace)
    cluster.kubectl("annotate", "ftj", "same", "team=ml", namespace=namespace)
    cluster.kubectl("label", "ftj", "same", "tier=gold", namespace=namespace)
    time.sleep(12)  # more than one resync period of the operator
    after = ftj.get()
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"] == before["status"]
    assert len(ftj.jobs()) == 1 and len(ftj.events()) == events


def test_delete_removes_every_child(cluster: Cluster, namespace: str, operators: Operators) -> None:
    op = operators.new()
    cluster.apply(stub_ftj("gone", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "gone")
    ftj.wait_phase("Running")
    # No finalizer: deleting works even while no operator runs; ownerReferences clean up.
    op.kill()
    cluster.kubectl("delete", "ftj", "gone", "--wait=true", "--timeout=60s", namespace=namespace)

    def children() -> list[str]:
        out = cluster.kubectl(
            "get", "jobs,pods,configmaps,serviceaccounts,roles,rolebindings",
            "-l", "kubetune.io/job=gone", "-o", "name", namespace=namespace,
        ).stdout.split()  # fmt: skip
        return out

    wait_gone(cluster, children, "children of the deleted FineTuneJob", timeout=90)


def test_kopf_run_module(cluster: Cluster, namespace: str, operators: Operators) -> None:
    """`kopf run -m kubetune_operator` works too (handlers register on import)."""
    kopf = str(VENV_BIN / "kopf")
    operators.new(command=[kopf, "run", "-m", "kubetune_operator", "--namespace", namespace])
    cluster.apply(stub_ftj("via-kopf"), namespace=namespace)
    assert (
        Ftj(cluster, namespace, "via-kopf").wait_phase("Succeeded", "Failed")["phase"]
        == "Succeeded"
    )
