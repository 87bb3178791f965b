"""Builders for the status derivation tests: a FineTuneJob, its Job and Pods, as observed.

Shared by the unit tests of status.py, its derivation, the pod set and promotion.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fakekube import merge
from kubetune_api.v1alpha1 import FineTuneJobStatus
from kubetune_operator import render, status
from kubetune_operator.runs import Decision

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
T0 = "2026-11-23T11:00:00Z"
UID = "uid-1"
GPU = {"nvidia.com/gpu"}
GOOD = {
    "outcome": "Succeeded",
    "reason": "Completed",
    "message": "trained 30 steps",
    "retryable": False,
    "artifacts": {
        "adapterUri": "s3://b/o/ns/j/run-1/adapter/",
        "mergedModelUri": "s3://b/o/ns/j/run-1/merged/",
        "manifestUri": "s3://b/o/ns/j/run-1/manifest.json",
        "manifestSha256": "ab" * 32,
    },
    "metrics": {"eval_loss": 1.25, "train_loss": 1.5, "bad": "x"},
}


def ftj(st: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": UID, "generation": generation},
        "spec": spec,
        "status": st or {},
    }


def job(run: int = 1, *, cond: tuple[str, str] | None = None, suspend: bool = False,
        failed: int = 0, succeeded: int = 0, active: int = 0, **spec: Any) -> dict[str, Any]:  # fmt: skip
    js: dict[str, Any] = {"failed": failed, "succeeded": succeeded, "active": active}
    if cond:
        js["conditions"] = [
            {"type": cond[0], "status": "True", "reason": cond[1], "lastTransitionTime": T0}
        ]
        if cond[0] == "Complete":
            js["completionTime"] = T0
    return {
        "metadata": {
            "name": f"j-run-{run}",
            "uid": f"job-uid-{run}",
            "creationTimestamp": "2026-11-23T10:00:00Z",
            "labels": {render.LABEL_RUN: str(run)},
            "annotations": {render.ANN_SPEC_HASH: f"hash{run}", render.ANN_GENERATION: str(run)},
        },
        "spec": {"suspend": suspend, "backoffLimit": 2, **spec},
        "status": js,
    }


def pod(name: str = "j-run-1-abcde", phase: str = "Running", *, gpus: int = 0,
        terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None,
        scheduled: dict[str, Any] | None = None, started: str = T0) -> dict[str, Any]:  # fmt: skip
    state: dict[str, Any] = {}
    if terminated is not None:
        state["terminated"] = {
            "startedAt": started,
            "finishedAt": "2026-11-23T11:10:00Z",
            **terminated,
        }
    elif waiting is not None:
        state["waiting"] = waiting
    elif phase == "Running":
        state["running"] = {"startedAt": started}
    conditions = [scheduled] if scheduled else [{"type": "PodScheduled", "status": "True"}]
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"name": name, "creationTimestamp": T0},
        "spec": {"nodeName": None if scheduled else "node-0",
                 "containers": [{"name": "trainer", "resources": {"limits": limits}}]},
        "status": {"phase": phase, "conditions": conditions,
                   "containerStatuses": [{"name": "trainer", "state": state}]},
    }  # fmt: skip


def derive(f: dict[str, Any], d: Decision, j: dict[str, Any] | None, pods: list[dict[str, Any]],
           **kw: Any) -> status.Derived:  # fmt: skip
    out = status.derive(f, d, j, pods, now=kw.pop("now", NOW), gpu_resources=GPU, **kw)
    FineTuneJobStatus.model_validate(out.status)  # always a valid status for the CRD
    return out


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def apply(f: dict[str, Any], derived: status.Derived) -> dict[str, Any]:
    """The FineTuneJob after the status patch (merge patch semantics)."""
    patch = status.status_patch(f, derived)
    new = json.loads(json.dumps(f))
    if patch:
        new["status"] = merge(new.get("status") or {}, patch["status"])  # RFC 7386
    return new
