"""One pass over a FineTuneSchedule: read it and its runs, fingerprint the data when a check is
due, let `schedule.decide` choose, carry the decision out, prune the history, write the status.

I/O at the edges only; every choice is in schedule.py. Returns the seconds until the next pass
(the next cron time or data check), which the handler keeps as the schedule's one timer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune_api.v1alpha1 import (
    STATUS_HISTORY_LENGTH,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    ScheduleConditionType,
    ScheduleReason,
)
from pydantic import ValidationError

from . import schedule as sched
from .fingerprint import (
    WATCH_PREFIXES_VALUE,
    S3Client,
    Unreadable,
    fingerprint,
    s3_client,
    uri_allowed,
    watch_prefixes,
)
from .k8s import ApiError, Kube, path
from .reconcile import COMPONENT
from .settings import OperatorSettings

log = logging.getLogger(__name__)

JSON = dict[str, Any]

WARNING_REASONS = {
    str(r)
    for r in (
        ScheduleReason.MISSED_DEADLINE,
        ScheduleReason.INVALID_SCHEDULE,
        ScheduleReason.INVALID_TEMPLATE,
        ScheduleReason.DATASET_UNREADABLE,
        ScheduleReason.DATASET_NOT_ALLOWED,
        ScheduleReason.RUN_NAME_TAKEN,
    )
}


def watched_uris(spec: FineTuneScheduleSpec) -> list[tuple[str, str]]:
    """(field, URI) of each URI the datasetChange trigger fingerprints."""
    trig = spec.trigger.dataset_change if spec.trigger else None
    if trig is not None and trig.s3_uri:
        return [("spec.trigger.datasetChange.s3Uri", trig.s3_uri)]
    dataset = spec.template.spec.dataset
    uris = [("spec.template.spec.dataset.s3Uri", dataset.s3_uri)] if dataset.s3_uri else []
    if dataset.validation is not None and dataset.validation.s3_uri:
        uris.append(("spec.template.spec.dataset.validation.s3Uri", dataset.validation.s3_uri))
    return uris


def not_allowed(
    watched: list[tuple[str, str]], allowed: dict[str, list[str]], namespace: str
) -> str | None:
    """Why a watched URI may not be read with the operator's credentials, or None."""
    prefixes = watch_prefixes(allowed, namespace)
    for field, uri in watched:
        if not uri_allowed(uri, prefixes):
            where = ", ".join(prefixes) if prefixes else "none"
            return (
                f"{field}: {uri} is outside the S3 prefixes schedules in namespace {namespace} "
                f"may watch ({where}); watch data under one of them, or ask the platform team "
                f"to add the prefix (chart value {WATCH_PREFIXES_VALUE})"
            )
    return None


def _condition(old: list[JSON], type_: str, status: str, reason: str, message: str,
               now: str, generation: int | None) -> JSON:  # fmt: skip
    prev = next((c for c in old if c.get("type") == type_), None)
    changed = prev is None or prev.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": now if changed else prev.get("lastTransitionTime", now),  # type: ignore[union-attr]
        "observedGeneration": generation,
    }


def _invalid(kube: Kube, obj: JSON, reason: ScheduleReason, message: str, now: datetime,
             settings: OperatorSettings) -> None:  # fmt: skip
    status = dict(obj.get("status") or {})
    generation = obj["metadata"].get("generation")
    stamp = sched.stamp_time(now)
    cond = _condition(status.get("conditions") or [], ScheduleConditionType.SCHEDULE_VALID,
                      "False", reason, message, stamp, generation)  # fmt: skip
    others = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]]
    new = {**status, "observedGeneration": generation, "reason": str(reason), "message": message,
           "conditions": [*others, cond]}  # fmt: skip
    if new != status:
        _write(kube, obj, new)
        kube.post_event(obj, "Warning", str(reason), message, COMPONENT, settings.identity)


def _write(kube: Kube, obj: JSON, status: JSON) -> None:
    meta = obj["metadata"]
    kube.merge_patch(
        "FineTuneSchedule", meta["namespace"], meta["name"], {"status": status}, sub="status"
    )


def handle_schedule(
    kube: Kube,
    settings: OperatorSettings,
    namespace: str,
    name: str,
    now: datetime | None = None,
    s3: S3Client | None = None,
) -> float | None:
    """One pass (module docstring); the seconds until the next one, or None."""
    now = now or datetime.now(UTC)
    obj = kube.get(path("FineTuneSchedule", namespace, name))
    if obj is None:
        return None
    meta = obj["metadata"]
    try:
        spec = FineTuneScheduleSpec.model_validate(obj.get("spec") or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"spec.template does not make a valid FineTuneJob: {where}: {first['msg']}"
        _invalid(kube, obj, ScheduleReason.INVALID_TEMPLATE, message, now, settings)
        return None
    try:
        cron = sched.Cron.of(spec)
    except sched.InvalidSchedule as e:
        _invalid(kube, obj, ScheduleReason.INVALID_SCHEDULE, str(e), now, settings)
        return None
    raw_status = dict(obj.get("status") or {})
    status = FineTuneScheduleStatus.model_validate(raw_status)

    uid = meta["uid"]
    runs = [
        r
        for r in kube.list_objects(path("FineTuneJob", namespace), f"{sched.LABEL_SCHEDULE}={name}")
        if sched.owned_by(r, uid)
    ]
    active, finished = sched.split_runs(runs, [h.name for h in status.history])

    fp: str | None = None
    unreadable: str | None = None
    unreadable_reason = ScheduleReason.DATASET_UNREADABLE
    checked = sched.dataset_check_due(spec, status, now)
    watched = watched_uris(spec) if spec.trigger and spec.trigger.dataset_change else []
    refusal = not_allowed(watched, settings.schedule_watch_prefixes, namespace)
    if refusal is not None:  # every pass, and never read: the credentials are not the author's
        unreadable, unreadable_reason = refusal, ScheduleReason.DATASET_NOT_ALLOWED
    elif checked:
        endpoint = spec.template.spec.output.endpoint
        if endpoint and endpoint.rstrip("/") != (settings.s3_endpoint or "").rstrip("/"):
            unreadable = (
                "the operator reads data only at the platform's S3 endpoint (s3.endpoint); "
                "spec.template.spec.output.endpoint names another: datasetChange cannot watch it"
            )
        else:
            try:
                client = s3 or s3_client(settings.s3_endpoint, settings.s3_region)
                fp = fingerprint(client, [uri for _, uri in watched])
            except Unreadable as e:
                unreadable = str(e)
            except Exception as e:  # no credentials, bad endpoint: the type only
                unreadable = f"{type(e).__name__} reading the data"

    seen = sched.Observed(
        now=now,
        created=sched.parse_time(meta.get("creationTimestamp")) or now,
        fingerprint=fp,
        active=active,
        existing=frozenset(r["metadata"]["name"] for r in runs),
    )
    decision = sched.decide(name, spec, status, seen, cron)
    reason, message = decision.reason, decision.message
    events = [(str(r), message) for r in decision.events]
    last_time, recorded_fp = decision.last_schedule_time, decision.fingerprint

    run = decision.run
    still_active = list(active)
    uids = {r["metadata"]["name"]: r["metadata"]["uid"] for r in runs}
    if run is not None and not run.exists:
        for victim in decision.delete:
            kube.delete("FineTuneJob", namespace, victim, uid=uids[victim])
            still_active.remove(victim)
        refused: tuple[ScheduleReason, str] | None = None
        try:
            created, new = kube.create(sched.stamp(obj, spec, run))
        except ApiError as e:
            if not 400 <= e.status < 500:
                raise  # the API server is away: the work queue retries
            # e.g. template labels that are no label keys: nothing a retry would fix
            refused = (
                ScheduleReason.INVALID_TEMPLATE,
                f"the API server refused the run {run.name}: {e.message}",
            )
        else:
            if new or sched.owned_by(created, uid):
                still_active.append(run.name)
            else:  # someone else's FineTuneJob has the name
                refused = (
                    ScheduleReason.RUN_NAME_TAKEN,
                    f"a FineTuneJob named {run.name} exists and is not this schedule's: delete "
                    "or rename it (runs are named <schedule>-<suffix>)",
                )
        if refused is not None:  # say so, record nothing: the same run is tried next pass
            reason, message = refused
            events = [(str(reason), message)]
            run = None
            last_time = sched.parse_time(status.last_schedule_time)
            recorded_fp = status.dataset_fingerprint

    for victim in sched.to_prune(
        finished, spec.successful_jobs_history_limit, spec.failed_jobs_history_limit
    ):
        kube.delete("FineTuneJob", namespace, victim, uid=uids[victim])

    stamp = sched.stamp_time(now)
    generation = meta.get("generation")
    checked_at = now if checked else sched.parse_time(status.dataset_checked_time)
    wait = sched.next_check(spec, checked_at, decision.next_run_time, now)
    new_status: JSON = {
        **raw_status,
        "observedGeneration": generation,
        "lastScheduleTime": sched.stamp_time(last_time) if last_time else None,
        "datasetFingerprint": recorded_fp,
        "datasetCheckedTime": sched.stamp_time(checked_at) if checked_at else None,
        "nextRunTime": sched.stamp_time(decision.next_run_time) if decision.next_run_time else None,
        "nextCheckTime": sched.stamp_time(now + timedelta(seconds=wait)) if wait else None,
        "active": still_active,
    }
    if run is not None:
        entry = {
            "name": run.name,
            "trigger": str(run.trigger),
            "reason": str(run.reason),
            "time": stamp,
            "scheduledTime": sched.stamp_time(run.scheduled_time) if run.scheduled_time else None,
            "datasetFingerprint": run.fingerprint,
            "previous": run.previous,
        }
        entry = {k: v for k, v in entry.items() if v is not None}
        new_status["lastRun"] = entry
        history = [h for h in raw_status.get("history") or [] if h.get("name") != run.name]
        new_status["history"] = [*history, entry][-STATUS_HISTORY_LENGTH:]

    old_conditions: list[JSON] = raw_status.get("conditions") or []
    kept = [c for c in old_conditions if c.get("type") not in (
        ScheduleConditionType.RUN_STARTED, ScheduleConditionType.SCHEDULE_VALID)]  # fmt: skip
    prev_started = next(
        (c for c in old_conditions if c.get("type") == ScheduleConditionType.RUN_STARTED), None
    )
    if reason == ScheduleReason.NOT_DUE and prev_started is not None:
        # A pass that only looked keeps the last decision (and why) visible.
        started_cond = prev_started
    else:
        started_cond = _condition(
            old_conditions, ScheduleConditionType.RUN_STARTED,
            "True" if run is not None else "False", reason, message, stamp, generation,
        )  # fmt: skip
        new_status["reason"], new_status["message"] = str(reason), message
    if unreadable is not None:
        valid = ("False", unreadable_reason, unreadable)
        prev_valid = next(
            (c for c in old_conditions if c.get("type") == ScheduleConditionType.SCHEDULE_VALID),
            {},
        )
        if prev_valid.get("message") != unreadable:  # an Event when it starts or changes
            events.append((str(unreadable_reason), unreadable))
    else:
        valid = ("True", ScheduleReason.VALID, "the schedule can be evaluated")
    valid_cond = _condition(old_conditions, ScheduleConditionType.SCHEDULE_VALID, *valid,
                            stamp, generation)  # fmt: skip
    new_status["conditions"] = [*kept, started_cond, valid_cond]

    # nextCheckTime alone changes every pass: no write for it.
    if {k for k, v in new_status.items() if raw_status.get(k) != v} - {"nextCheckTime"}:
        _write(kube, obj, new_status)
    for ev_reason, ev_message in events:
        if (ev_reason, ev_message) == (raw_status.get("reason"), raw_status.get("message")):
            continue  # the same refusal as last pass: one Event for it
        kind = "Warning" if ev_reason in WARNING_REASONS else "Normal"
        log.info("schedule %s: %s", ev_reason, ev_message)
        kube.post_event(obj, kind, ev_reason, ev_message, COMPONENT, settings.identity)
    return wait
