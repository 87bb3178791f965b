"""Suspend/resume, spec changes under each onSpecChange policy, and TTL (stub trainer)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def running_pods(ftj: Ftj, run: int | None = None) -> list[dict[str, Any]]:
    return [
        p
        for p in ftj.pods(run)
        if p["status"].get("phase") in ("Pending", "Running")
        and not p["metadata"].get("deletionTimestamp")
    ]


def test_suspend_then_resume(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(stub_ftj("pause", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "pause")
    ftj.wait_phase("Running")
    first_pod = ftj.pods()[0]["metadata"]["name"]

    ftj.patch_spec({"runPolicy": {"suspend": True}})
    st = ftj.wait_phase("Suspended")
    assert ftj.condition("Suspended")["reason"] == "Suspended"
    # Suspended is not done: kstatus (Flux) reads InProgress (docs/gitops.md).
    assert ftj.condition("Reconciling")["status"] == "True"
    assert ftj.condition("Stalled")["status"] == "False"
    (job,) = ftj.jobs()
    assert job["spec"]["suspend"] is True
    ftj.wait(lambda: not running_pods(ftj), "the pod to stop", timeout=60)
    assert st["run"] == 1

    ftj.patch_spec({"runPolicy": {"suspend": False}})
    st = ftj.wait_phase("Running", timeout=60)
    assert st["run"] == 1 and len(ftj.jobs()) == 1  # the same run resumes
    assert [p["metadata"]["name"] for p in running_pods(ftj)] != [first_pod]
    reasons = ftj.event_reasons()
    assert "Suspended" in reasons and "Resumed" in reasons, reasons
    assert ftj.condition("Failed")["status"] == "False"


def test_external_suspend_is_preempted_and_left_alone(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(stub_ftj("queued", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "queued")
    ftj.wait_phase("Running")
    # What Kueue does to preempt a workload: suspend the Job, not the FineTuneJob.
    cluster.kubectl("patch", "job", "queued-run-1", "--type=merge", "-p", '{"spec":{"suspend":true}}',
                    namespace=namespace)  # fmt: skip
    ftj.wait_phase("Suspended")
    assert ftj.condition("Suspended")["reason"] == "Preempted"
    time.sleep(12)  # a resync period: the operator must not undo someone else's suspend
    assert ftj.jobs()[0]["spec"]["suspend"] is True
    assert ftj.status()["phase"] == "Suspended"
    assert ftj.condition("Failed")["status"] == "False"
    cluster.kubectl("patch", "job", "queued-run-1", "--type=merge", "-p", '{"spec":{"suspend":false}}',
                    namespace=namespace)  # fmt: skip
    ftj.wait_phase("Running", timeout=60)


def test_spec_change_restart(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(stub_ftj("gitops", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "gitops")
    ftj.wait_phase("Running")
    ftj.wait(lambda: (ftj.status().get("progress") or {}).get("run") == 1, "run 1 progress")

    ftj.patch_spec({"hyperparameters": {"maxSteps": 20}})
    st = ftj.wait(lambda: ftj.status() if ftj.status().get("run") == 2 else None, "run 2")
    assert st["runGeneration"] == 2 and st["jobName"] == "gitops-run-2"
    (h,) = st["history"]
    assert h["run"] == 1 and h["outcome"] == "Superseded" and h["generation"] == 1
    # Progress of run 1 was cleared; whatever is there now is run 2's.
    assert (st.get("progress") or {}).get("run") in (None, 2)
    ftj.wait(
        lambda: [j["metadata"]["name"] for j in ftj.jobs()] == ["gitops-run-2"], "run 1 deleted"
    )
    ftj.wait_phase("Running")
    cfg = json.loads(
        cluster.kubectl_json("get", "configmap", "gitops-run-2", namespace=namespace)["data"][
            "config.json"
        ]
    )
    assert cfg["job"]["run"] == 2 and cfg["spec"]["hyperparameters"]["maxSteps"] == 20
    assert "Restarted" in ftj.event_reasons()


def test_spec_change_queue(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    manifest = stub_ftj(
        "queue", "ok", hyperparameters={"maxSteps": 80}, runPolicy={"onSpecChange": "Queue"}
    )
    cluster.apply(manifest, namespace=namespace)
    ftj = Ftj(cluster, namespace, "queue")
    ftj.wait_phase("Running")
    ftj.patch_spec({"hyperparameters": {"maxSteps": 10}})
    st = ftj.wait(
        lambda: ftj.status() if ftj.status().get("queuedGeneration") == 2 else None, "queued"
    )
    assert st["run"] == 1 and st["phase"] == "Running"
    assert [j["metadata"]["name"] for j in ftj.jobs()] == ["queue-run-1"]
    assert ftj.condition("Reconciling")["reason"] == "Queued"
    # Run 1 finishes, then run 2 starts by itself and finishes too.
    st = ftj.wait_run(2, "Succeeded", timeout=120)
    (h,) = st["history"]
    assert h["outcome"] == "Succeeded" and h["run"] == 1
    uid8 = ftj.get()["metadata"]["uid"][:8]  # run prefixes carry the object's uid
    assert h["artifacts"]["mergedModelUri"].endswith(f"/queue/{uid8}/run-1/merged/")
    assert st["artifacts"]["mergedModelUri"].endswith(f"/queue/{uid8}/run-2/merged/")
    assert "queuedGeneration" not in st and st["runGeneration"] == 2
    assert "Queued" in ftj.event_reasons()


def test_spec_change_ignore(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(
        stub_ftj("frozen", "hang", runPolicy={"onSpecChange": "Ignore"}), namespace=namespace
    )
    ftj = Ftj(cluster, namespace, "frozen")
    ftj.wait_phase("Running")
    ftj.patch_spec({"hyperparameters": {"maxSteps": 99}})
    st = ftj.wait(
        lambda: ftj.status() if ftj.status().get("observedGeneration") == 2 else None, "observed"
    )
    assert st["run"] == 1 and st["runGeneration"] == 1
    time.sleep(5)
    assert len(ftj.jobs()) == 1
    assert "SpecChangeIgnored" in ftj.event_reasons()


def test_finished_run_removed_by_ttl_never_runs_again(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    op = operators.new()
    manifest = stub_ftj(
        "ttl", "ok", hyperparameters={"maxSteps": 30}, runPolicy={"ttlSecondsAfterFinished": 0}
    )
    cluster.apply(manifest, namespace=namespace)
    ftj = Ftj(cluster, namespace, "ttl")
    ftj.wait_phase("Running")
    # The run ends while the operator is down: with TTL 0 the result must still be recorded
    # (the operator, not the TTL controller, deletes the Job, after reading the result).
    op.kill()
    ftj.wait(lambda: cluster.job_condition(namespace, "ttl-run-1") == "Complete", "Job complete")
    time.sleep(3)
    assert [j["metadata"]["name"] for j in ftj.jobs()] == ["ttl-run-1"]
    op.start()
    st = ftj.wait_phase("Succeeded", "Failed")
    assert st["phase"] == "Succeeded" and st["artifacts"]["mergedModelUri"].endswith(
        f"/ttl/{ftj.get()['metadata']['uid'][:8]}/run-1/merged/"
    )
    ftj.wait(lambda: not ftj.jobs(), "the Job deleted after its result was recorded", timeout=30)
    # Finished, Job gone: nothing runs again, also across a restart (state is in the status).
    op.stop()
    op.start()
    time.sleep(12)
    assert ftj.jobs() == []
    after = ftj.status()
    assert after["phase"] == "Succeeded" and after["run"] == 1
    assert after["artifacts"] == st["artifacts"]
