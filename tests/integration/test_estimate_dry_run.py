"""spec.dryRun with the real operator and the real trainer entry point: the quickstart with
`dryRun: true` ends Succeeded with the estimate in status.estimate, its one pod asked for no
GPU, and nothing was written to the output prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster
from operator_harness import Ftj, Operators

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dry_run_ends_succeeded_with_the_estimate_and_no_gpu_pod(
    cluster: Cluster, namespace: str, operators: Operators, s3: Any, tiny_fixtures: None
) -> None:
    operators.new(stub=False)
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = "estimate-me"
    doc["spec"]["dryRun"] = True
    doc["spec"].setdefault("resources", {})["gpus"] = 1  # asked for, and still not given
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), namespace=namespace)
    ftj = Ftj(cluster, namespace, "estimate-me")
    st = ftj.wait_phase("Succeeded", "Failed", timeout=600)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    est = st["estimate"]
    assert est["rows"] > 0 and est["totalSteps"] == 30 and est["badRowCount"] == 0
    assert est["gpuMemoryGiB"]["peak"] > 0 and est["tokensPerRowMean"] > 0
    assert "dry run" in st["message"] and "artifacts" not in st
    for pod in ftj.pods():
        for c in pod["spec"]["containers"]:
            limits = (c.get("resources") or {}).get("limits") or {}
            assert not any("gpu" in k for k in limits), limits
    out = s3.list_objects_v2(Bucket=cluster.s3_bucket, Prefix=f"output/{namespace}/estimate-me/")
    assert out.get("KeyCount", 0) == 0
