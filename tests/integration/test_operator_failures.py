"""Failure paths end in the right phase, reason and message, with an Event (stub trainer)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def failed(ftj: Ftj, reason: str, timeout: float = 90) -> dict[str, Any]:
    st = ftj.wait_phase("Failed", "Succeeded", timeout=timeout)
    assert st["phase"] == "Failed", st
    cond = ftj.condition("Failed")
    assert cond["status"] == "True" and cond["reason"] == reason, cond
    assert ftj.condition("Stalled")["status"] == "True"
    assert ftj.condition("Ready")["status"] == "False"
    warnings = [e for e in ftj.events() if e["type"] == "Warning" and e["reason"] == reason]
    assert warnings, ftj.events()
    return cond


def test_non_retryable_trainer_error_fails_at_once(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(
        stub_ftj("bad-data", "fail-11", runPolicy={"backoffLimit": 3}), namespace=namespace
    )
    ftj = Ftj(cluster, namespace, "bad-data")
    cond = failed(ftj, "DatasetError")
    assert "stub failure with exit code 11" in cond["message"]
    assert len(ftj.pods()) == 1  # podFailurePolicy FailJob: no retries despite backoffLimit 3


def test_retryable_failure_stops_at_the_backoff_limit(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(stub_ftj("flaky", "fail-1", runPolicy={"backoffLimit": 1}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "flaky")
    cond = failed(ftj, "BackoffLimitExceeded")
    assert "2 failed attempt(s), backoffLimit 1" in cond["message"], cond
    assert "TrainerError" in cond["message"]
    assert len(ftj.pods()) == 2
    assert ftj.status()["attempts"] == 2


def test_memory_limit_oom_killed(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(stub_ftj("hog", "oom", resources={"memory": "256Mi"}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "hog")
    cond = failed(ftj, "OOMKilled")
    assert "memory limit" in cond["message"]


def test_killed_pod(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(stub_ftj("victim", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "victim")
    ftj.wait_phase("Running")
    (pod,) = ftj.pods()
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false", namespace=namespace)
    cond = failed(ftj, "PodKilled")
    assert "deleted" in cond["message"]


def test_eviction_retries_without_using_the_backoff_budget(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(stub_ftj("evicted", "hang"), namespace=namespace)  # backoffLimit 0
    ftj = Ftj(cluster, namespace, "evicted")
    ftj.wait_phase("Running")
    (pod,) = ftj.pods()
    name = pod["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": namespace}}  # fmt: skip
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction",
                    "-f", "-", input=json.dumps(eviction))  # fmt: skip

    def replaced() -> bool:
        pods = ftj.pods()
        running = [
            p
            for p in pods
            if p["metadata"]["name"] != name and p["status"].get("phase") == "Running"
        ]
        return bool(running) and ftj.status().get("phase") == "Running"

    ftj.wait(replaced, "a replacement pod running", timeout=90)
    assert ftj.status()["phase"] == "Running"
    assert ftj.condition("Failed")["status"] == "False"


def test_deadline_exceeded(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(
        stub_ftj("slow", "hang", runPolicy={"activeDeadlineSeconds": 60}), namespace=namespace
    )
    ftj = Ftj(cluster, namespace, "slow")
    ftj.wait_phase("Running")
    cond = failed(ftj, "DeadlineExceeded", timeout=150)
    assert "activeDeadlineSeconds (60s)" in cond["message"]


def test_exit_zero_without_result_is_not_success(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(stub_ftj("mute", "noresult"), namespace=namespace)
    failed(Ftj(cluster, namespace, "mute"), "ArtifactsMissing")


def test_service_account_outside_the_allow_list(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    cluster.apply(
        stub_ftj("sneaky", resources={"serviceAccountName": "default"}), namespace=namespace
    )
    ftj = Ftj(cluster, namespace, "sneaky")
    cond = failed(ftj, "ServiceAccountNotAllowed")
    assert "'default'" in cond["message"]
    assert ftj.jobs() == []
    assert "run" not in ftj.status()


def test_gpu_without_gpu_node_is_pending_unschedulable_then_runs_on_one(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    product = f"Test-GPU-{namespace[-5:]}"
    cluster.apply(
        stub_ftj("needs-gpu", resources={"gpus": 1, "gpuType": product}), namespace=namespace
    )
    ftj = Ftj(cluster, namespace, "needs-gpu")

    def unschedulable() -> dict[str, Any] | None:
        c = ftj.condition("Ready")
        return (
            c
            if ftj.status().get("phase") == "Pending" and c.get("reason") == "Unschedulable"
            else None
        )

    cond = ftj.wait(unschedulable, "Pending/Unschedulable", timeout=60)
    assert (
        "Insufficient nvidia.com/gpu" in cond["message"]
        or "node(s) didn't match" in cond["message"]
    ), cond
    assert ftj.condition("Reconciling")["status"] == "True"
    assert any(e["reason"] == "Unschedulable" and e["type"] == "Warning" for e in ftj.events())
    (job,) = ftj.jobs()
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": product}

    node = f"gpu-{namespace[-5:]}"
    cluster.add_node(node, gpus=1, labels={"nvidia.com/gpu.product": product})
    try:
        st = ftj.wait_phase("Succeeded", "Failed", timeout=120)
        assert st["phase"] == "Succeeded", st
        assert st["gpuSeconds"] > 0
        assert ftj.pods()[0]["spec"]["nodeName"] == node
    finally:
        cluster.remove_node(node)


def test_image_that_cannot_be_pulled_is_pending_with_the_reason(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    # An image override is a guardrail the platform opts into (guardrails.imageOverrideNamespaces).
    operators.new(env={"KUBETUNE_IMAGE_OVERRIDE_NAMESPACES": namespace})
    image = "registry.invalid/kubetune/trainer:missing"
    cluster.apply(stub_ftj("no-image", resources={"image": image}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "no-image")

    def backoff() -> dict[str, Any] | None:
        c = ftj.condition("Ready")
        return (
            c
            if ftj.status().get("phase") == "Pending" and c.get("reason") == "ImagePullBackOff"
            else None
        )

    cond = ftj.wait(backoff, "Pending/ImagePullBackOff", timeout=60)
    assert "cannot pull the trainer image" in cond["message"], cond
    assert any(e["reason"] == "ImagePullBackOff" and e["type"] == "Warning" for e in ftj.events())
