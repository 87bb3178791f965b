"""Pure status derivation: observed Job + Pods + previous status -> new status and Events.

The status is re-derived from the cluster every time (an operator restart loses nothing), and
the result is compared with the previous status so the caller patches only real changes and
posts one Event per transition. Nothing here reads a clock except through `now`, and nothing
depends on when it runs: two derivations from the same observations are equal.

`status.progress` belongs to the trainer: it is never computed here. The only thing the operator
does to it is clear it when a new run starts (`Derived.clear_progress`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_api.v1alpha1 import (
    ARTIFACT_KEYS,
    ArtifactsMissing,
    ConditionType,
    ConfigError,
    DatasetError,
    GpuOutOfMemory,
    ModelError,
    NonFiniteLoss,
    Phase,
    Progress,
    Reason,
    StorageAccessDenied,
    StorageConflict,
    StorageUnavailable,
)
from pydantic import ValidationError

from . import podset, queueing
from .render import ANN_DRY_RUN, ANN_GENERATION, ANN_LINEAGE, ANN_SPEC_HASH, CONTAINER
from .runs import TERMINAL, Decision, job_finished

HISTORY_LIMIT = 20
MESSAGE_LIMIT = 2048
# A running pod's GPU time is counted in whole steps of this many seconds, so that every
# reconcile between two steps derives the same status (and patches nothing).
GPU_ACCOUNTING_STEP = 300

# Exit codes and result keys of the trainer (docs/design.md), from the trainer's own torch-free
# definitions so the two sides cannot drift apart.
EXIT_REASONS = {
    failure.exit_code: failure.reason
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
TRAINER_REASONS = {*EXIT_REASONS.values(), Reason.TRAINER_ERROR.value}
_WARNING_REASONS = {
    Reason.UNSCHEDULABLE.value,
    Reason.IMAGE_PULL_BACK_OFF.value,
    Reason.INVALID_SPEC.value,
    Reason.SERVICE_ACCOUNT_NOT_ALLOWED.value,
    Reason.RETRYING.value,
    Reason.PREEMPTED.value,
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class RunState:
    """What the current run is doing, from its Job and Pods."""

    phase: str
    reason: str
    message: str
    artifacts: dict[str, str] | None = None
    metrics: dict[str, float] | None = None
    completion_time: str | None = None
    estimate: dict[str, Any] | None = None


@dataclass
class Derived:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    clear_progress: bool = False


# ------------------------------------------------------------------------------- helpers


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 14] + " …[truncated]"


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The trainer's termination message (one JSON object), or None if it is not one."""
    if not message:
        return None
    try:
        obj = json.loads(message)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "outcome" in obj else None


def _artifacts(result: dict[str, Any]) -> dict[str, str]:
    arts = result.get("artifacts") or {}
    if not isinstance(arts, dict):
        return {}
    return {k: str(arts[k]) for k in ARTIFACT_KEYS if isinstance(arts.get(k), str) and arts[k]}


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    raw = result.get("metrics") or {}
    if not isinstance(raw, dict):
        return out
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[str(k)] = v
    return out


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    cs = _container_status(pod)
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
        "terminated"
    )


def _pod_condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def _by_age(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )


def _pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def pod_failure(pod: dict[str, Any]) -> tuple[str, str]:
    """Why a pod failed: (reason, message), from the kubelet's view and the trainer's result."""
    name = pod["metadata"]["name"]
    pstatus = pod.get("status") or {}
    term = _terminated(pod)
    disruption = _pod_condition(pod, "DisruptionTarget")
    if term is None:
        detail = pstatus.get("message") or pstatus.get("reason") or "terminated"
        return Reason.POD_KILLED.value, _clip(
            f"pod {name} stopped before the trainer ended: {detail}"
        )
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        return Reason.OOM_KILLED.value, (
            f"pod {name}: the trainer exceeded its memory limit and was killed (OOMKilled, "
            f"exit code {code}); raise spec.resources.memory or lower the batch size"
        )
    result = parse_result(term.get("message"))
    if result and result.get("reason") in TRAINER_REASONS and result.get("outcome") != "Succeeded":
        text = str(result.get("message") or "")
        return str(result["reason"]), _clip(f"{text} (pod {name}, exit code {code})")
    if isinstance(code, int) and code in EXIT_REASONS:
        return EXIT_REASONS[code], _clip(f"pod {name}: trainer exited with code {code}")
    signal = term.get("signal")
    if signal or (isinstance(code, int) and code in (137, 143)) or disruption:
        why = disruption.get("message") if disruption else None
        detail = why or f"killed by signal {signal or code - 128}"  # type: ignore[operator]
        return Reason.POD_KILLED.value, _clip(f"pod {name}: {detail} (exit code {code})")
    tail = term.get("message") or term.get("reason") or ""
    tail = f": {tail.strip().splitlines()[-1]}" if tail.strip() else ""
    return Reason.TRAINER_ERROR.value, _clip(f"pod {name}: trainer exited with code {code}{tail}")


def _waiting(pod: dict[str, Any]) -> tuple[str, str]:
    """A pod that has not started: the most specific reason we can give."""
    name = pod["metadata"]["name"]
    scheduled = _pod_condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        msg = scheduled.get("message") or scheduled.get("reason") or "not scheduled yet"
        if scheduled.get("reason") == "Unschedulable":
            return Reason.UNSCHEDULABLE.value, _clip(f"pod {name} cannot be scheduled: {msg}")
        return Reason.WAITING_FOR_POD.value, _clip(f"pod {name} is waiting to be scheduled: {msg}")
    if scheduled is None and not (pod.get("spec") or {}).get("nodeName"):
        return Reason.WAITING_FOR_POD.value, f"pod {name} is waiting to be scheduled"
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    why = waiting.get("reason")
    detail = waiting.get("message")
    if why in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"):
        return Reason.IMAGE_PULL_BACK_OFF.value, _clip(
            f"pod {name}: cannot pull the trainer image ({why})" + (f": {detail}" if detail else "")
        )
    if why and why not in ("ContainerCreating", "PodInitializing"):
        return str(why), _clip(f"pod {name}: {why}" + (f": {detail}" if detail else ""))
    node = (pod.get("spec") or {}).get("nodeName")
    return Reason.CONTAINER_CREATING.value, f"pod {name} is starting on node {node}"


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _last_failed(
    pods: list[dict[str, Any]], grp: podset.Group | None = None
) -> dict[str, Any] | None:
    """The failed pod that explains the latest failed attempt (podset.first_failure)."""
    return podset.first_failure(
        [p for p in pods if _pod_phase(p) == "Failed"], grp or podset.Group()
    )


def _named(pod: dict[str, Any], grp: podset.Group, found: tuple[str, str]) -> tuple[str, str]:
    """(reason, message) about `pod`, naming its index and node when the run has several."""
    reason, message = found
    if grp.size > 1:
        message = message.replace(f"pod {pod['metadata']['name']}", podset.where(pod), 1)
    return reason, _clip(message)


def _failure(pod: dict[str, Any], grp: podset.Group) -> tuple[str, str]:
    return _named(pod, grp, pod_failure(pod))


# ------------------------------------------------------------------------------- run state


def run_state(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    previous: dict[str, Any],
    same_run: bool,
    suspend_intent: bool,
    now: datetime | None = None,
) -> RunState:
    """The phase of the current run. `previous` is the old status, `same_run` whether it was
    about this run (so a terminal outcome recorded there still counts after TTL). A run of
    several pods is read as a group (podset.py)."""
    grp = podset.Group.of(job)
    prev_phase = previous.get("phase")
    prev_reason = _ready_reason(previous)
    if job is None:
        if same_run and prev_phase in TERMINAL:
            return RunState(
                prev_phase,
                prev_reason or prev_phase,
                previous.get("message") or "",
                previous.get("artifacts"),
                previous.get("metrics"),
                previous.get("completionTime"),
                previous.get("estimate"),
            )
        name = previous.get("jobName") or "the Job"
        return RunState(
            Phase.FAILED.value,
            Reason.JOB_DELETED.value,
            f"{name} was deleted before its outcome was recorded; the run is not restarted "
            "(change the spec to start a new run)",
        )

    jstatus = job.get("status") or {}
    finished = job_finished(job)
    if finished == "Complete":
        done = _job_condition(job, "Complete") or {}
        when = jstatus.get("completionTime") or done.get("lastTransitionTime")
        winner = podset.result_pod([p for p in _by_age(pods) if _pod_phase(p) == "Succeeded"], grp)
        if winner is None:
            if same_run and prev_phase in TERMINAL:
                return RunState(
                    prev_phase,
                    prev_reason or prev_phase,
                    previous.get("message") or "",
                    previous.get("artifacts"),
                    previous.get("metrics"),
                    previous.get("completionTime"),
                    previous.get("estimate"),
                )
            return RunState(
                Phase.SUCCEEDED.value,
                Reason.COMPLETED.value,
                f"Job {job['metadata']['name']} completed; its pod was gone before the result "
                "was read, so artifact URIs are not known",
                completion_time=when,
            )
        term = _terminated(winner) or {}
        result = parse_result(term.get("message"))
        if result is None or result.get("outcome") != "Succeeded":
            return RunState(
                Phase.FAILED.value,
                Reason.ARTIFACTS_MISSING.value,
                f"pod {winner['metadata']['name']}: the trainer exited 0 without reporting "
                "a successful result (no termination message); not treated as success",
                completion_time=when,
            )
        dry_run = (job["metadata"].get("annotations") or {}).get(ANN_DRY_RUN) == "true"
        if dry_run:
            estimate = result.get("estimate")
            if not isinstance(estimate, dict):
                return RunState(
                    Phase.FAILED.value,
                    Reason.ARTIFACTS_MISSING.value,
                    "the dry run reported success but no estimate; not treated as success",
                    completion_time=when,
                )
            return RunState(
                Phase.SUCCEEDED.value,
                Reason.COMPLETED.value,
                _clip(str(result.get("message") or "dry run: estimate in status.estimate")),
                completion_time=when,
                estimate=estimate,
            )
        arts = _artifacts(result)
        if not ({"adapterUri", "mergedModelUri", "manifestUri"} & set(arts)):
            return RunState(
                Phase.FAILED.value,
                Reason.ARTIFACTS_MISSING.value,
                "the trainer reported success but no artifact URI; not treated as success",
                metrics=_metrics(result) or None,
                completion_time=when,
            )
        msg = str(result.get("message") or "training completed")
        return RunState(
            Phase.SUCCEEDED.value,
            Reason.COMPLETED.value,
            _clip(msg),
            arts,
            _metrics(result) or None,
            when,
        )

    if finished == "Failed":
        cond = _job_condition(job, "Failed") or {}
        when = cond.get("lastTransitionTime")
        job_reason = cond.get("reason") or ""
        last = _last_failed(pods, grp)
        failure = _failure(last, grp) if last is not None else None
        metrics = None
        if last is not None:
            result = parse_result((_terminated(last) or {}).get("message"))
            metrics = _metrics(result) or None if result else None
        if job_reason == "DeadlineExceeded":
            deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
            return RunState(
                Phase.FAILED.value,
                Reason.DEADLINE_EXCEEDED.value,
                f"the run was active longer than runPolicy.activeDeadlineSeconds ({deadline}s) "
                "and was stopped",
                metrics=metrics,
                completion_time=when,
            )
        if job_reason == "BackoffLimitExceeded":
            failed = grp.attempts_failed(int(jstatus.get("failed") or 0))
            limit = (job.get("spec") or {}).get("backoffLimit")
            if grp.size > 1 and isinstance(limit, int):
                limit //= grp.size  # group.job_fields scaled runPolicy.backoffLimit
            if failure and failure[0] in (Reason.OOM_KILLED.value, Reason.POD_KILLED.value):
                reason, detail = failure
                return RunState(
                    Phase.FAILED.value,
                    reason,
                    _clip(f"{detail}; {failed} failed attempt(s), backoffLimit {limit} reached"),
                    metrics=metrics,
                    completion_time=when,
                )
            if failure is None:
                # The failed pod is gone: it was deleted (kubectl delete pod, node drain without
                # eviction) and the Job counted it as a failure.
                return RunState(
                    Phase.FAILED.value,
                    Reason.POD_KILLED.value,
                    f"the run's pod was deleted before the trainer finished; {failed} failed "
                    f"attempt(s), backoffLimit {limit} reached",
                    completion_time=when,
                )
            last_words = f"; last attempt: {failure[0]}: {failure[1]}"
            return RunState(
                Phase.FAILED.value,
                Reason.BACKOFF_LIMIT_EXCEEDED.value,
                _clip(f"{failed} failed attempt(s), backoffLimit {limit} reached{last_words}"),
                metrics=metrics,
                completion_time=when,
            )
        if failure is not None:
            return RunState(
                Phase.FAILED.value, failure[0], failure[1], metrics=metrics, completion_time=when
            )
        return RunState(
            Phase.FAILED.value,
            Reason.TRAINER_ERROR.value,
            _clip(f"Job failed: {job_reason}: {cond.get('message') or ''}"),
            completion_time=when,
        )

    if (job.get("spec") or {}).get("suspend"):
        if suspend_intent:
            return RunState(
                Phase.SUSPENDED.value,
                Reason.SUSPENDED.value,
                "suspended (runPolicy.suspend: true); set it to false to resume from the last "
                "checkpoint",
            )
        return RunState(
            Phase.SUSPENDED.value,
            Reason.PREEMPTED.value,
            "the Job was suspended by another controller (e.g. a queue such as Kueue); it "
            "resumes from the last checkpoint when unsuspended",
        )

    live = [p for p in _by_age(pods) if _pod_phase(p) in ("Pending", "Running")]
    live = [p for p in live if not p["metadata"].get("deletionTimestamp")] or live
    failed_pods = [p for p in pods if _pod_phase(p) == "Failed"]
    failed_count = grp.attempts_failed(max(int(jstatus.get("failed") or 0), len(failed_pods)))
    if not live and any(_pod_phase(p) == "Succeeded" for p in pods):
        # The trainer has exited 0; the Job controller has not marked the Job Complete yet.
        return RunState(
            Phase.RUNNING.value,
            Reason.TRAINING.value,
            "the trainer finished; waiting for the Job to complete",
        )
    running = [p for p in live if _pod_phase(p) == "Running"]
    overdue = podset.scheduling_overdue(live, grp, now) if now is not None else None
    if overdue is not None:
        return RunState(
            Phase.FAILED.value,
            Reason.UNSCHEDULABLE.value,
            _clip(
                f"{podset.where(overdue)} could not be scheduled within "
                f"runPolicy.schedulingTimeoutSeconds ({grp.scheduling_deadline}s), so the group "
                f"of {grp.size} pods cannot train; its pods were stopped and their GPUs released. "
                f"{_waiting(overdue)[1]}"
            ),
        )
    succeeded = [p for p in pods if _pod_phase(p) == "Succeeded"]
    if grp.size > 1 and running and len(running) + len(succeeded) < grp.size:
        running = []  # a group trains only once all its pods run
    if running:
        pod = running[-1]
        attempt = failed_count + 1
        if grp.size > 1:
            nodes = sorted({podset.node(p) or "?" for p in running})
            return RunState(
                Phase.RUNNING.value,
                Reason.RETRYING.value if failed_count else Reason.TRAINING.value,
                _clip(
                    f"{len(running)} pods are training on nodes {', '.join(nodes)}"
                    + (
                        f" (attempt {attempt}, resuming from the last checkpoint)"
                        if failed_count
                        else ""
                    )
                ),
            )
        if failed_count:
            return RunState(
                Phase.RUNNING.value,
                Reason.RETRYING.value,
                f"pod {pod['metadata']['name']} is training (attempt {attempt}, resuming from "
                "the last checkpoint)",
            )
        return RunState(
            Phase.RUNNING.value,
            Reason.TRAINING.value,
            f"pod {pod['metadata']['name']} is training",
        )
    if live:
        blocked = podset.most_blocked(live) if grp.size > 1 else live[-1]
        reason, message = _named(blocked, grp, _waiting(blocked))
        if failed_count and reason in (
            Reason.CONTAINER_CREATING.value,
            Reason.WAITING_FOR_POD.value,
        ):
            last = _last_failed(pods, grp)
            why = f" after {pod_failure(last)[0]}" if last is not None else ""
            return RunState(
                Phase.RUNNING.value,
                Reason.RETRYING.value,
                f"attempt {failed_count + 1} is starting{why}",
            )
        return RunState(Phase.PENDING.value, reason, message)
    if failed_count:
        last = _last_failed(pods, grp)
        why = f": {_failure(last, grp)[1]}" if last is not None else ""
        return RunState(
            Phase.RUNNING.value,
            Reason.RETRYING.value,
            _clip(f"attempt {failed_count} failed{why}; the Job will retry"),
        )
    return RunState(
        Phase.PENDING.value,
        Reason.WAITING_FOR_POD.value,
        f"Job {job['metadata']['name']} created; waiting for its pod",
    )


# ----------------------------------------------------------------------------- conditions


def _ready_reason(status: dict[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ConditionType.READY.value:
            return cond.get("reason")
    return None


def conditions(
    previous: list[dict[str, Any]] | None,
    state: RunState,
    generation: int,
    now: str,
    problem: tuple[str, str] | None = None,
    waiting: str | None = None,
) -> list[dict[str, Any]]:
    """All condition types, following kstatus' contract (what Flux and most deploy tools read):

    - `Stalled=True` when the object cannot progress without a change: the run failed, or the
      current generation's spec cannot run (`problem`), even while an older run is still active;
    - `Reconciling=True` while work is in progress and nothing is stalled: Pending, Running,
      suspended (by `runPolicy.suspend` or by a queue: not done, so a Flux `wait` keeps
      waiting), or a queued generation waiting for the current run;
    - never both: Stalled wins, so kstatus reads Failed at once instead of InProgress;
    - `Ready` is the summary: True only when the run Succeeded and nothing is pending or stalled.
    """
    phase, reason, message = state.phase, state.reason, state.message
    stalled = phase == Phase.FAILED.value or problem is not None
    reconciling = not stalled and (phase not in TERMINAL or waiting is not None)
    ready = phase == Phase.SUCCEEDED.value and not stalled and not reconciling
    rec_reason, rec_message = (reason, message)
    if waiting is not None:
        rec_reason, rec_message = Reason.QUEUED.value, waiting
    st_reason, st_message = (reason, message) if phase == Phase.FAILED.value else (reason, "")
    if problem is not None:
        st_reason, st_message = problem
    desired = [
        (ConditionType.READY, ready, reason, message),
        (ConditionType.RUNNING, phase == Phase.RUNNING.value, reason, message),
        (ConditionType.SUCCEEDED, phase == Phase.SUCCEEDED.value, reason, message),
        (ConditionType.FAILED, phase == Phase.FAILED.value, reason, message),
        (ConditionType.SUSPENDED, phase == Phase.SUSPENDED.value, reason, message),
        (ConditionType.RECONCILING, reconciling, rec_reason, rec_message if reconciling else ""),
        (ConditionType.STALLED, stalled, st_reason, st_message if stalled else ""),
    ]
    old = {c.get("type"): c for c in previous or []}
    out = []
    for ctype, true, creason, cmessage in desired:
        value = "True" if true else "False"
        if not true and ctype != ConditionType.READY:
            cmessage = ""
        before = old.get(ctype.value) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else None
        out.append(
            {
                "type": ctype.value,
                "status": value,
                "reason": creason,
                "message": _clip(cmessage),
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return out


# --------------------------------------------------------------------------------- GPU time


def gpu_count(pod: dict[str, Any], gpu_resources: set[str]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        for key, value in limits.items():
            if key in gpu_resources:
                try:
                    total += int(str(value))
                except ValueError:
                    continue
    return total


def pod_gpu_seconds(pod: dict[str, Any], gpu_resources: set[str], now: datetime) -> float:
    gpus = gpu_count(pod, gpu_resources)
    if not gpus:
        return 0.0
    cs = _container_status(pod)
    state = cs.get("state") or {}
    term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    if term:
        start, end = parse_time(term.get("startedAt")), parse_time(term.get("finishedAt"))
        if start and end:
            return max(0.0, (end - start).total_seconds()) * gpus
        return 0.0
    running = state.get("running")
    start = parse_time(running.get("startedAt")) if running else None
    if start is None:
        return 0.0
    elapsed = max(0.0, (now - start).total_seconds())
    return (elapsed // GPU_ACCOUNTING_STEP) * GPU_ACCOUNTING_STEP * gpus


# ------------------------------------------------------------------------------- derivation


def progress_summary(progress: dict[str, Any]) -> str | None:
    """`status.progressSummary` (the Progress column) from the trainer's own `status.progress`:
    the same `Progress.summary()` the trainer uses, so whichever writes it first, they agree."""
    try:
        return Progress.model_validate(progress).summary()
    except ValidationError:
        return None


def _history_record(status: dict[str, Any], superseded: bool, gpu_seconds: float) -> dict[str, Any]:
    phase = status.get("phase")
    if phase in TERMINAL and not superseded:
        outcome = str(phase)
        reason = _ready_reason(status)
    else:
        outcome = "Superseded"
        reason = Reason.RESTARTED.value
    record: dict[str, Any] = {"run": int(status["run"]), "outcome": outcome}
    for key, value in (
        ("generation", status.get("runGeneration")),
        ("reason", reason),
        ("startTime", status.get("startTime")),
        ("completionTime", status.get("completionTime")),
        ("artifacts", status.get("artifacts")),
        ("metrics", status.get("metrics")),
        ("gpuSeconds", round(gpu_seconds, 1) if gpu_seconds else None),
    ):
        if value is not None:
            record[key] = value
    return record


def _history_gpu(history: list[dict[str, Any]]) -> float:
    return float(sum(float(h.get("gpuSeconds") or 0) for h in history))


def derive(
    ftj: dict[str, Any],
    decision: Decision,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    now: datetime,
    gpu_resources: set[str],
    problem: tuple[str, str] | None = None,
    model: str | None = None,
    waiting_for_base: tuple[str, str] | None = None,
    workload: dict[str, Any] | None = None,
) -> Derived:
    """The new status of `ftj` after `decision` was carried out. `job` is the current run's Job
    (None if there is none), `pods` its pods; `problem` is (reason, message) when the spec cannot
    run; `workload` is Kueue's Workload of `job` when it waits in a queue (queueing.py). Returns
    the full new status and the Events of the transitions from the old one."""
    meta = ftj["metadata"]
    generation = int(meta.get("generation") or 1)
    old: dict[str, Any] = copy.deepcopy(ftj.get("status") or {})
    old.pop("progress", None)
    new = copy.deepcopy(old)
    events: list[Event] = []
    now_s = rfc3339(now)
    suspend_intent = bool(((ftj.get("spec") or {}).get("runPolicy") or {}).get("suspend", False))
    clear_progress = False

    history = list(old.get("history") or [])
    old_run = int(old.get("run") or 0)
    current = decision.current_run
    old_total = float(old.get("gpuSeconds") or 0)
    prev_run_gpu = max(0.0, old_total - _history_gpu(history)) if old_run else 0.0

    if current > old_run and job is not None:
        # A new run: the old one goes into history, run fields start afresh.
        if old_run:
            superseded = decision.supersede or old.get("phase") not in TERMINAL
            history.append(_history_record(old, superseded, prev_run_gpu))
            history = history[-HISTORY_LIMIT:]
        prev_run_gpu = 0.0
        ann = job["metadata"].get("annotations") or {}
        for key in (
            "completionTime",
            "artifacts",
            "metrics",
            "attempts",
            "queuedGeneration",
            "message",
            "lineage",
        ):
            new.pop(key, None)
        lineage = _lineage(ann.get(ANN_LINEAGE))
        if lineage is not None:
            new["lineage"] = lineage
        new["run"] = current
        new["jobName"] = job["metadata"]["name"]
        new["specHash"] = ann.get(ANN_SPEC_HASH)
        gen = ann.get(ANN_GENERATION)
        new["runGeneration"] = int(gen) if gen and gen.isdigit() else generation
        new["startTime"] = job["metadata"].get("creationTimestamp") or now_s
        new["history"] = history
        clear_progress = True
        if not old_run:
            events.append(
                Event(
                    "Normal",
                    Reason.CREATED.value,
                    f"started run {current} (Job {new['jobName']}) for generation "
                    f"{new['runGeneration']}",
                )
            )
        elif decision.supersede or old.get("phase") not in TERMINAL:
            events.append(
                Event(
                    "Normal",
                    Reason.RESTARTED.value,
                    f"spec changed (generation {new['runGeneration']}): run {old_run} stopped, "
                    f"run {current} started (Job {new['jobName']})",
                )
            )
        else:
            events.append(
                Event(
                    "Normal",
                    Reason.SPEC_CHANGED.value,
                    f"spec changed (generation {new['runGeneration']}): started run {current} "
                    f"(Job {new['jobName']}) after run {old_run} ended",
                )
            )

    same_run = current == old_run
    if current == 0:
        # No run has ever started: the spec cannot run, or the first Job is not there yet.
        if problem is not None:
            state = RunState(Phase.FAILED.value, problem[0], problem[1])
        elif waiting_for_base is not None:  # spec.model.fromJob: the base has not succeeded
            state = RunState(Phase.PENDING.value, *waiting_for_base)
        else:
            state = RunState(Phase.PENDING.value, Reason.CREATED.value, "creating the first run")
    else:
        state = run_state(job, pods, old, same_run, suspend_intent, now)
        queued = queueing.refine(state.phase, state.reason, job, workload)
        if queued is not None:  # suspended by Kueue: Queued or Preempted, in Kueue's words
            state = RunState(queued.phase, queued.reason, queued.message)
    queue = queueing.queue_status(job, workload) if current else {}
    if queue:
        new["queue"] = queue
    else:
        new.pop("queue", None)
    resumed = state.phase not in TERMINAL and state.phase != Phase.SUSPENDED.value
    if resumed and old.get("phase") == Phase.SUSPENDED.value and same_run and current:
        events.append(Event("Normal", Reason.RESUMED.value, f"run {current} resumed"))

    # Queue / Ignore bookkeeping.
    waiting: str | None = None
    if decision.queued_generation is not None and current:
        new["queuedGeneration"] = decision.queued_generation
        waiting = (
            f"generation {decision.queued_generation} is queued: run {current + 1} starts when "
            f"run {current} ends"
        )
        if old.get("queuedGeneration") != decision.queued_generation:
            events.append(Event("Normal", Reason.QUEUED.value, waiting))
    else:
        new.pop("queuedGeneration", None)
    if decision.ignored and old.get("observedGeneration") != generation:
        events.append(
            Event(
                "Normal",
                Reason.SPEC_CHANGE_IGNORED.value,
                f"spec changed (generation {generation}) but runPolicy.onSpecChange is Ignore: "
                f"run {current} keeps training generation {new.get('runGeneration')}",
            )
        )
    if problem is not None and current:
        old_stalled: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == "Stalled"), {}
        )
        if old_stalled.get("reason") != problem[0] or old_stalled.get("status") != "True":
            events.append(
                Event("Warning", problem[0], f"generation {generation} cannot run: {problem[1]}")
            )

    # Phase, message, outcome.
    if (state.phase, state.reason) != (old.get("phase"), _ready_reason(old)) or (
        current != old_run
    ):
        etype = (
            "Warning"
            if state.phase == Phase.FAILED.value or state.reason in _WARNING_REASONS
            else "Normal"
        )
        events.append(
            Event(etype, state.reason, f"run {current or '-'}: {state.phase}: {state.message}")
        )

    new["phase"] = state.phase
    message = state.message
    if problem is not None and current:
        message = f"{message} (generation {generation} cannot run: {problem[1]})"
    if waiting:
        message = f"{message} ({waiting})"
    if waiting_for_base is not None and current:
        message = f"{message} (generation {generation} waits: {waiting_for_base[1]})"
    if decision.ignored:
        message = (
            f"{message} (spec changes ignored: runPolicy.onSpecChange is Ignore; run {current} "
            f"trains generation {new.get('runGeneration')})"
        )
    new["message"] = _clip(message)
    for key, value in (
        ("artifacts", state.artifacts),
        ("metrics", state.metrics),
        ("completionTime", state.completion_time),
        ("estimate", state.estimate),
    ):
        if value:
            new[key] = value
        else:
            new.pop(key, None)
    new["observedGeneration"] = generation
    new["conditions"] = conditions(
        old.get("conditions"), state, generation, now_s, problem, waiting
    )
    if model:
        new["model"] = model

    if job is not None:
        js = job.get("status") or {}
        counted = (
            int(js.get("active") or 0) + int(js.get("failed") or 0) + int(js.get("succeeded") or 0)
        )
        before = int(old.get("attempts") or 0) if same_run else 0
        attempts = max(before, counted, len(pods))
        if attempts:
            new["attempts"] = attempts

    run_gpu = prev_run_gpu
    if current and job is not None:
        run_gpu = max(run_gpu, sum(pod_gpu_seconds(p, gpu_resources, now) for p in pods))
    total = _history_gpu(new.get("history") or []) + run_gpu
    if total or "gpuSeconds" in old:
        new["gpuSeconds"] = round(total, 1)

    if current and not new.get("history"):
        new.pop("history", None)
    progress = (ftj.get("status") or {}).get("progress") or None
    if progress is not None and not clear_progress:
        prog_run = progress.get("run") if isinstance(progress, dict) else None
        clear_progress = prog_run is not None and bool(current) and prog_run != current
    clear_progress = clear_progress and progress is not None
    summary = None if clear_progress or progress is None else progress_summary(progress)
    if summary:
        new["progressSummary"] = summary
    else:
        new.pop("progressSummary", None)
    return Derived(status=new, events=events, clear_progress=clear_progress)


def _lineage(raw: str | None) -> dict[str, Any] | None:
    """status.lineage from the run's Job annotation (written by the operator at creation)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------ patching


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (None when they are equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for key in old.keys() - new.keys():
            patch[key] = None
        for key, value in new.items():
            if key not in old:
                patch[key] = value
            else:
                sub = merge_patch(old[key], value)
                if sub is not None:
                    patch[key] = sub
        return patch or None
    return None if old == new else new


def status_patch(ftj: dict[str, Any], derived: Derived) -> dict[str, Any] | None:
    """The merge patch for the status subresource; None when nothing changed. It never sets
    `progress` (the trainer's), only removes it when `clear_progress`."""
    old = copy.deepcopy(ftj.get("status") or {})
    progress = old.pop("progress", None)
    patch = merge_patch(old, derived.status) or {}
    if derived.clear_progress and progress is not None:
        patch["progress"] = None
    return {"status": patch} if patch else None
