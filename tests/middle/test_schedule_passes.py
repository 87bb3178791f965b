"""FineTuneSchedule passes over a FakeKube and an in-memory S3: the I/O around the pure
decision (kubetune_operator.schedules): what is created, deleted and written, crash recovery,
status and conditions, and the one-timer-per-schedule queue."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from fakekube import Crash, FakeKube
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.workqueue import WorkQueue
from schedule_scenarios import (
    NS,
    SCHED,
    T0,
    MemS3,
    changed_after_baseline,
    finish,
    runs,
    schedule,
    status,
    tick,
)

S = timedelta(seconds=1)


def _cond(kube: FakeKube, type_: str) -> dict[str, Any]:
    return next(c for c in status(kube)["conditions"] if c["type"] == type_)


def test_a_data_change_starts_exactly_one_run_with_lineage(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    s3 = MemS3({"data/train/a.jsonl": '"a"'})
    fake_kube.put(schedule())
    assert tick(fake_kube, operator_settings, s3, T0) == 10
    st = status(fake_kube)
    assert st["reason"] == "DatasetBaseline" and runs(fake_kube) == []
    assert st["datasetFingerprint"].startswith("sha256:")
    # unchanged over several checks: nothing; passes between checks read no S3
    for i in range(1, 4):
        tick(fake_kube, operator_settings, s3, T0 + 10 * i * S)
        calls = s3.calls
        tick(fake_kube, operator_settings, s3, T0 + (10 * i + 3) * S)
        assert s3.calls == calls
    assert runs(fake_kube) == [] and status(fake_kube)["reason"] == "DatasetUnchanged"
    assert _cond(fake_kube, "RunStarted")["status"] == "False"

    s3.objects["data/train/b.jsonl"] = '"b"'
    tick(fake_kube, operator_settings, s3, T0 + 40 * S)
    tick(fake_kube, operator_settings, s3, T0 + 50 * S)  # the same data again: no second run
    assert len(runs(fake_kube)) == 1
    first = runs(fake_kube)[0]
    st = status(fake_kube)
    assert st["lastRun"]["name"] == first and st["lastRun"]["trigger"] == "DatasetChange"
    assert st["active"] == [first] and [h["name"] for h in st["history"]] == [first]
    job = fake_kube.find("FineTuneJob", NS, first)
    assert job is not None
    assert job["metadata"]["labels"] == {"team": "a", "kubetune.io/schedule": SCHED}
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSchedule"
    assert "kubetune.io/previous-run" not in job["metadata"]["annotations"]

    finish(fake_kube, first)
    s3.objects["data/train/c.jsonl"] = '"c"'
    tick(fake_kube, operator_settings, s3, T0 + 60 * S)
    second = next(n for n in runs(fake_kube) if n != first)
    job = fake_kube.find("FineTuneJob", NS, second)
    assert job is not None
    assert job["metadata"]["annotations"]["kubetune.io/previous-run"] == first
    assert status(fake_kube)["history"][-1]["previous"] == first


def test_a_crash_between_create_and_status_creates_nothing_twice(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    s3 = changed_after_baseline(fake_kube, operator_settings, concurrencyPolicy="Replace")
    fake_kube.crash_on("patch", "finetuneschedules/status")
    with pytest.raises(Crash):
        tick(fake_kube, operator_settings, s3, T0 + 10 * S)
    assert len(runs(fake_kube)) == 1
    tick(fake_kube, operator_settings, s3, T0 + 11 * S)  # a restart: the pass again
    assert len(runs(fake_kube)) == 1  # neither a second run nor a Replace of itself
    st = status(fake_kube)
    assert st["lastRun"]["name"] == runs(fake_kube)[0] and st["reason"] == "DatasetChanged"


def test_forbid_holds_while_a_run_is_active(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    s3 = changed_after_baseline(fake_kube, operator_settings)
    tick(fake_kube, operator_settings, s3, T0 + 10 * S)
    [first] = runs(fake_kube)
    s3.objects["data/train/a.jsonl"] = '"a3"'
    for i in (2, 3, 4):
        tick(fake_kube, operator_settings, s3, T0 + 10 * i * S)
        assert runs(fake_kube) == [first]
        assert status(fake_kube)["reason"] == "ForbidConcurrent"
    finish(fake_kube, first, "Failed")
    tick(fake_kube, operator_settings, s3, T0 + 50 * S)
    assert len(runs(fake_kube)) == 2 and status(fake_kube)["reason"] == "DatasetChanged"


def test_replace_and_history_limits_delete_runs(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    s3 = MemS3({"data/train/a.jsonl": '"a"'})
    fake_kube.put(schedule(concurrencyPolicy="Replace", successfulJobsHistoryLimit=1))
    tick(fake_kube, operator_settings, s3, T0)
    names = []
    for i in range(1, 4):
        s3.objects["data/train/a.jsonl"] = f'"a{i}"'
        tick(fake_kube, operator_settings, s3, T0 + 10 * i * S)
        names.append(status(fake_kube)["lastRun"]["name"])
    assert runs(fake_kube) == [names[-1]]  # each replaced the one before
    assert status(fake_kube)["reason"] == "Replaced"
    # Allow: runs pile up; history limit 1 keeps the newest succeeded one
    fake_kube.edit("FineTuneSchedule", NS, SCHED, {"spec": {"concurrencyPolicy": "Allow"}})
    for i in range(4, 6):
        s3.objects["data/train/a.jsonl"] = f'"a{i}"'
        tick(fake_kube, operator_settings, s3, T0 + 10 * i * S)
    assert len(runs(fake_kube)) == 3
    for name in runs(fake_kube):
        finish(fake_kube, name)
    tick(fake_kube, operator_settings, s3, T0 + 60 * S)
    assert runs(fake_kube) == [status(fake_kube)["lastRun"]["name"]]


def test_a_bad_cron_value_is_a_condition_naming_the_field(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(schedule(schedule="61 * * * *"))
    assert tick(fake_kube, operator_settings, MemS3(), T0) is None
    cond = _cond(fake_kube, "ScheduleValid")
    assert cond["status"] == "False" and cond["reason"] == "InvalidSchedule"
    assert cond["message"].startswith("spec.schedule: '61 * * * *' is not a valid cron")
    assert runs(fake_kube) == []
    events = [e for e in fake_kube.all("Event", NS) if e["reason"] == "InvalidSchedule"]
    assert len(events) == 1
    tick(fake_kube, operator_settings, MemS3(), T0 + S)  # no second Event for the same
    assert len([e for e in fake_kube.all("Event", NS) if e["reason"] == "InvalidSchedule"]) == 1


def test_unreadable_data_is_a_condition_without_credentials(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(schedule())
    tick(fake_kube, operator_settings, MemS3({}), T0)
    cond = _cond(fake_kube, "ScheduleValid")
    assert (cond["status"], cond["reason"]) == ("False", "DatasetUnreadable")
    assert cond["message"] == "nothing under s3://data/train/ (no object and no shard)"
    assert runs(fake_kube) == []


@pytest.mark.parametrize(
    ("trigger", "field", "uri"),
    [
        ({"intervalSeconds": 10}, "spec.template.spec.dataset.s3Uri", "s3://data/train/"),
        ({"s3Uri": "s3://data-b/team-b/"}, "spec.trigger.datasetChange.s3Uri",
         "s3://data-b/team-b/"),
    ],
)  # fmt: skip
def test_data_outside_the_watch_prefixes_is_never_read(
    fake_kube: FakeKube,
    operator_settings: OperatorSettings,
    trigger: dict[str, Any],
    field: str,
    uri: str,
) -> None:
    fake_kube.put(schedule(trigger={"datasetChange": trigger}))
    settings = operator_settings.model_copy(
        update={"schedule_watch_prefixes": {"*": ["s3://data/{namespace}/"], "team-b": []}}
    )
    s3 = MemS3({"data/train/a.jsonl": '"a"', "data-b/team-b/a.jsonl": '"b"'})
    tick(fake_kube, settings, s3, T0)
    tick(fake_kube, settings, s3, T0 + 10 * S)
    assert s3.calls == 0  # not a HEAD, not a listing
    cond = _cond(fake_kube, "ScheduleValid")
    assert (cond["status"], cond["reason"]) == ("False", "DatasetNotAllowed")
    assert cond["message"].startswith(f"{field}: {uri} is outside the S3 prefixes")
    assert "(s3://data/team-a/)" in cond["message"]
    assert "schedules.watchPrefixes" in cond["message"]
    assert "datasetFingerprint" not in status(fake_kube) or not status(fake_kube)[
        "datasetFingerprint"]  # fmt: skip
    events = [e for e in fake_kube.all("Event", NS) if e["reason"] == "DatasetNotAllowed"]
    assert len(events) == 1 and events[0]["type"] == "Warning"


def test_a_name_taken_by_another_object_is_reported_not_adopted(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(schedule(schedule="0 * * * *", trigger=None))
    one_am = (int(T0.timestamp()) // 3600 + 1) * 60  # the run's name: its cron time in minutes
    fake_kube.put({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                   "metadata": {"name": f"{SCHED}-{one_am}", "namespace": NS}, "spec": {}})  # fmt: skip
    tick(fake_kube, operator_settings, MemS3(), T0 + 3600 * S)
    st = status(fake_kube)
    assert st["reason"] == "RunNameTaken" and "lastRun" not in st
    assert "lastScheduleTime" not in st or st["lastScheduleTime"] is None


def test_one_timer_per_schedule() -> None:
    """Passes caused by events each say when the next is due; the queue keeps one timer."""
    calls: list[Any] = []

    async def handler(key: Any) -> float | None:
        calls.append(key)
        return None

    async def scenario() -> None:
        q = WorkQueue(handler, one_timer=True)
        for _ in range(50):
            q.request((NS, SCHED), after=0.05)
        assert len(q._timers) == 1
        await asyncio.sleep(0.2)
        assert calls == [(NS, SCHED)]
        await q.close()

    asyncio.run(scenario())


def test_schedule_events_queue_spec_changes_not_status_writes(
    fake_kube: FakeKube, operator_settings: OperatorSettings, monkeypatch: Any
) -> None:
    """The schedule's own status writes must not loop back into passes (its timer brings the
    next one); a new schedule, a spec change and a run's event do queue one."""
    from kubetune_operator import handlers
    from kubetune_operator.handlers import Runtime

    runtime = Runtime(operator_settings, kube=fake_kube)
    monkeypatch.setattr(handlers, "_runtime", runtime)
    queued: list[Any] = []
    monkeypatch.setattr(runtime, "request_schedule", lambda ns, name: queued.append((ns, name)))
    written = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2}}
    edited = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}

    async def scenario() -> None:
        await handlers.schedule_event(type="MODIFIED", namespace=NS, name=SCHED, body=written)
        assert queued == []
        await handlers.schedule_event(type="MODIFIED", namespace=NS, name=SCHED, body=edited)
        await handlers.schedule_event(type=None, namespace=NS, name=SCHED, body=written)
        await handlers.schedule_event(type="DELETED", namespace=NS, name=SCHED, body=edited)
        assert queued == [(NS, SCHED), (NS, SCHED)]
        await handlers.finetunejob_event(type="MODIFIED", namespace=NS, name="run-1",
                                         labels={"kubetune.io/schedule": SCHED})  # fmt: skip
        assert queued[-1] == (NS, SCHED) and len(queued) == 3
        await runtime.queue.close()
        await runtime.schedules.close()

    asyncio.run(scenario())


def test_a_run_the_api_server_refuses_is_reported_once_and_retried(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    from kubetune_operator.k8s import ApiError

    s3 = changed_after_baseline(fake_kube, operator_settings)

    def refuse(call: Any) -> None:
        if (call.verb, call.resource) == ("create", "finetunejobs"):
            raise ApiError(422, "Unprocessable Entity", '{"message": "metadata.labels: Invalid"}')

    fake_kube.on_request = refuse
    for i in (1, 2):
        tick(fake_kube, operator_settings, s3, T0 + 10 * i * S)
    st = status(fake_kube)
    assert st["reason"] == "InvalidTemplate" and "metadata.labels: Invalid" in st["message"]
    assert runs(fake_kube) == [] and "lastRun" not in st
    refused = [e for e in fake_kube.all("Event", NS) if e["reason"] == "InvalidTemplate"]
    assert len(refused) == 1
    fake_kube.on_request = None  # fixed: the change still starts its run
    tick(fake_kube, operator_settings, s3, T0 + 30 * S)
    assert len(runs(fake_kube)) == 1 and status(fake_kube)["reason"] == "DatasetChanged"
