"""Pure run bookkeeping: which run is current, and what a spec change means.

The run number and everything needed to decide live in the cluster: `status.run`/`specHash`
(which survive the Job's TTL deletion) and the Jobs themselves, labelled with their run and
annotated with the spec hash and generation they were made for. A Job for a run later than
`status.run` means the operator created it and stopped before recording it: it is adopted,
never created twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api.v1alpha1 import (
    LEGACY_DEFAULT_LEARNING_RATE,
    FineTuneJobSpec,
    OnSpecChange,
    Phase,
    RunPolicy,
)
from pydantic import ValidationError

from .render import ANN_SPEC_HASH, ANN_SUSPEND, LABEL_RUN

TERMINAL = {Phase.SUCCEEDED.value, Phase.FAILED.value}

# runPolicy controls how a run is executed, not what it trains: changing it never starts a run.
_NOT_TRAINING = ("runPolicy",)


def spec_hash(spec: FineTuneJobSpec | dict[str, Any]) -> str:
    """sha256 of the training-relevant spec. Fields left at their defaults are dropped, so an
    explicit default, or a new optional field in a later API version, changes nothing."""
    if isinstance(spec, FineTuneJobSpec):
        wire = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    else:
        wire = dict(spec)
    for key in _NOT_TRAINING:
        wire.pop(key, None)
    hp = wire.get("hyperparameters")
    if isinstance(hp, dict) and hp.get("learningRate") == LEGACY_DEFAULT_LEARNING_RATE:
        # Before method-aware defaults the CRD defaulted learningRate to 2e-4 and stored it in
        # every object; the dump then left it out (it was the default). Leaving it out still
        # keeps those objects' hashes, so an operator upgrade restarts none of their runs.
        hp = {k: v for k, v in hp.items() if k != "learningRate"}
        if hp:
            wire["hyperparameters"] = hp
        else:
            wire.pop("hyperparameters")
    text = json.dumps(wire, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_of(job: dict[str, Any]) -> int:
    try:
        return int(job["metadata"]["labels"][LABEL_RUN])
    except (KeyError, ValueError, TypeError):
        return 0


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    """True when `obj`'s controller ownerReference names `uid`. Only such a child is ours: a
    name proves nothing (anyone who can create a Job can pre-create `<job>-run-1`)."""
    return any(
        ref.get("uid") == uid and ref.get("controller") is True
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def left_by_namesake(obj: dict[str, Any], kind: str, name: str, uid: str) -> bool:
    """A child of an earlier, deleted object of the same kind and name (another uid): the
    garbage collector removes it, since its owner is gone; it is waited for, never touched."""
    return any(
        ref.get("controller") is True
        and ref.get("kind") == kind
        and ref.get("name") == name
        and ref.get("uid") != uid
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def job_finished(job: dict[str, Any]) -> str | None:
    """`Complete` or `Failed` once the Job controller says so (after its pods terminated)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def job_deleting(job: dict[str, Any]) -> bool:
    return bool(job["metadata"].get("deletionTimestamp"))


def policy_of(ftj: dict[str, Any]) -> RunPolicy:
    """`spec.runPolicy`, parsed once per pass and passed down (decide, status.derive, the TTL).
    The CRD admits only a valid runPolicy; one that does not parse anyway (written under an
    older schema) is read field by field, each falling back to its default."""
    raw = (ftj.get("spec") or {}).get("runPolicy") or {}
    try:
        return RunPolicy.model_validate(raw)
    except ValidationError:
        on_change = raw.get("onSpecChange")
        ttl = raw.get("ttlSecondsAfterFinished")
        return RunPolicy.model_construct(
            on_spec_change=OnSpecChange(on_change)
            if on_change in {p.value for p in OnSpecChange}
            else OnSpecChange.RESTART,
            suspend=bool(raw.get("suspend", False)),
            ttl_seconds_after_finished=ttl if isinstance(ttl, int) else None,
        )


@dataclass
class Decision:
    """What reconcile should do now, for this FineTuneJob."""

    current_run: int  # after `start` is carried out; 0 when there is no run at all
    start: int | None = None  # create run <start> for the current generation
    supersede: bool = False  # `start` replaces a run that was still active (Restart)
    delete: list[str] = field(default_factory=list)  # Jobs of earlier runs still running
    suspend: bool | None = None  # set the current Job's spec.suspend (user intent changed)
    queued_generation: int | None = None  # Queue: a generation waiting for the current run
    ignored: bool = False  # Ignore: a changed spec that will not run
    deferred: bool = False  # a new run waits until the ended run's outcome is in the status


def decide(
    ftj: dict[str, Any],
    jobs: list[dict[str, Any]],
    desired_hash: str,
    runnable: bool,
    policy: RunPolicy | None = None,
) -> Decision:
    """Decide from the FineTuneJob (spec, status) and its Jobs (already filtered by owner uid).

    `runnable` is False when the spec cannot be rendered (invalid, not allowed): then nothing is
    started, and a running run is left alone.
    """
    meta = ftj["metadata"]
    generation = int(meta.get("generation") or 1)
    status = ftj.get("status") or {}
    run_policy = policy or policy_of(ftj)
    on_change, suspend = str(run_policy.on_spec_change), run_policy.suspend

    by_run = {run_of(j): j for j in jobs if run_of(j) > 0}
    recorded = int(status.get("run") or 0)
    current = max([recorded, *by_run])
    job = by_run.get(current)

    if job is not None and current > recorded:
        current_hash = (job["metadata"].get("annotations") or {}).get(ANN_SPEC_HASH)
    else:
        current_hash = status.get("specHash")
    # No Job: the run finished and TTL removed it, or it was deleted (status says which).
    active = job is not None and job_finished(job) is None and not job_deleting(job)

    d = Decision(current_run=current)
    if not runnable:
        pass
    elif current == 0:
        d.start = 1
    elif desired_hash != current_hash:
        if on_change == OnSpecChange.IGNORE.value:
            d.ignored = True
        elif on_change == OnSpecChange.QUEUE.value and active:
            d.queued_generation = generation
        elif not active and not (recorded == current and status.get("phase") in TERMINAL):
            # The current run has ended but its outcome is not recorded yet: record it first
            # (this pass), start the next run in the next pass, so history tells what happened.
            d.deferred = True
            if on_change == OnSpecChange.QUEUE.value:
                d.queued_generation = generation
        else:  # Restart, or Queue with the current run over
            d.start = current + 1
            d.supersede = active
    if d.start is not None:
        d.current_run = d.start
    # Earlier runs never keep running next to the current one.
    d.delete = sorted(
        j["metadata"]["name"]
        for r, j in by_run.items()
        if r < d.current_run and job_finished(j) is None and not job_deleting(j)
    )
    if d.start is None and job is not None and active:
        applied = (job["metadata"].get("annotations") or {}).get(ANN_SUSPEND)
        if applied != ("true" if suspend else "false"):
            d.suspend = suspend
    return d


def finished_at(job: dict[str, Any]) -> datetime | None:
    """When the Job's Complete/Failed condition became True."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            stamp = cond.get("lastTransitionTime") or (job.get("status") or {}).get(
                "completionTime"
            )
            if stamp:
                return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return None


def expired_jobs(
    jobs: list[dict[str, Any]],
    recorded_run: int,
    recorded_terminal: bool,
    ttl_seconds: int | None,
    now: datetime,
) -> tuple[list[str], float | None]:
    """runPolicy.ttlSecondsAfterFinished, applied by the operator: the finished Jobs to delete
    now, and in how many seconds the next one expires. A Job is deleted only once its outcome
    is in the status (runs before `recorded_run` are in history; run `recorded_run` needs
    `recorded_terminal`), so the result in its pod is never lost to the TTL."""
    if ttl_seconds is None:
        return [], None
    delete: list[str] = []
    soonest: float | None = None
    for job in jobs:
        run = run_of(job)
        when = finished_at(job)
        if when is None or job_deleting(job) or run > recorded_run:
            continue
        if run == recorded_run and not recorded_terminal:
            continue
        left = (when - now).total_seconds() + ttl_seconds
        if left <= 0:
            delete.append(job["metadata"]["name"])
        else:
            soonest = left if soonest is None else min(soonest, left)
    return sorted(delete), soonest
