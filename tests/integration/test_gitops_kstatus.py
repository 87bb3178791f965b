"""GitOps tools on live FineTuneJobs: the real kstatus library (sigs.k8s.io/cli-utils v0.37.2,
what Flux's kustomize-controller runs; built by `hack/build-tools kstatus`) and the Argo CD
health Lua, on objects a real operator drives through every moment of tests/gitops_moments.py
(the table docs/gitops.md embeds). At every moment both tools must say what the table says, and
on every snapshot polled on the way they must agree with each other."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clusterlib import REPO, Cluster
from gitops_moments import BY_KEY
from operator_harness import Ftj, Operators, stub_ftj
from test_gitops_health import health

pytestmark = pytest.mark.integration

# Argo CD health -> the kstatus verdict that means the same to a GitOps user.
SAME_MEANING = {
    "Progressing": {"InProgress"},
    "Suspended": {"InProgress"},
    "Healthy": {"Current"},
    "Degraded": {"Failed"},
}


@pytest.fixture(scope="module")
def kstatus_bin() -> Path:
    subprocess.run([str(REPO / "hack" / "build-tools"), "kstatus"], check=True)
    paths = subprocess.run(
        [str(REPO / "hack" / "build-tools"), "paths"], capture_output=True, text=True, check=True
    ).stdout
    line = next(ln for ln in paths.splitlines() if ln.startswith("KUBETUNE_KSTATUS_BIN="))
    return Path(line.split("=", 1)[1]) / "kstatus"


class Judge:
    """Reads a live FineTuneJob and asks both tools about it."""

    def __init__(self, cluster: Cluster, namespace: str, binary: Path) -> None:
        self.cluster, self.namespace, self.binary = cluster, namespace, binary

    def verdicts(self, name: str) -> tuple[dict[str, Any], str, dict[str, str]]:
        obj = self.cluster.kubectl_json("get", "finetunejob", name, namespace=self.namespace)
        out = subprocess.run(
            [str(self.binary)], input=json.dumps(obj), capture_output=True, text=True, check=True
        ).stdout
        kstatus = json.loads(out)["status"]
        argo = health.argocd_health(obj)
        assert kstatus in SAME_MEANING[argo["status"]], (
            f"tools disagree on {name}: Argo CD {argo}, kstatus {kstatus}",
            obj.get("status"),
        )
        return obj, kstatus, argo

    def at(self, name: str, key: str, timeout: float = 90) -> dict[str, Any]:
        """Wait for moment `key` (its phase and reason), then check both tools' verdicts."""
        m = BY_KEY[key]
        deadline = time.monotonic() + timeout
        while True:
            obj, kstatus, argo = self.verdicts(name)
            st = obj.get("status") or {}
            conds = {c["type"]: c for c in st.get("conditions") or []}
            shown = conds.get("Stalled" if m.kstatus == "Failed" else "Ready", {})
            if st.get("phase", "") == m.phase and shown.get("reason", "") == m.reason:
                assert (kstatus, argo["status"]) == (m.kstatus, m.argo), (key, st)
                return obj
            if time.monotonic() > deadline:
                raise AssertionError(f"moment {key} not reached on {name}: {st}")
            time.sleep(0.5)


@pytest.fixture
def judge(cluster: Cluster, namespace: str, kstatus_bin: Path) -> Judge:
    return Judge(cluster, namespace, kstatus_bin)


def patch(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "finetunejob", name, "--type=merge", "-p", json.dumps({"spec": spec}),
        namespace=namespace,
    )  # fmt: skip


def test_a_run_from_creation_to_an_invalid_spec(
    cluster: Cluster, namespace: str, operators: Operators, judge: Judge
) -> None:
    cluster.apply(stub_ftj("life", "hang"), namespace=namespace)
    # No operator yet: the CRD's status default keeps both tools waiting (it used to read Current).
    obj = judge.at("life", "created", timeout=5)
    assert obj["status"] == {"observedGeneration": 0}
    operators.new()
    judge.at("life", "running")
    patch(cluster, namespace, "life", {"runPolicy": {"suspend": True}})
    judge.at("life", "suspended")
    patch(cluster, namespace, "life", {"runPolicy": {"suspend": False}})
    judge.at("life", "resumed")

    patch(cluster, namespace, "life", {"hyperparameters": {"maxSteps": 20}})
    obj = judge.at("life", "changed-running")
    wait_for(lambda: Ftj(cluster, namespace, "life").status().get("run") == 2, "run 2")

    # A spec that cannot run while run 2 is active: Failed/Degraded now, not when run 2 ends.
    patch(cluster, namespace, "life", {"resources": {"serviceAccountName": "default"}})
    obj = judge.at("life", "invalid-running", timeout=30)
    conds = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conds["Reconciling"] == "False" and conds["Stalled"] == "True"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


def test_success_then_a_spec_change_and_failures(
    cluster: Cluster, namespace: str, operators: Operators, judge: Judge
) -> None:
    operators.new()
    cluster.apply(stub_ftj("done"), namespace=namespace)
    cluster.apply(stub_ftj("bad", "fail-11"), namespace=namespace)
    cluster.apply(
        stub_ftj(
            "stuck",
            resources={"gpus": 1, "gpuType": f"None-{namespace[-5:]}"},
            runPolicy={"activeDeadlineSeconds": 60},  # the API minimum
        ),
        namespace=namespace,
    )
    judge.at("stuck", "pending", timeout=60)
    judge.at("done", "succeeded")
    judge.at("bad", "failed")

    # ok runs maxSteps/10 seconds: run 2 trains long enough to be seen Running.
    patch(cluster, namespace, "done", {"hyperparameters": {"maxSteps": 600}})
    judge.at("done", "changed-finished")
    assert Ftj(cluster, namespace, "done").status()["run"] == 2

    judge.at("stuck", "deadline", timeout=120)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)
