"""Status over the pods of a run of several pods (podset.py through status.run_state)."""

from __future__ import annotations

import json
from typing import Any

from kubetune_operator import podset, status
from statusbuilders import GOOD, NOW, job, pod

GROUP_JOB = {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 4}


def gjob(**kw: Any) -> dict[str, Any]:
    j = job(**kw, **GROUP_JOB)
    j["metadata"]["annotations"][podset.ANN_SCHEDULING_DEADLINE] = "600"
    return j


def member(
    index: int, phase: str = "Running", node: str | None = None, **kw: Any
) -> dict[str, Any]:
    p = pod(f"j-run-1-{index}-x{index}", phase, **kw)
    p["metadata"]["annotations"] = {podset.INDEX_ANNOTATION: str(index)}
    if p["spec"]["nodeName"] is not None:
        p["spec"]["nodeName"] = node or f"node-{index}"
    return p


def state(j: dict[str, Any], pods: list[dict[str, Any]]) -> status.RunState:
    return status.run_state(j, pods, {}, True, False, NOW)


def test_group_shape_from_the_job() -> None:
    g = podset.Group.of(gjob())
    assert g == podset.Group(size=2, scheduling_deadline=600)
    assert podset.Group.of(job()) == podset.Group()
    assert [g.attempts_failed(n) for n in (0, 1, 2, 3, 4)] == [0, 1, 1, 2, 2]


def test_result_comes_from_rank_0_whatever_finished_last() -> None:
    """Rank 1 exits 0 with no result; rank 0's pod carries it, even when it ends first."""
    rank0 = member(0, "Succeeded", terminated={"exitCode": 0, "message": json.dumps(GOOD)})
    rank1 = member(1, "Succeeded", terminated={"exitCode": 0})
    rank1["metadata"]["creationTimestamp"] = "2026-11-23T11:00:01Z"  # newer
    st = state(gjob(cond=("Complete", "")), [rank0, rank1])
    assert st.phase == "Succeeded" and st.artifacts and st.artifacts["manifestUri"]


def test_failure_names_the_pod_and_node_where_it_began() -> None:
    """Rank 1 was OOMKilled; rank 0 then failed on the broken collective. The status names
    rank 1 and its node, and backoffLimit counts group attempts."""
    cause = member(1, "Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    cause["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = (
        "2026-11-23T11:05:00Z"
    )
    peer = member(0, "Failed", terminated={"exitCode": 1, "message": "gloo: connection reset"})
    st = state(gjob(cond=("Failed", "BackoffLimitExceeded"), failed=6), [peer, cause])
    assert st.reason == "OOMKilled"
    assert "index 1 on node node-1" in st.message
    assert "3 failed attempt(s), backoffLimit 2 reached" in st.message


def test_group_trains_only_when_all_pods_run_and_restarts_count_once() -> None:
    st = state(gjob(active=2), [member(0), member(1)])
    assert st.reason == "Training" and "2 pods are training on nodes node-0, node-1" in st.message
    # one pod up, one still being created: the group is not training yet
    waiting = member(1, "Pending", waiting={"reason": "ContainerCreating"})
    assert state(gjob(active=2), [member(0), waiting]).phase == "Pending"
    # after a group restart (2 failed pods = 1 attempt) both run again: attempt 2
    failed = [member(i, "Failed", terminated={"exitCode": 1}) for i in (0, 1)]
    st = state(gjob(active=2, failed=2), [*failed, member(0), member(1)])
    assert st.reason == "Retrying" and "attempt 2" in st.message


def test_rank_1_done_while_rank_0_uploads_is_still_training() -> None:
    st = state(gjob(active=1), [member(0), member(1, "Succeeded", terminated={"exitCode": 0})])
    assert st.phase == "Running" and st.reason == "Training"


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/2 nodes are available: 1 Insufficient nvidia.com/gpu.",
    "lastTransitionTime": "2026-11-23T11:00:00Z",
}


def test_partly_scheduled_group_waits_then_fails_at_its_deadline() -> None:
    stuck = member(1, "Pending", scheduled=UNSCHEDULABLE)
    early = status.run_state(gjob(active=2), [member(0), stuck], {}, True, False, None)
    assert early.phase == "Pending" and early.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in early.message and "index 1" in early.message
    # created at 11:00, NOW is 12:00: past the 600 s deadline
    late = state(gjob(active=2), [member(0), stuck])
    assert late.phase == "Failed" and late.reason == "Unschedulable"
    assert "schedulingTimeoutSeconds (600s)" in late.message and "GPUs released" in late.message


def test_one_pod_runs_are_unchanged() -> None:
    """No deadline and no group rules for a plain Job, even with an unschedulable pod."""
    stuck = pod(phase="Pending", scheduled=UNSCHEDULABLE)
    st = status.run_state(job(active=1), [stuck], {}, True, False, NOW)
    assert st.phase == "Pending" and st.reason == "Unschedulable"
