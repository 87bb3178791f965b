"""A run waiting in a Kueue queue: what its Workload says, as FineTuneJob status.

Kueue admits a Job by unsuspending it and preempts it by suspending it again; the Job itself only
says "suspended". Kueue's Workload for the Job (labelled with the Job's uid) says why: not
admitted yet (and the quota it waits for), admitted, or evicted to make room for a workload of
higher priority. This module reads that, as pure functions over the two objects; the controller
fetches the Workload and status derivation calls `refine` on the run's state.

Vocabulary (docs/queueing.md):
  * phase `Queued` (reason Queued): created, never admitted yet, waiting for quota;
  * phase `Queued` (reason Admitted): Kueue admitted it, the Job is about to start;
  * phase `Suspended` (reason Preempted): Kueue evicted it; it waits to be admitted again and
    then resumes from its last checkpoint. A preemption is not a failed attempt;
  * `status.queue`: the LocalQueue, the Workload, the ClusterQueue that admitted it, the quota
    it waits for and how often it was preempted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import Phase, Reason

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue labels each Workload with the uid of the Job it stands for.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
MAX_MESSAGE = 1024

# Eviction reasons that Kueue uses when it makes room for other workloads (preemption, including
# reclaiming borrowed quota in a cohort).
PREEMPTION_REASONS = {"Preempted", "InCohortReclamation", "InClusterQueue", "InCohortFairSharing"}


@dataclass(frozen=True)
class State:
    phase: str
    reason: str
    message: str


def queue_name(job: dict[str, Any] | None) -> str | None:
    """The LocalQueue of a Job: Kueue's label, set by the operator (spec.queueName) or by Kueue's
    webhook (the namespace's default LocalQueue)."""
    if job is None:
        return None
    return ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL) or None


def workload_selector(job: dict[str, Any]) -> str:
    return f"{JOB_UID_LABEL}={job['metadata']['uid']}"


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _true(obj: dict[str, Any] | None, type_: str) -> bool:
    return (_condition(obj, type_) or {}).get("status") == "True"


def preemptions(workload: dict[str, Any] | None) -> int:
    """How often Kueue evicted this workload to make room for others."""
    stats = ((workload or {}).get("status") or {}).get("schedulingStats") or {}
    counted = sum(
        int(e.get("count") or 0)
        for e in stats.get("evictions") or []
        if e.get("reason") in PREEMPTION_REASONS
    )
    evicted = _condition(workload, "Evicted") or {}
    if (
        not counted
        and evicted.get("status") == "True"
        and evicted.get("reason") in (PREEMPTION_REASONS)
    ):
        counted = 1
    return counted


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def waiting_for(workload: dict[str, Any] | None) -> str | None:
    """Kueue's own words about what the workload waits for (its QuotaReserved=False message,
    e.g. "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu
    in flavor default, 1 more needed")."""
    cond = _condition(workload, "QuotaReserved")
    if cond is None or cond.get("status") == "True":
        return None
    message = str(cond.get("message") or "").strip()
    return _clip(message) if message else None


def queue_status(job: dict[str, Any] | None, workload: dict[str, Any] | None) -> dict[str, Any]:
    """`status.queue` for a run whose Job is in a Kueue queue; {} when it is not."""
    name = queue_name(job)
    if name is None:
        return {}
    out: dict[str, Any] = {"name": name}
    if workload is None:
        return out
    wst = workload.get("status") or {}
    out["workload"] = workload["metadata"]["name"]
    admitted = _true(workload, "Admitted")
    cluster_queue = (wst.get("admission") or {}).get("clusterQueue")
    if cluster_queue:
        out["clusterQueue"] = cluster_queue
    out["admitted"] = admitted
    pending = None if admitted else waiting_for(workload)
    if pending:
        out["waitingFor"] = pending
    count = preemptions(workload)
    if count:
        out["preemptions"] = count
    return out


def refine(
    state_phase: str,
    state_reason: str,
    job: dict[str, Any] | None,
    workload: dict[str, Any] | None,
) -> State | None:
    """A better state for a run whose Job another controller suspended (status.run_state says
    Suspended/Preempted), when that controller is Kueue: Queued (never admitted, or admitted
    and about to start) or Preempted (evicted; readmission resumes it). None: nothing to add."""
    name = queue_name(job)
    if name is None or (state_phase, state_reason) != (
        Phase.SUSPENDED.value,
        Reason.PREEMPTED.value,
    ):
        return None
    wl = workload["metadata"]["name"] if workload else None
    pending = waiting_for(workload)
    where = f"LocalQueue {name}" + (f" (workload {wl})" if wl else "")
    if preemptions(workload) and not _true(workload, "Admitted"):
        evicted = _condition(workload, "Evicted") or {}
        why = str(evicted.get("message") or "").strip() if evicted.get("status") == "True" else ""
        return State(
            Phase.SUSPENDED.value,
            Reason.PREEMPTED.value,
            _clip(
                "preempted by Kueue"
                + (f" ({why})" if why else "")
                + f"; waiting in {where} to be admitted again, then it resumes from its last "
                "checkpoint (not counted as a failed attempt)"
                + (f"; waiting for: {pending}" if pending else "")
            ),
        )
    if workload is not None and _true(workload, "Admitted"):
        cq = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue")
        return State(
            Phase.QUEUED.value,
            Reason.ADMITTED.value,
            f"admitted by Kueue (ClusterQueue {cq}); the Job is starting",
        )
    if workload is None:
        return State(
            Phase.QUEUED.value,
            Reason.QUEUED.value,
            f"waiting in {where} for Kueue to admit the run",
        )
    return State(
        Phase.QUEUED.value,
        Reason.QUEUED.value,
        _clip(f"waiting in {where} for quota" + (f": {pending}" if pending else "")),
    )
