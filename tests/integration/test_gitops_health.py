"""GitOps health on real FineTuneJobs: statuses written through the status subresource of the
real API server (so the CRD's structural schema prunes and validates them) and read back, then
judged by the Argo CD Lua health check and by kstatus' generic rules (what Flux reads).

The statuses are the operator's own derivation (`kubetune_operator.status.conditions`) for each
phase; no operator runs here. tests/integration/test_chart_install.py additionally judges the
statuses a real operator writes while it trains the quickstart job.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from clusterlib import Cluster
from helmlib import chart_contract

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"


health = chart_contract("test_chart_argocd_health")


def quickstart(name: str) -> dict[str, Any]:
    obj = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    obj["metadata"] = {"name": name}
    return dict(obj)


def derived_status(phase: str, reason: str, generation: int, **extra: Any) -> dict[str, Any]:
    from kubetune_operator import status

    state = status.RunState(phase, reason, f"{reason} happened")
    return {
        "phase": phase,
        "message": state.message,
        "observedGeneration": generation,
        "run": 1,
        "jobName": "x-run-1",
        "conditions": status.conditions(None, state, generation, NOW),
        **extra,
    }


def put_status(cluster: Cluster, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Replace status through the status subresource; return the object as stored."""
    api = cluster.custom()
    obj = api.get_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs", name)
    obj["status"] = status
    api.replace_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", ns, "finetunejobs", name, obj
    )
    return dict(
        api.get_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs", name)
    )


CASES = [
    ("Pending", "Unschedulable", "Progressing", "InProgress"),
    ("Running", "Training", "Progressing", "InProgress"),
    ("Running", "Retrying", "Progressing", "InProgress"),
    ("Succeeded", "Completed", "Healthy", "Current"),
    ("Failed", "OOMKilled", "Degraded", "Failed"),
    ("Failed", "BackoffLimitExceeded", "Degraded", "Failed"),
    ("Suspended", "Suspended", "Suspended", "InProgress"),
    ("Suspended", "Preempted", "Suspended", "InProgress"),
]


def test_statuses_round_trip_through_the_api_server(cluster: Cluster, namespace: str) -> None:
    cluster.apply(quickstart("gitops"), namespace)
    stored = cluster.kubectl_json("get", "ftj", "gitops", namespace=namespace)
    gen = stored["metadata"]["generation"]
    # No status yet: Argo CD waits, Flux has nothing to wait for but a status-less object.
    assert health.argocd_health(stored)["status"] == "Progressing"

    progress = {"run": 1, "step": 10, "totalSteps": 30, "loss": 2.5, "stage": "train"}
    for phase, reason, argo, flux in CASES:
        extra: dict[str, Any] = {"progress": progress} if phase == "Running" else {}
        if phase == "Succeeded":
            extra["artifacts"] = {"mergedModelUri": "s3://kubetune/output/x/run-1/merged/"}
        want = derived_status(phase, reason, gen, **extra)
        obj = put_status(cluster, namespace, "gitops", copy.deepcopy(want))
        # The CRD keeps everything the health checks read.
        got = obj["status"]
        assert got["phase"] == phase and got["observedGeneration"] == gen
        assert got["conditions"] == want["conditions"], "the CRD pruned or changed conditions"
        if phase == "Running":
            assert got["progress"]["step"] == 10 and got["progress"]["totalSteps"] == 30
        verdict = health.argocd_health(obj)
        assert verdict["status"] == argo, (phase, reason, verdict)
        assert reason in verdict["message"]
        if phase == "Running":
            assert "(step 10/30)" in verdict["message"]
        assert health.kstatus(obj) == flux, (phase, reason)


def test_spec_change_not_yet_observed(cluster: Cluster, namespace: str) -> None:
    cluster.apply(quickstart("gitops"), namespace)
    gen = cluster.kubectl_json("get", "ftj", "gitops", namespace=namespace)["metadata"][
        "generation"
    ]
    put_status(cluster, namespace, "gitops", derived_status("Succeeded", "Completed", gen))
    cluster.kubectl(
        "patch", "ftj", "gitops", "--type=merge", "-p",
        '{"spec": {"hyperparameters": {"maxSteps": 40}}}',
        namespace=namespace,
    )  # fmt: skip
    obj = cluster.kubectl_json("get", "ftj", "gitops", namespace=namespace)
    new_gen = obj["metadata"]["generation"]
    assert new_gen == gen + 1
    assert health.argocd_health(obj) == {
        "status": "Progressing",
        "message": f"Waiting for the operator to observe generation {new_gen}",
    }
    assert health.kstatus(obj) == "InProgress"
    # Status writes do not bump the generation, so GitOps tools are never fooled by them.
    put_status(cluster, namespace, "gitops", derived_status("Running", "Training", new_gen))
    obj = cluster.kubectl_json("get", "ftj", "gitops", namespace=namespace)
    assert obj["metadata"]["generation"] == new_gen
    assert health.argocd_health(obj)["status"] == "Progressing"
