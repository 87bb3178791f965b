"""Delete and re-create a FineTuneJob with the same name through the real operator and the
real trainer (issue 12, floor 1): the new object trains from step 0 under its own
<uid8> prefix, and every object the old one wrote (checkpoints, artifacts, manifest) is still
in MinIO afterwards, byte for byte. Today's layout (no uid in the prefix) makes the new object
load the old one's final checkpoint "without training" and delete its artifacts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster
from operator_harness import Ftj, Operators, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "recreated"


def manifest(cluster: Cluster, lr: float) -> dict[str, Any]:
    m = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    m["metadata"]["name"] = NAME
    hp = m["spec"]["hyperparameters"]
    hp.update(maxSteps=6, learningRate=lr, evalSteps=6, saveSteps=3, loggingSteps=2)
    m["spec"]["tracking"] = {"reportTo": []}
    m["spec"]["output"]["uri"] = f"s3://{cluster.s3_bucket}/output"
    return m


def snapshot(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def run_to_success(cluster: Cluster, namespace: str, lr: float) -> tuple[Ftj, dict[str, Any]]:
    cluster.apply(manifest(cluster, lr), namespace=namespace)
    ftj = Ftj(cluster, namespace, NAME)
    st = ftj.wait_phase("Succeeded", "Failed", timeout=600)
    if st["phase"] != "Succeeded":
        pods = ftj.pods()
        log = cluster.pod_log(namespace, pods[-1]["metadata"]["name"], "trainer") if pods else ""
        pytest.fail(f"not Succeeded: {json.dumps(st, indent=1)}\n--- log ---\n{log[-5000:]}")
    return ftj, st


def test_delete_and_recreate_keeps_the_old_artifacts_and_trains_anew(
    cluster: Cluster, namespace: str, operators: Operators, s3: Any, tiny_fixtures: None
) -> None:
    operators.new(stub=False)
    bucket = cluster.s3_bucket
    job_root = f"output/{namespace}/{NAME}/"

    ftj, first = run_to_success(cluster, namespace, 0.001)
    uid_old = ftj.get()["metadata"]["uid"]
    assert first["artifacts"]["manifestUri"] == (
        f"s3://{bucket}/{job_root}{uid_old[:8]}/run-1/manifest.json"
    )
    before = snapshot(s3, bucket, job_root)
    assert any(k.endswith("/COMPLETE") for k in before), sorted(before)

    cluster.kubectl("delete", "ftj", NAME, "--wait=true", namespace=namespace)
    wait_gone(
        cluster,
        lambda: cluster.kubectl(
            "get", "jobs,pods,configmaps", "-l", f"kubetune.io/job={NAME}", "-o", "name",
            namespace=namespace,
        ).stdout.split(),
        f"children of {NAME}",
    )  # fmt: skip

    ftj, second = run_to_success(cluster, namespace, 0.01)
    uid_new = ftj.get()["metadata"]["uid"]
    assert uid_new != uid_old
    new_prefix = f"s3://{bucket}/{job_root}{uid_new[:8]}/run-1/"
    assert second["artifacts"]["manifestUri"] == new_prefix + "manifest.json"
    assert "resumed_from_step" not in second["metrics"], second["metrics"]
    pods = ftj.pods()
    log = cluster.pod_log(namespace, pods[-1]["metadata"]["name"], "trainer")
    assert "without training" not in log and "starting at step 0" in log, log[-3000:]

    after = snapshot(s3, bucket, job_root)
    for key, data in before.items():
        assert after.get(key) == data, f"{key} changed or vanished"
    new_manifest = json.loads(after[f"{job_root}{uid_new[:8]}/run-1/manifest.json"])
    assert new_manifest["job"]["uid"] == uid_new
    old_adapter = before[f"{job_root}{uid_old[:8]}/run-1/adapter/adapter_model.safetensors"]
    assert after[f"{job_root}{uid_new[:8]}/run-1/adapter/adapter_model.safetensors"] != old_adapter
