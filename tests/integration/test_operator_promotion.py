"""The promotion gate's decision reaches the FineTuneJob (issue 20 floor 2), on the real API
server with the stub trainer: status.evaluation (base vs tuned), the Eval and Promoted columns,
status.promoted and the Promoted condition; a later run that fails the gate is still Succeeded,
with Promoted=False and the numbers. (The trainer's side, the pointer in MinIO, is
test_trainer_promotion.py.)"""

from __future__ import annotations

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration

GATED = {
    "dataset": {"inline": [{"text": "hello"}], "test": {"splitFraction": 0.2}},
    "output": {"uri": "s3://kubetune/op-tests", "promote": {"metric": "loss"}},
}


def test_promoted_then_not_promoted(cluster: Cluster, namespace: str, operators: Operators) -> None:
    operators.new()
    cluster.apply(stub_ftj("gated", "promoted", **GATED), namespace=namespace)
    ftj = Ftj(cluster, namespace, "gated")
    st = ftj.wait_phase("Succeeded", "Failed", timeout=90)
    assert st["phase"] == "Succeeded", st
    assert st["promoted"] is True
    assert st["evaluation"]["loss"] == {"base": 2.0, "tuned": 1.0}  # kept by the CRD schema
    assert st["evaluationSummary"] == "loss↓ 2 -> 1"
    assert st["promotion"]["reason"] == "Promoted"
    promoted = ftj.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "Promoted")
    wide = cluster.kubectl("get", "ftj", "gated", "-o", "wide", namespace=namespace).stdout
    assert "loss↓ 2 -> 1" in wide and "true" in wide, wide

    # Run 2 (a spec change restarts): the gate fails; the run still Succeeded.
    ftj.patch_spec({"model": {"hubId": "stub/notpromoted"}})
    st = ftj.wait(
        lambda: (s := ftj.status()).get("run") == 2 and s.get("phase") == "Succeeded" and s,
        "run 2 Succeeded",
    )
    assert st["promoted"] is False
    cond = ftj.condition("Promoted")
    assert (cond["status"], cond["reason"]) == ("False", "NotPromoted")
    assert "test loss 1.5 vs 1" in cond["message"]
    assert ftj.condition("Ready")["status"] == "True"
    assert st["history"][-1]["promoted"] is True  # run 1's decision stays in the history
