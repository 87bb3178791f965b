"""The pods of one run as a set (pure): a run of several pods (an Indexed Job, group.py) has one
pod per node and completion index, and its status must speak for all of them.

* the result (artifacts, metrics) and progress come from rank 0: the pod of index 0;
* a failure names the pod and node where it began: when one pod dies, its peers fail after it
  (their collectives break), so the earliest failure of the latest attempt is the cause;
* attempts count group restarts: every pod of the group fails once per restart;
* a waiting group shows its most blocked pod (Unschedulable before ContainerCreating), and a
  group not fully scheduled within its deadline fails instead of holding the GPUs of the pods
  that were.

observe.py asks these questions over the pods' typed facts (observe.PodFacts); for a run of
one pod every answer is what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .group import ANN_SCHEDULING_DEADLINE

if TYPE_CHECKING:
    from .observe import PodFacts

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

Pod = dict[str, Any]


@dataclass(frozen=True)
class Group:
    """The shape of the run: how many pods make one attempt, and the scheduling deadline."""

    size: int = 1
    scheduling_deadline: int | None = None

    @classmethod
    def of(cls, job: dict[str, Any] | None) -> Group:
        if job is None:
            return cls()
        spec = job.get("spec") or {}
        size = int(spec.get("completions") or 1) if spec.get("completionMode") == "Indexed" else 1
        raw = ((job.get("metadata") or {}).get("annotations") or {}).get(ANN_SCHEDULING_DEADLINE)
        deadline = int(raw) if raw and str(raw).isdigit() else None
        return cls(size=max(1, size), scheduling_deadline=deadline)

    def attempts_failed(self, failed_pods: int) -> int:
        """Failed attempts: each group restart fails every pod of the group (rounded up, so a
        single failed pod already counts as one)."""
        return -(-failed_pods // self.size)


def index(pod: Pod) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(INDEX_ANNOTATION)
    if raw is None:
        raw = (meta.get("labels") or {}).get(INDEX_ANNOTATION)
    return int(raw) if raw is not None and str(raw).isdigit() else None


def result_pod(succeeded: Sequence[PodFacts], group: Group) -> PodFacts | None:
    """The pod whose termination message holds the run's result: rank 0 (index 0) of a group,
    else the newest succeeded pod (`succeeded` is oldest first)."""
    if not succeeded:
        return None
    if group.size > 1:
        zeros = [p for p in succeeded if p.index == 0]
        if zeros:
            return zeros[-1]
    return succeeded[-1]


def first_failure(failed: Sequence[PodFacts], group: Group) -> PodFacts | None:
    """The failed pod that speaks for the latest failed attempt: alone, the newest; in a
    group, the earliest to fail among the group's latest `size` failures (its peers failed
    because it did)."""
    if not failed:
        return None
    ordered = sorted(failed, key=lambda p: (p.finished_at, p.name))
    if group.size <= 1:
        return ordered[-1]
    return ordered[-group.size :][0]


def most_blocked(live: Sequence[PodFacts]) -> PodFacts:
    """The pod that holds the group back: one the scheduler cannot place, else not yet
    scheduled, else the newest (`live` is oldest first and not empty)."""
    for pod in live:
        if pod.unschedulable_since:
            return pod
    for pod in live:
        if not pod.node:
            return pod
    return live[-1]


def scheduling_overdue(live: Sequence[PodFacts], group: Group, now: datetime) -> PodFacts | None:
    """A pod of the group still unschedulable when the group's deadline has passed (counted
    from the pod's creation), or None."""
    if group.size <= 1 or group.scheduling_deadline is None:
        return None
    for pod in live:
        if not pod.unschedulable_since or not pod.created:
            continue
        start = datetime.fromisoformat(pod.created.replace("Z", "+00:00"))
        if (now - start).total_seconds() >= group.scheduling_deadline:
            return pod
    return None


def where(pod: PodFacts) -> str:
    """`pod NAME (index I on node N)` for messages."""
    bits = []
    if pod.index is not None:
        bits.append(f"index {pod.index}")
    if pod.node:
        bits.append(f"on node {pod.node}")
    return f"pod {pod.name} ({' '.join(bits)})" if bits else f"pod {pod.name}"
