"""Jobs chain by reference (`spec.model.fromJob`) on the real control plane, stub trainer.

B names A as its base: B waits (Pending, WaitingForBase) while A does not exist and while it
runs, then trains on A's merged model (the run's config holds A's concrete s3:// URI) with the
lineage (A's uid, run, manifest sha256) in status and on the Job. A base that fails makes the
chained job fail with BaseFailed; a reference into another namespace is refused
(BaseNotAllowed) unless the platform allows it.
"""

from __future__ import annotations

import json
import time

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def chained(name: str, base: str, **ref: str) -> dict:
    body = stub_ftj(name)
    body["spec"]["model"] = {"fromJob": {"name": base, **ref}}
    return body


def ready_reason(st: dict) -> str | None:
    return next((c["reason"] for c in st.get("conditions") or [] if c["type"] == "Ready"), None)


def test_chained_job_waits_for_its_base_then_trains_on_its_merged_model(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new(env={"KUBETUNE_BASE_POLL_SECONDS": "1"})
    cluster.apply(chained("domain", "general"), namespace=namespace)
    b = Ftj(cluster, namespace, "domain")
    st = b.wait(
        lambda: (s := b.status()).get("phase") == "Pending" and ready_reason(s) == "WaitingForBase"
        and s, "domain waits for general to exist",
    )  # fmt: skip
    assert "general" in st["message"] and "exist" in st["message"], st
    assert b.jobs() == []

    cluster.apply(stub_ftj("general", hyperparameters={"maxSteps": 60}), namespace=namespace)
    a = Ftj(cluster, namespace, "general")
    a.wait_phase("Running")
    time.sleep(2)  # several base polls while general runs
    st = b.status()
    assert st["phase"] == "Pending" and ready_reason(st) == "WaitingForBase", st
    assert "Running" in st["message"], st
    assert b.jobs() == [], "domain must not start before general succeeded"

    a_st = a.wait_phase("Succeeded", timeout=120)
    st = b.wait_phase("Succeeded", timeout=120)
    merged = a_st["artifacts"]["mergedModelUri"]
    lineage = st["lineage"]
    assert lineage == {
        "namespace": namespace, "name": "general", "uid": a.get()["metadata"]["uid"],
        "run": 1, "artifact": "merged", "modelUri": merged,
        "manifestUri": a_st["artifacts"]["manifestUri"],
        "manifestSha256": a_st["artifacts"]["manifestSha256"],
    }, lineage  # fmt: skip
    assert st["model"] == "finetunejob://general"
    (job,) = b.jobs()
    assert json.loads(job["metadata"]["annotations"]["kubetune.io/lineage"]) == lineage
    cm = cluster.kubectl_json("get", "configmap", "domain-run-1", namespace=namespace)
    cfg = json.loads(cm["data"]["config.json"])
    assert cfg["spec"]["model"] == {"s3Uri": merged, "trustRemoteCode": False}, cfg["spec"]
    assert cfg["lineage"] == lineage and "baseAdapterUri" not in cfg


def test_chained_job_fails_when_its_base_fails_and_cross_namespace_is_refused(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new(env={"KUBETUNE_BASE_POLL_SECONDS": "1"})
    cluster.apply(stub_ftj("broken", "fail-11"), namespace=namespace)
    cluster.apply(chained("after-broken", "broken"), namespace=namespace)
    cluster.apply(chained("elsewhere", "general", namespace="kube-system"), namespace=namespace)
    Ftj(cluster, namespace, "broken").wait_phase("Failed")
    b = Ftj(cluster, namespace, "after-broken")
    st = b.wait(lambda: (s := b.status()).get("phase") == "Failed" and s, "after-broken fails")
    assert ready_reason(st) == "BaseFailed", st
    assert "broken" in st["message"] and "DatasetError" in st["message"], st
    assert b.jobs() == []
    assert "BaseFailed" in b.event_reasons()

    c = Ftj(cluster, namespace, "elsewhere")
    st = c.wait(lambda: (s := c.status()).get("phase") == "Failed" and s, "elsewhere refused")
    assert ready_reason(st) == "BaseNotAllowed", st
    assert "spec.model.fromJob.namespace" in st["message"]
    assert "modelRefs.crossNamespace" in st["message"]
