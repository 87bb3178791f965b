"""Kueue's Workload read as FineTuneJob status (queueing.py), and through status.derive."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubetune_operator import queueing, status
from kubetune_operator.render import ANN_SUSPEND
from kubetune_operator.runs import Decision

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
    "flavor default-flavor, 1 more needed"
)


def job(queue: str | None = "team-a", suspend: bool = True) -> dict[str, Any]:
    labels = {"kubetune.io/job": "ft", "kubetune.io/run": "1"}
    if queue:
        labels[queueing.QUEUE_LABEL] = queue
    return {
        "metadata": {
            "name": "ft-run-1",
            "uid": "job-uid",
            "labels": labels,
            "annotations": {ANN_SUSPEND: "false"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"suspend": suspend},
        "status": {},
    }


def cond(type_: str, status_: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status_, "reason": reason, "message": message}


def workload(*conds: dict[str, Any], evictions: int = 0, cq: str | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"conditions": list(conds)}
    if cq:
        st["admission"] = {"clusterQueue": cq}
    if evictions:
        st["schedulingStats"] = {
            "evictions": [{"reason": "Preempted", "underlyingCause": "", "count": evictions}]
        }
    return {
        "metadata": {"name": "job-ft-run-1-abcde", "ownerReferences": [{"uid": "job-uid"}]},
        "status": st,
    }


PENDING = workload(cond("QuotaReserved", "False", "Pending", NO_QUOTA))
ADMITTED = workload(
    cond("QuotaReserved", "True", "QuotaReserved"), cond("Admitted", "True", "Admitted"), cq="cq"
)
PREEMPTED = workload(
    cond("QuotaReserved", "False", "Pending", NO_QUOTA),
    cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x)"),
    evictions=1,
)


def test_not_queued_adds_nothing() -> None:
    assert queueing.queue_status(job(queue=None), None) == {}
    assert queueing.refine("Suspended", "Preempted", job(queue=None), None) is None


def test_waiting_for_quota_is_queued_with_kueues_words() -> None:
    st = queueing.refine("Suspended", "Preempted", job(), PENDING)
    assert st is not None
    assert (st.phase, st.reason) == ("Queued", "Queued")
    assert "LocalQueue team-a" in st.message and "job-ft-run-1-abcde" in st.message
    assert "1 more needed" in st.message
    q = queueing.queue_status(job(), PENDING)
    assert q == {
        "name": "team-a",
        "workload": "job-ft-run-1-abcde",
        "admitted": False,
        "waitingFor": NO_QUOTA,
    }


def test_no_workload_yet_is_queued() -> None:
    st = queueing.refine("Suspended", "Preempted", job(), None)
    assert st is not None and st.phase == "Queued"
    assert queueing.queue_status(job(), None) == {"name": "team-a"}


def test_admitted_but_still_suspended_is_about_to_start() -> None:
    st = queueing.refine("Suspended", "Preempted", job(), ADMITTED)
    assert st is not None and (st.phase, st.reason) == ("Queued", "Admitted")
    q = queueing.queue_status(job(suspend=False), ADMITTED)
    assert q["admitted"] is True and q["clusterQueue"] == "cq" and "waitingFor" not in q


def test_preempted_waits_for_readmission_and_is_not_a_failure() -> None:
    st = queueing.refine("Suspended", "Preempted", job(), PREEMPTED)
    assert st is not None and (st.phase, st.reason) == ("Suspended", "Preempted")
    assert "resumes from its last checkpoint" in st.message
    assert "Preempted to accommodate" in st.message
    assert queueing.queue_status(job(), PREEMPTED)["preemptions"] == 1


def test_running_or_user_suspended_states_are_left_alone() -> None:
    # Only "suspended by another controller" is refined: Kueue's suspend.
    assert queueing.refine("Running", "Training", job(suspend=False), ADMITTED) is None
    assert queueing.refine("Suspended", "Suspended", job(), PENDING) is None


def ftj() -> dict[str, Any]:
    return {
        "metadata": {"name": "ft", "namespace": "ns", "uid": "ftj-uid", "generation": 1},
        "spec": {"queueName": "team-a"},
        "status": {"run": 1, "jobName": "ft-run-1", "phase": "Queued", "observedGeneration": 1},
    }


def test_derive_shows_queued_then_preempted_with_events() -> None:
    decision = Decision(current_run=1)
    d = status.derive(ftj(), decision, job(), [], now=NOW, gpu_resources=set(), workload=PENDING)
    assert d.status["phase"] == "Queued"
    assert d.status["queue"]["waitingFor"] == NO_QUOTA
    conds = {c["type"]: c for c in d.status["conditions"]}
    # Queued is in progress, not stuck: kstatus/Flux keep waiting.
    assert conds["Reconciling"]["status"] == "True" and conds["Stalled"]["status"] == "False"

    before = ftj()
    before["status"].update(phase="Running")
    d = status.derive(before, decision, job(), [], now=NOW, gpu_resources=set(), workload=PREEMPTED)
    assert d.status["phase"] == "Suspended"
    assert {c["type"]: c for c in d.status["conditions"]}["Suspended"]["reason"] == "Preempted"
    assert d.status["queue"]["preemptions"] == 1
    assert [e.reason for e in d.events] == ["Preempted"]
    assert "attempts" not in d.status  # no pod failed: a preemption is not an attempt
