"""FineTuneSchedule decisions, as pure functions: given the schedule's spec and status, the time,
the data's fingerprint (when it was taken this pass) and the runs it stamped, what to do.

    decide(...)       -> Decision: start a run or not (and why), delete active runs (Replace),
                         the new lastScheduleTime / fingerprint, the next cron time
    stamp(...)        -> the FineTuneJob object of a run
    to_prune(...)     -> finished runs past the history limits
    dataset_check_due -> whether this pass takes a fingerprint

Cron expressions are evaluated by cronsim (a small, maintained, dependency-free parser that
handles time zones and DST the way cron does); the @macros are expanded here, as cronsim takes
five fields only.

Runs are named deterministically per trigger, so a pass that dies after creating a run and
before recording it creates nothing twice: the next pass computes the same name, finds it among
the stamped runs, and records it.
  * cron:         <schedule>-<unix minute of the cron time>
  * data change:  <schedule>-d<sha256(previous fingerprint, new fingerprint)[:10]>
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from kubetune_api.v1alpha1 import (
    ConcurrencyPolicy,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    ScheduleReason,
    ScheduleTrigger,
)

JSON = dict[str, Any]

LABEL_SCHEDULE = "kubetune.io/schedule"
ANN_TRIGGER = "kubetune.io/schedule-trigger"
ANN_PREVIOUS = "kubetune.io/previous-run"
ANN_FINGERPRINT = "kubetune.io/dataset-fingerprint"
ANN_SCHEDULED_TIME = "kubetune.io/scheduled-time"

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FINISHED = ("Succeeded", "Failed")


class InvalidSchedule(ValueError):
    """spec.schedule or spec.timeZone cannot be evaluated; the message names the field."""


def stamp_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Cron:
    """A checked cron expression in its time zone."""

    expr: str
    zone: ZoneInfo

    @classmethod
    def of(cls, spec: FineTuneScheduleSpec) -> Cron | None:
        if spec.schedule is None:
            return None
        try:
            zone = ZoneInfo(spec.time_zone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(
                f"spec.timeZone: unknown time zone {spec.time_zone!r} (use an IANA name such "
                "as Europe/Berlin)"
            ) from None
        expr = MACROS.get(spec.schedule, spec.schedule)
        try:
            CronSim(expr, datetime.now(zone))
        except CronSimError as e:
            raise InvalidSchedule(
                f"spec.schedule: {spec.schedule!r} is not a valid cron expression ({e}); "
                "write minute hour day-of-month month day-of-week, e.g. '0 3 * * 1'"
            ) from None
        return cls(expr, zone)

    def latest(self, now: datetime) -> datetime:
        """The latest cron time at or before `now`."""
        start = now.astimezone(self.zone).replace(microsecond=0) + timedelta(seconds=1)
        return next(CronSim(self.expr, start, reverse=True)).astimezone(UTC)

    def next_after(self, now: datetime) -> datetime:
        return next(CronSim(self.expr, now.astimezone(self.zone))).astimezone(UTC)


@dataclass(frozen=True)
class Observed:
    """What the pass saw."""

    now: datetime
    created: datetime  # the schedule's creationTimestamp: no cron time before it is due
    fingerprint: str | None  # taken this pass; None: not due, or no dataset trigger
    active: tuple[str, ...] = ()  # stamped runs not finished, oldest first
    existing: frozenset[str] = frozenset()  # every stamped run's name


@dataclass(frozen=True)
class Run:
    """A run to stamp (or, when it already exists, to record)."""

    name: str
    trigger: ScheduleTrigger
    reason: ScheduleReason
    scheduled_time: datetime | None
    fingerprint: str | None
    previous: str | None
    exists: bool = False  # stamped by an earlier pass that died before recording it


@dataclass(frozen=True)
class Decision:
    reason: ScheduleReason
    message: str
    run: Run | None = None
    delete: tuple[str, ...] = ()
    last_schedule_time: datetime | None = None  # new status.lastScheduleTime
    fingerprint: str | None = None  # new status.datasetFingerprint
    next_run_time: datetime | None = None
    events: list[str] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return self.run is not None


def run_name(
    schedule: str,
    trigger: ScheduleTrigger,
    scheduled: datetime | None,
    previous_fp: str | None,
    fp: str | None,
) -> str:
    if trigger == ScheduleTrigger.SCHEDULE:
        assert scheduled is not None
        return f"{schedule}-{int(scheduled.timestamp()) // 60}"
    digest = hashlib.sha256(f"{previous_fp or ''}\n{fp or ''}".encode()).hexdigest()
    return f"{schedule}-d{digest[:10]}"


def dataset_check_due(
    spec: FineTuneScheduleSpec, status: FineTuneScheduleStatus, now: datetime
) -> bool:
    trig = spec.trigger.dataset_change if spec.trigger else None
    if trig is None:
        return False
    last = parse_time(status.dataset_checked_time)
    return last is None or now >= last + timedelta(seconds=trig.interval_seconds) - timedelta(
        milliseconds=500
    )


def next_check(
    spec: FineTuneScheduleSpec,
    status_checked: datetime | None,
    next_run: datetime | None,
    now: datetime,
) -> float | None:
    """Seconds until the next pass should look (the cron time or the next data check)."""
    times = [t for t in (next_run,) if t is not None]
    trig = spec.trigger.dataset_change if spec.trigger else None
    if trig is not None:
        times.append((status_checked or now) + timedelta(seconds=trig.interval_seconds))
    if not times:
        return None
    return max(0.5, (min(times) - now).total_seconds())


def decide(
    name: str,
    spec: FineTuneScheduleSpec,
    status: FineTuneScheduleStatus,
    seen: Observed,
    cron: Cron | None,
) -> Decision:
    """Start a run or not, and why (module docstring)."""
    now = seen.now
    last_sched = parse_time(status.last_schedule_time)
    next_run = cron.next_after(now) if cron else None
    old_fp = status.dataset_fingerprint
    # What a decision that advances nothing records (held, suspended).
    keep = Decision(
        ScheduleReason.NOT_DUE,
        "",
        last_schedule_time=last_sched,
        fingerprint=old_fp,
        next_run_time=next_run,
    )

    if spec.suspend:
        return replace(
            keep,
            reason=ScheduleReason.SUSPENDED,
            message="spec.suspend is true: no run is started (a change or cron time missed "
            "meanwhile starts one run on resume)",
        )

    # The cron time due: the latest one at or before now, after the last one handled and not
    # before the schedule existed.
    due: datetime | None = None
    missed: datetime | None = None
    if cron is not None:
        latest = cron.latest(now)
        if latest > (last_sched or seen.created - timedelta(seconds=1)):
            deadline = spec.starting_deadline_seconds
            if deadline is not None and (now - latest).total_seconds() > deadline:
                missed = latest
            else:
                due = latest

    baseline = seen.fingerprint is not None and old_fp is None
    changed = seen.fingerprint is not None and old_fp is not None and seen.fingerprint != old_fp

    if due is None and not changed:
        new_fp = seen.fingerprint if baseline else old_fp
        new_last = missed or last_sched
        common = replace(keep, last_schedule_time=new_last, fingerprint=new_fp)
        if missed is not None:
            return replace(
                common,
                reason=ScheduleReason.MISSED_DEADLINE,
                message=f"the run due at {stamp_time(missed)} was not started within "
                f"startingDeadlineSeconds ({spec.starting_deadline_seconds}s): skipped",
                events=[str(ScheduleReason.MISSED_DEADLINE)],
            )
        if baseline:
            return replace(
                common,
                reason=ScheduleReason.DATASET_BASELINE,
                message=f"first fingerprint of the data recorded ({seen.fingerprint}); a change "
                "starts a run",
            )
        if seen.fingerprint is not None:
            return replace(
                common,
                reason=ScheduleReason.DATASET_UNCHANGED,
                message="the data is unchanged since the last run (or the baseline)",
            )
        return replace(common, message="no cron time or data change is due")

    trigger = ScheduleTrigger.SCHEDULE if due is not None else ScheduleTrigger.DATASET_CHANGE
    fp = seen.fingerprint if seen.fingerprint is not None else old_fp
    run = run_name(name, trigger, due, old_fp, fp)
    why = (
        f"cron time {stamp_time(due)}"
        if due is not None
        else f"the data changed ({old_fp} -> {seen.fingerprint})"
    )
    previous = status.last_run.name if status.last_run else None
    advanced = replace(keep, last_schedule_time=due or last_sched, fingerprint=fp)
    if run in seen.existing:  # stamped by a pass that died before recording it
        reason = (
            ScheduleReason.SCHEDULED
            if trigger == ScheduleTrigger.SCHEDULE
            else ScheduleReason.DATASET_CHANGED
        )
        return replace(
            advanced,
            reason=reason,
            message=f"{run} was started for {why}",
            run=Run(run, trigger, reason, due, fp, previous, exists=True),
        )

    others = tuple(a for a in seen.active if a != run)
    delete: tuple[str, ...] = ()
    if others and spec.concurrency_policy == ConcurrencyPolicy.FORBID:
        return replace(
            keep,
            reason=ScheduleReason.FORBID_CONCURRENT,
            message=f"a run is due ({why}) but {', '.join(others)} is still active "
            "(concurrencyPolicy Forbid): it starts when that one finishes",
        )
    if others and spec.concurrency_policy == ConcurrencyPolicy.REPLACE:
        delete = others
        reason = ScheduleReason.REPLACED
        message = f"started {run} for {why}, replacing {', '.join(others)}"
    elif trigger == ScheduleTrigger.SCHEDULE:
        reason = ScheduleReason.SCHEDULED
        message = f"started {run} for {why}"
    else:
        reason = ScheduleReason.DATASET_CHANGED
        message = f"started {run}: {why}"
    return replace(
        advanced,
        reason=reason,
        message=message,
        run=Run(run, trigger, reason, due, fp, previous),
        delete=delete,
        events=[str(reason)],
    )


def stamp(schedule: JSON, spec: FineTuneScheduleSpec, run: Run) -> JSON:
    """The FineTuneJob of `run`: the template, the schedule's label, lineage annotations and a
    controller owner reference to the schedule (the garbage collector removes the runs with
    it)."""
    meta = schedule["metadata"]
    labels = {**spec.template.metadata.labels, LABEL_SCHEDULE: meta["name"]}
    annotations = {**spec.template.metadata.annotations, ANN_TRIGGER: str(run.trigger)}
    if run.previous:
        annotations[ANN_PREVIOUS] = run.previous
    if run.fingerprint:
        annotations[ANN_FINGERPRINT] = run.fingerprint
    if run.scheduled_time:
        annotations[ANN_SCHEDULED_TIME] = stamp_time(run.scheduled_time)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": run.name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "kubetune.io/v1alpha1",
                    "kind": "FineTuneSchedule",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": spec.template.spec.wire(),
    }


def owned_by(obj: JSON, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def split_runs(
    runs: Iterable[JSON], history: Sequence[str] = ()
) -> tuple[tuple[str, ...], list[JSON]]:
    """(active run names oldest first, finished runs oldest first). Creation timestamps have
    one-second precision: ties go by the order in status.history (stamping order)."""
    rank = {name: i for i, name in enumerate(history)}

    def order(obj: JSON) -> tuple[str, int, str]:
        meta = obj["metadata"]
        return (meta.get("creationTimestamp") or "", rank.get(meta["name"], -1), meta["name"])

    ordered = sorted(runs, key=order)
    active = tuple(
        r["metadata"]["name"]
        for r in ordered
        if (r.get("status") or {}).get("phase") not in FINISHED
    )
    finished = [r for r in ordered if (r.get("status") or {}).get("phase") in FINISHED]
    return active, finished


def to_prune(finished: Sequence[JSON], succeeded_limit: int, failed_limit: int) -> list[str]:
    """Finished runs beyond the history limits, oldest first (newest kept)."""
    out: list[str] = []
    for phase, limit in (("Succeeded", succeeded_limit), ("Failed", failed_limit)):
        of_phase = [r for r in finished if r["status"]["phase"] == phase]
        extra = len(of_phase) - limit
        out += [r["metadata"]["name"] for r in of_phase[: max(0, extra)]]
    return sorted(out)
