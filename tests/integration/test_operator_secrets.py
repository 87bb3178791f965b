"""Secret references are opt-in (issue 12, floor 3), with the real operator on the real control
plane: an unlisted Secret is refused with a clear status and never reaches a pod (no Job is
created); the same spec runs once the platform allows that Secret."""

from __future__ import annotations

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration

TOKEN_REF = {"tokenSecretRef": {"name": "hf-token", "key": "token"}}


def test_an_unlisted_secret_never_reaches_a_pod(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    cluster.kubectl("create", "secret", "generic", "hf-token", "--from-literal=token=hf_secret",
                    namespace=namespace)  # fmt: skip
    op = operators.new()
    cluster.apply(stub_ftj("gated", model={"hubId": "stub/ok", **TOKEN_REF}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "gated")
    st, cond = ftj.wait_refused("SecretNotAllowed")
    assert cond["message"].startswith("spec.model.tokenSecretRef: Secret 'hf-token'")
    assert "trainer.allowedSecrets" in cond["message"]
    assert "hf_secret" not in str(st) and ftj.jobs() == []
    assert cluster.kubectl_json("get", "pods", namespace=namespace)["items"] == []

    # The platform opts the Secret in: the same object runs (on the next resync).
    op.stop()
    operators.new("op-b", env={"KUBETUNE_ALLOWED_SECRETS": f"{namespace}/hf-token"})
    st = ftj.wait_phase("Succeeded", timeout=90)
    (job,) = ftj.jobs()
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    hf = next(e for e in env if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
