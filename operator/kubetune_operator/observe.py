"""Observations: the current run's Job and Pods as typed facts (pure).

The first stage of the status derivation. `observe` reads the raw objects once; the rule table
(runstate.py) and the rest of status.py read only these facts. A run of several pods (an
Indexed Job, group.py) is observed as a set: the facts say which pod, index and node failed
first and why, which pod holds the result (rank 0), which pod holds the group back, and how many
GPU-seconds all pods used together (podset.py holds the group's rules for picking pods).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api.v1alpha1 import ARTIFACT_KEYS, ConditionType, Promotion
from pydantic import ValidationError

from . import podset
from .podset import Group
from .reasons import Finding, clip, pod_failure
from .render import ANN_DRY_RUN, CONTAINER

# A running pod's GPU time is counted in whole steps of this many seconds, so that every
# reconcile between two steps derives the same status (and patches nothing).
GPU_ACCOUNTING_STEP = 300

Obj = dict[str, Any]


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def json_object(raw: str | None) -> dict[str, Any] | None:
    """One JSON object (an annotation's value, a termination message), or None if `raw` is
    empty or not one: what another writer left there is read, never trusted to parse."""
    if not raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The trainer's termination message (one JSON object), or None if it is not one."""
    obj = json_object(message)
    return obj if obj is not None and "outcome" in obj else None


# A success must name at least one of these.
MODEL_ARTIFACTS = {"adapterUri", "mergedModelUri", "manifestUri"}


def artifacts(result: dict[str, Any]) -> dict[str, str]:
    arts = result.get("artifacts") or {}
    if not isinstance(arts, dict):
        return {}
    return {k: str(arts[k]) for k in ARTIFACT_KEYS if isinstance(arts.get(k), str) and arts[k]}


def metrics(result: dict[str, Any] | None) -> dict[str, float] | None:
    """The finite numeric metrics of a trainer result, or None when there are none."""
    raw = (result or {}).get("metrics") or {}
    if not isinstance(raw, dict):
        return None
    out = {
        str(k): v
        for k, v in raw.items()
        if not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    }
    return out or None


def evaluation(result: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    """The trainer's test metrics {metric: {base, tuned}} (finite numbers only; the pod's word,
    shown as it said it), or None."""
    raw = (result or {}).get("evaluation")
    if not isinstance(raw, dict):
        return None
    out: dict[str, dict[str, float]] = {}
    for name, pair in list(raw.items())[:16]:
        if not isinstance(pair, dict):
            continue
        kept = {
            side: float(v)
            for side in ("base", "tuned")
            if not isinstance(v := pair.get(side), bool)
            and isinstance(v, int | float)
            and math.isfinite(v)
        }
        if kept:
            out[str(name)[:64]] = kept
    return out or None


def promotion(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The promotion gate's decision (status.promotion), or None when the result has none or
    one that does not parse."""
    raw = (result or {}).get("promotion")
    if not isinstance(raw, dict):
        return None
    try:
        parsed = Promotion.model_validate(raw)
    except ValidationError:
        return None
    return parsed.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Condition:
    """A pod or Job condition, as far as status reads it."""

    status: str | None = None
    reason: str | None = None
    message: str | None = None
    since: str | None = None  # lastTransitionTime

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Condition:
        return cls(
            raw.get("status"), raw.get("reason"), raw.get("message"), raw.get("lastTransitionTime")
        )


@dataclass(frozen=True)
class Terminated:
    """The trainer container's terminated state (the current one, else the last)."""

    exit_code: int | None = None
    reason: str | None = None  # the kubelet's: OOMKilled, Error, Completed
    signal: int | None = None
    message: str | None = None  # the termination message: the trainer's result, or a log tail
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        return parse_result(self.message)


@dataclass(frozen=True)
class PodFacts:
    """One pod of the run."""

    name: str
    created: str = ""  # creationTimestamp
    phase: str = "Pending"
    index: int | None = None  # completion index (rank) in a group
    node: str | None = None
    deleting: bool = False
    terminated: Terminated | None = None
    running_since: datetime | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    scheduled: Condition | None = None  # PodScheduled
    disruption: Condition | None = None  # DisruptionTarget
    stop_reason: str | None = None  # status.reason of the pod (Evicted, ...)
    stopped_why: str | None = None  # status.message, else status.reason
    finished_at: str = ""  # when any container ended, else `created`: orders failures
    limits: Mapping[str, int] = field(default_factory=dict)  # summed over containers

    @property
    def unschedulable_since(self) -> str | None:
        s = self.scheduled
        if s and s.status == "False" and s.reason == "Unschedulable":
            return str(s.since or self.created or None)
        return None

    def gpus(self, resources: set[str]) -> int:
        return sum(n for key, n in self.limits.items() if key in resources)

    def gpu_seconds(self, resources: set[str], now: datetime) -> float:
        gpus = self.gpus(resources)
        if not gpus:
            return 0.0
        term = self.terminated
        if term:
            if term.started_at and term.finished_at:
                return max(0.0, (term.finished_at - term.started_at).total_seconds()) * gpus
            return 0.0
        if self.running_since is None:
            return 0.0
        elapsed = max(0.0, (now - self.running_since).total_seconds())
        return (elapsed // GPU_ACCOUNTING_STEP) * GPU_ACCOUNTING_STEP * gpus


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _conditions(obj: Obj) -> list[Obj]:
    return list((obj.get("status") or {}).get("conditions") or [])


def _first(conds: list[Obj], type_: str, status: str | None = None) -> Condition | None:
    for cond in conds:
        if cond.get("type") == type_ and (status is None or cond.get("status") == status):
            return Condition.of(cond)
    return None


def _finished_at(raw: Obj) -> str:
    for cs in (raw.get("status") or {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            t = (cs.get(key) or {}).get("terminated")
            if t and t.get("finishedAt"):
                return str(t["finishedAt"])
    return str(raw["metadata"].get("creationTimestamp") or "")


def _limits(raw: Obj) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in (raw.get("spec") or {}).get("containers") or []:
        for key, value in ((c.get("resources") or {}).get("limits") or {}).items():
            try:
                out[key] = out.get(key, 0) + int(str(value))
            except ValueError:
                continue
    return out


def pod_facts(raw: Obj) -> PodFacts:
    meta = raw["metadata"]
    status = raw.get("status") or {}
    statuses = status.get("containerStatuses") or []
    cs = next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else {})
    state = cs.get("state") or {}
    t = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    term = None
    if t:
        term = Terminated(
            exit_code=_int(t.get("exitCode")),
            reason=t.get("reason"),
            signal=_int(t.get("signal")),
            message=t.get("message"),
            started_at=parse_time(t.get("startedAt")),
            finished_at=parse_time(t.get("finishedAt")),
        )
    running = state.get("running")
    waiting = state.get("waiting") or {}
    conds = _conditions(raw)
    return PodFacts(
        name=meta["name"],
        created=str(meta.get("creationTimestamp") or ""),
        phase=str(status.get("phase") or "Pending"),
        index=podset.index(raw),
        node=(raw.get("spec") or {}).get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        terminated=term,
        running_since=parse_time(running.get("startedAt")) if running else None,
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        scheduled=_first(conds, "PodScheduled"),
        disruption=_first(conds, "DisruptionTarget"),
        stop_reason=status.get("reason"),
        stopped_why=status.get("message") or status.get("reason"),
        finished_at=_finished_at(raw),
        limits=_limits(raw),
    )


@dataclass(frozen=True)
class JobFacts:
    """The run's Job."""

    name: str
    group: Group = field(default_factory=Group)
    finished: str | None = None  # Complete | Failed, once the Job controller says so
    condition: Condition | None = None  # that Complete/Failed condition
    completion_time: str | None = None
    active: int = 0
    failed: int = 0
    succeeded: int = 0
    suspended: bool = False
    backoff_limit: int | None = None  # as set on the Job (scaled by the group size)
    active_deadline_seconds: Any = None
    dry_run: bool = False  # spec.dryRun: the run estimates, its result is status.estimate

    @property
    def backoff_limit_per_attempt(self) -> int | None:
        """runPolicy.backoffLimit: the Job's, in group attempts (group.job_fields scaled it)."""
        limit = self.backoff_limit
        if self.group.size > 1 and limit is not None:
            return limit // self.group.size
        return limit


def job_facts(raw: Obj) -> JobFacts:
    spec = raw.get("spec") or {}
    js = raw.get("status") or {}
    finished: str | None = None
    condition = None
    for cond in _conditions(raw):
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            finished, condition = str(cond["type"]), Condition.of(cond)
            break
    return JobFacts(
        name=raw["metadata"]["name"],
        group=Group.of(raw),
        finished=finished,
        condition=condition,
        completion_time=js.get("completionTime"),
        active=int(js.get("active") or 0),
        failed=int(js.get("failed") or 0),
        succeeded=int(js.get("succeeded") or 0),
        suspended=bool(spec.get("suspend")),
        backoff_limit=_int(spec.get("backoffLimit")),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        dry_run=(raw["metadata"].get("annotations") or {}).get(ANN_DRY_RUN) == "true",
    )


@dataclass(frozen=True)
class Observation:
    """The current run: its Job and its pods (oldest first), read as one group."""

    job: JobFacts
    pods: tuple[PodFacts, ...] = ()
    now: datetime | None = None

    @property
    def group(self) -> Group:
        return self.job.group

    def _phase(self, *phases: str) -> list[PodFacts]:
        return [p for p in self.pods if p.phase in phases]

    @property
    def live(self) -> list[PodFacts]:
        """Pending or Running pods; those being deleted only when there is nothing else."""
        live = self._phase("Pending", "Running")
        return [p for p in live if not p.deleting] or live

    @property
    def running(self) -> list[PodFacts]:
        return [p for p in self.live if p.phase == "Running"]

    @property
    def succeeded(self) -> list[PodFacts]:
        return self._phase("Succeeded")

    @property
    def failed(self) -> list[PodFacts]:
        return self._phase("Failed")

    @property
    def attempts_failed(self) -> int:
        """Failed attempts so far, from the Job's count or the failed pods still there."""
        return self.group.attempts_failed(max(self.job.failed, len(self.failed)))

    @property
    def result_pod(self) -> PodFacts | None:
        """The pod with the run's result: rank 0 of a group."""
        return podset.result_pod(self.succeeded, self.group)

    @property
    def cause(self) -> PodFacts | None:
        """The failed pod that explains the latest failed attempt (where it began)."""
        return podset.first_failure(self.failed, self.group)

    @property
    def failure(self) -> Finding | None:
        """Why `cause` failed, naming its index and node in a group."""
        cause = self.cause
        return self.named(cause, pod_failure(cause)) if cause is not None else None

    @property
    def overdue(self) -> PodFacts | None:
        """A pod of the group unschedulable past the group's scheduling deadline."""
        if self.now is None:
            return None
        return podset.scheduling_overdue(self.live, self.group, self.now)

    @property
    def blocked(self) -> PodFacts | None:
        """The pod that holds a waiting run back."""
        live = self.live
        if not live:
            return None
        return podset.most_blocked(live) if self.group.size > 1 else live[-1]

    def named(self, pod: PodFacts, found: Finding) -> Finding:
        """`found` about `pod`, naming its index and node when the run has several pods."""
        message = found.message
        if self.group.size > 1:
            message = message.replace(f"pod {pod.name}", podset.where(pod), 1)
        return Finding(found.reason, clip(message))

    def gpu_seconds(self, resources: set[str], now: datetime) -> float:
        """GPU-seconds of every pod of the run."""
        return sum(p.gpu_seconds(resources, now) for p in self.pods)


def observe(job: Obj, pods: list[Obj], now: datetime | None = None) -> Observation:
    facts = sorted((pod_facts(p) for p in pods), key=lambda p: (p.created, p.name))
    return Observation(job_facts(job), tuple(facts), now)


def ready_reason(status: dict[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ConditionType.READY.value:
            return cond.get("reason")
    return None


@dataclass(frozen=True)
class Recorded:
    """What the previous status recorded about the run."""

    phase: str | None = None
    reason: str | None = None
    message: str = ""
    artifacts: dict[str, str] | None = None
    metrics: dict[str, float] | None = None
    completion_time: str | None = None
    job_name: str | None = None
    estimate: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None

    @classmethod
    def of(cls, status: dict[str, Any]) -> Recorded:
        return cls(
            status.get("phase"),
            ready_reason(status),
            status.get("message") or "",
            status.get("artifacts"),
            status.get("metrics"),
            status.get("completionTime"),
            status.get("jobName"),
            status.get("estimate"),
            status.get("evaluation"),
            status.get("promotion"),
        )
