"""The closed vocabulary of reasons (`Reason`) and how everything else maps onto it (pure).

Reasons reach the status from four sources: the kubelet (a container waiting or terminated,
a pod stopped), the scheduler (PodScheduled), the Job controller (the Failed condition) and
the trainer (its exit code and termination message). `KUBE_REASONS` is the one table that
maps the Kubernetes side onto `Reason`; `EXIT_REASONS` and `TRAINER_REASONS` come from the
API's failure table. Nothing outside the enum leaves this module: a kubelet reason the table
does not know becomes `ContainerWaiting`, with the kubelet's own word kept in the message.

`pod_failure` and `waiting` say why one pod failed or does not run yet, as a `Finding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from kubetune_api.v1alpha1 import (
    ArtifactsMissing,
    ConfigError,
    DatasetError,
    GpuOutOfMemory,
    ModelError,
    NonFiniteLoss,
    Reason,
    StorageAccessDenied,
    StorageConflict,
    StorageUnavailable,
)

if TYPE_CHECKING:
    from .observe import PodFacts

MESSAGE_LIMIT = 2048


class Source(StrEnum):
    """Where a Kubernetes reason string comes from."""

    WAITING = "container waiting"  # containerStatuses[].state.waiting.reason (kubelet)
    TERMINATED = "container terminated"  # containerStatuses[].state.terminated.reason
    POD = "pod"  # status.reason of a pod stopped before its container ended
    SCHEDULING = "scheduling"  # the PodScheduled condition's reason
    JOB = "job"  # the Job's Failed condition's reason (Job controller)


# The one table: Kubernetes' reason strings onto kubetune's `Reason`.
KUBE_REASONS: dict[tuple[Source, str], Reason] = {
    (Source.WAITING, "ContainerCreating"): Reason.CONTAINER_CREATING,
    (Source.WAITING, "PodInitializing"): Reason.CONTAINER_CREATING,
    (Source.WAITING, "ImagePullBackOff"): Reason.IMAGE_PULL_BACK_OFF,
    (Source.WAITING, "ErrImagePull"): Reason.IMAGE_PULL_BACK_OFF,
    (Source.WAITING, "InvalidImageName"): Reason.IMAGE_PULL_BACK_OFF,
    (Source.WAITING, "ErrImageNeverPull"): Reason.IMAGE_PULL_BACK_OFF,
    (Source.WAITING, "CreateContainerConfigError"): Reason.CREATE_CONTAINER_CONFIG_ERROR,
    (Source.WAITING, "CreateContainerError"): Reason.CREATE_CONTAINER_ERROR,
    (Source.WAITING, "RunContainerError"): Reason.RUN_CONTAINER_ERROR,
    (Source.TERMINATED, "OOMKilled"): Reason.OOM_KILLED,
    (Source.POD, "Evicted"): Reason.POD_KILLED,
    (Source.POD, "Preempting"): Reason.POD_KILLED,
    (Source.POD, "NodeLost"): Reason.POD_KILLED,
    (Source.POD, "Shutdown"): Reason.POD_KILLED,
    (Source.POD, "Terminated"): Reason.POD_KILLED,
    (Source.POD, "DeadlineExceeded"): Reason.POD_KILLED,
    (Source.SCHEDULING, "Unschedulable"): Reason.UNSCHEDULABLE,
    (Source.JOB, "DeadlineExceeded"): Reason.DEADLINE_EXCEEDED,
    (Source.JOB, "BackoffLimitExceeded"): Reason.BACKOFF_LIMIT_EXCEEDED,
}
# What a reason the table does not know means, by source.
FALLBACK: dict[Source, Reason] = {
    Source.WAITING: Reason.CONTAINER_WAITING,
    Source.TERMINATED: Reason.TRAINER_ERROR,
    Source.POD: Reason.POD_KILLED,
    Source.SCHEDULING: Reason.WAITING_FOR_POD,
    Source.JOB: Reason.TRAINER_ERROR,
}


def kube_reason(source: Source, raw: str | None) -> Reason:
    """`raw` (a reason from `source`) in kubetune's vocabulary."""
    return KUBE_REASONS.get((source, raw or ""), FALLBACK[source])


# Exit codes and result keys of the trainer (docs/design.md), from the API's failure table so
# the two sides cannot drift apart.
EXIT_REASONS: dict[int, Reason] = {
    failure.exit_code: Reason(failure.reason)
    for failure in (
        ConfigError,
        DatasetError,
        ModelError,
        NonFiniteLoss,
        ArtifactsMissing,
        GpuOutOfMemory,
        StorageAccessDenied,
        StorageConflict,
        StorageUnavailable,
    )
}
TRAINER_REASONS: frozenset[Reason] = frozenset({*EXIT_REASONS.values(), Reason.TRAINER_ERROR})

# Reasons whose phase Event is a Warning even when the phase is not Failed.
WARNING_REASONS: frozenset[str] = frozenset(
    {
        Reason.UNSCHEDULABLE,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.INVALID_SPEC,
        Reason.SERVICE_ACCOUNT_NOT_ALLOWED,
        Reason.RETRYING,
        Reason.PREEMPTED,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
        Reason.CREATE_CONTAINER_ERROR,
        Reason.RUN_CONTAINER_ERROR,
    }
)


@dataclass(frozen=True)
class Finding:
    """A reason and the message that explains it."""

    reason: Reason
    message: str


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 14] + " …[truncated]"


def pod_failure(pod: PodFacts) -> Finding:
    """Why a pod failed, from the kubelet's view and the trainer's result."""
    name = pod.name
    term = pod.terminated
    if term is None:
        detail = pod.stopped_why or "terminated"
        return Finding(
            kube_reason(Source.POD, pod.stop_reason),
            clip(f"pod {name} stopped before the trainer ended: {detail}"),
        )
    code = term.exit_code
    if kube_reason(Source.TERMINATED, term.reason) == Reason.OOM_KILLED:
        return Finding(
            Reason.OOM_KILLED,
            f"pod {name}: the trainer exceeded its memory limit and was killed (OOMKilled, "
            f"exit code {code}); raise spec.resources.memory or lower the batch size",
        )
    result = term.result
    if result and result.get("reason") in TRAINER_REASONS and result.get("outcome") != "Succeeded":
        text = str(result.get("message") or "")
        return Finding(Reason(result["reason"]), clip(f"{text} (pod {name}, exit code {code})"))
    if code is not None and code in EXIT_REASONS:
        return Finding(EXIT_REASONS[code], clip(f"pod {name}: trainer exited with code {code}"))
    if term.signal or code in (137, 143) or pod.disruption is not None:
        why = pod.disruption.message if pod.disruption else None
        signal = term.signal or (code - 128 if code is not None else None)
        detail = why or f"killed by signal {signal}"
        return Finding(Reason.POD_KILLED, clip(f"pod {name}: {detail} (exit code {code})"))
    tail = term.message or term.reason or ""
    tail = f": {tail.strip().splitlines()[-1]}" if tail.strip() else ""
    return Finding(Reason.TRAINER_ERROR, clip(f"pod {name}: trainer exited with code {code}{tail}"))


def waiting(pod: PodFacts) -> Finding:
    """A pod that has not started: the most specific reason we can give."""
    name = pod.name
    scheduled = pod.scheduled
    if scheduled and scheduled.status == "False":
        msg = scheduled.message or scheduled.reason or "not scheduled yet"
        if kube_reason(Source.SCHEDULING, scheduled.reason) == Reason.UNSCHEDULABLE:
            return Finding(Reason.UNSCHEDULABLE, clip(f"pod {name} cannot be scheduled: {msg}"))
        return Finding(
            Reason.WAITING_FOR_POD, clip(f"pod {name} is waiting to be scheduled: {msg}")
        )
    if scheduled is None and not pod.node:
        return Finding(Reason.WAITING_FOR_POD, f"pod {name} is waiting to be scheduled")
    why, detail = pod.waiting_reason, pod.waiting_message
    reason = kube_reason(Source.WAITING, why)
    if why and reason == Reason.IMAGE_PULL_BACK_OFF:
        return Finding(
            reason,
            clip(
                f"pod {name}: cannot pull the trainer image ({why})"
                + (f": {detail}" if detail else "")
            ),
        )
    if why and reason != Reason.CONTAINER_CREATING:
        return Finding(reason, clip(f"pod {name}: {why}" + (f": {detail}" if detail else "")))
    return Finding(Reason.CONTAINER_CREATING, f"pod {name} is starting on node {pod.node}")
