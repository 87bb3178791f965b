"""End to end with the real trainer: `kubectl apply -f examples/quickstart.yaml` -> a Job -> the
trainer trains the tiny model on CPU from MinIO -> adapter and merged model in MinIO -> the
FineTuneJob is Succeeded with artifact URIs and final metrics."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster
from operator_harness import Ftj, Operators, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.slow]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def keys(s3: Any, uri: str) -> list[str]:
    bucket, prefix = split(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_quickstart_end_to_end(
    cluster: Cluster, namespace: str, operators: Operators, s3: Any, tiny_fixtures: None
) -> None:
    operators.new(stub=False)
    t0 = time.monotonic()
    cluster.kubectl("apply", "-f", str(QUICKSTART), namespace=namespace)
    ftj = Ftj(cluster, namespace, "quickstart")
    # Wait for either end, so a failed run fails the test at once (not after kubectl wait's
    # whole timeout); then the user-facing check: kubectl wait returns 0.
    st = ftj.wait_phase("Succeeded", "Failed", timeout=900)
    elapsed = time.monotonic() - t0
    wait = cluster.kubectl(
        "wait", "--for=condition=Succeeded", "ftj/quickstart", "--timeout=30s",
        namespace=namespace, check=False, timeout=60,
    )  # fmt: skip
    if st["phase"] != "Succeeded" or wait.returncode != 0:
        pods = ftj.pods()
        log = cluster.pod_log(namespace, pods[-1]["metadata"]["name"], "trainer") if pods else ""
        pytest.fail(
            f"not Succeeded: {json.dumps(st, indent=1)}\n--- trainer log ---\n{log[-6000:]}"
        )
    assert st["phase"] == "Succeeded"
    uid8 = ftj.get()["metadata"]["uid"][:8]
    prefix = f"s3://{cluster.s3_bucket}/output/{namespace}/quickstart/{uid8}/run-1/"
    arts = st["artifacts"]
    assert arts["adapterUri"].startswith(prefix) and arts["mergedModelUri"].startswith(prefix)
    assert any(k.endswith("adapter_model.safetensors") for k in keys(s3, arts["adapterUri"]))
    merged = keys(s3, arts["mergedModelUri"])
    assert any(k.endswith(".safetensors") for k in merged) and any(
        k.endswith("config.json") for k in merged
    )
    bucket, key = split(arts["manifestUri"])
    manifest = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(manifest).hexdigest() == arts["manifestSha256"]
    assert "eval_loss" in st["metrics"] and "train_loss" in st["metrics"], st["metrics"]
    # Progress came from the trainer itself, through its own ServiceAccount.
    assert (
        st["progress"]["run"] == 1 and st["progress"]["step"] == st["progress"]["totalSteps"] == 30
    )
    assert st["progressSummary"] == "30/30 (100%)"
    reasons = ftj.event_reasons()
    assert reasons[0] == "Created" and reasons[-1] == "Completed", reasons
    print(f"\nquickstart: apply -> Succeeded in {elapsed:.0f}s; metrics {st['metrics']}")

    # Deleting the FineTuneJob removes its children; the artifacts stay.
    cluster.kubectl("delete", "ftj", "quickstart", "--wait=true", namespace=namespace)
    wait_gone(
        cluster,
        lambda: cluster.kubectl(
            "get", "jobs,pods,configmaps,serviceaccounts,roles,rolebindings",
            "-l", "kubetune.io/job=quickstart", "-o", "name", namespace=namespace,
        ).stdout.split(),
        "children of quickstart",
    )  # fmt: skip
    assert keys(s3, arts["manifestUri"]) == [key]


def test_missing_dataset_fails_with_dataset_error(
    cluster: Cluster, namespace: str, operators: Operators, tiny_fixtures: None
) -> None:
    operators.new(stub=False)
    manifest = yaml.safe_load(QUICKSTART.read_text())
    manifest["metadata"]["name"] = "no-data"
    manifest["spec"]["dataset"]["s3Uri"] = f"s3://{cluster.s3_bucket}/datasets/does-not-exist.jsonl"
    cluster.apply(manifest, namespace=namespace)
    ftj = Ftj(cluster, namespace, "no-data")
    st = ftj.wait_phase("Failed", "Succeeded", timeout=300)
    assert st["phase"] == "Failed", st
    cond = ftj.condition("Failed")
    assert cond["reason"] == "DatasetError", cond
    assert "does-not-exist.jsonl" in cond["message"], cond
    assert len(ftj.pods()) == 1  # not retried: exit code 11 fails the Job at once
    assert any(e["reason"] == "DatasetError" and e["type"] == "Warning" for e in ftj.events())
