"""FineTuneSchedule decisions (kubetune_operator.schedule), branch by branch: what starts a
run, what holds or skips one and why, run names, lineage, history pruning, the data check
interval and the cron evaluation (time zones, macros, bad values naming the field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubetune_api.v1alpha1 import FineTuneScheduleSpec, FineTuneScheduleStatus, ScheduleReason
from kubetune_operator import schedule as sched
from kubetune_operator.schedule import Cron, Observed, decide

NAME = "nightly"
CREATED = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
TEMPLATE = {
    "spec": {
        "model": {"hubId": "org/model"},
        "dataset": {"s3Uri": "s3://data/train/"},
        "output": {"uri": "s3://bucket/out"},
    }
}
A, B = "sha256:aaa", "sha256:bbb"


def spec(**kw: Any) -> FineTuneScheduleSpec:
    return FineTuneScheduleSpec.model_validate({"template": TEMPLATE, **kw})


def status(**kw: Any) -> FineTuneScheduleStatus:
    return FineTuneScheduleStatus.model_validate(kw)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, second, tzinfo=UTC)


def run(s: FineTuneScheduleSpec, st: FineTuneScheduleStatus, now: datetime,
        fp: str | None = None, active: tuple[str, ...] = (),
        existing: frozenset[str] = frozenset()) -> sched.Decision:  # fmt: skip
    return decide(NAME, s, st, Observed(now, CREATED, fp, active, existing), Cron.of(s))


HOURLY = {"schedule": "0 * * * *"}
DATA = {"trigger": {"datasetChange": {"intervalSeconds": 10}}}


# ------------------------------------------------------------------------------ cron


def test_nothing_due_before_the_first_cron_time() -> None:
    d = run(spec(**HOURLY), status(), at(0, 30))
    assert d.reason == ScheduleReason.NOT_DUE and d.run is None
    assert d.next_run_time == at(1)


def test_a_cron_time_starts_one_run_named_by_its_minute() -> None:
    d = run(spec(**HOURLY), status(), at(1, 0, 5))
    assert d.reason == ScheduleReason.SCHEDULED and d.run is not None
    assert d.run.name == f"{NAME}-{int(at(1).timestamp()) // 60}"
    assert d.run.scheduled_time == at(1) and d.last_schedule_time == at(1)
    assert d.events == ["Scheduled"] and d.next_run_time == at(2)
    # recorded: the same time is not due again
    again = run(spec(**HOURLY), status(lastScheduleTime="2026-01-01T01:00:00Z"), at(1, 30))
    assert again.reason == ScheduleReason.NOT_DUE and again.run is None


def test_missed_times_start_one_run_for_the_latest() -> None:
    d = run(spec(**HOURLY), status(lastScheduleTime="2026-01-01T01:00:00Z"), at(5, 10))
    assert d.run is not None and d.run.scheduled_time == at(5)


def test_a_time_before_the_schedule_existed_is_not_due() -> None:
    d = run(spec(schedule="0 0 * * *"), status(), at(0, 5))  # created 00:00:30
    assert d.reason == ScheduleReason.NOT_DUE


def test_starting_deadline_skips_a_late_run() -> None:
    s = spec(**HOURLY, startingDeadlineSeconds=60)
    d = run(s, status(lastScheduleTime="2026-01-01T01:00:00Z"), at(2, 5))
    assert d.reason == ScheduleReason.MISSED_DEADLINE and d.run is None
    assert d.last_schedule_time == at(2)  # skipped for good
    assert d.events == ["MissedDeadline"]
    on_time = run(s, status(lastScheduleTime="2026-01-01T01:00:00Z"), at(2, 0, 30))
    assert on_time.reason == ScheduleReason.SCHEDULED


def test_time_zone_and_macros() -> None:
    s = spec(schedule="0 3 * * *", timeZone="Europe/Berlin")  # 03:00 CET = 02:00 UTC
    assert run(s, status(), at(1, 59)).reason == ScheduleReason.NOT_DUE
    d = run(s, status(), at(2, 0, 1))
    assert d.run is not None and d.run.scheduled_time == at(2)
    assert Cron.of(spec(schedule="@hourly")) == Cron("0 * * * *", Cron.of(spec(**HOURLY)).zone)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"schedule": "61 * * * *"}, "spec.schedule: '61 * * * *' is not a valid cron"),
        ({"schedule": "* * * * 9"}, "spec.schedule"),
        ({"schedule": "@daily", "timeZone": "Mars/Olympus"}, "spec.timeZone: unknown time zone"),
    ],
)
def test_bad_cron_values_name_the_field(kw: Any, fragment: str) -> None:
    with pytest.raises(sched.InvalidSchedule, match=fragment.replace("*", r"\*")):
        Cron.of(spec(**kw))


# ------------------------------------------------------------------------------ data


def test_the_first_fingerprint_is_a_baseline() -> None:
    d = run(spec(**DATA), status(), at(1), fp=A)
    assert d.reason == ScheduleReason.DATASET_BASELINE and d.run is None
    assert d.fingerprint == A


def test_an_unchanged_fingerprint_starts_nothing() -> None:
    d = run(spec(**DATA), status(datasetFingerprint=A), at(1), fp=A)
    assert d.reason == ScheduleReason.DATASET_UNCHANGED and d.run is None and d.fingerprint == A


def test_no_fingerprint_this_pass_is_not_due() -> None:
    d = run(spec(**DATA), status(datasetFingerprint=A), at(1), fp=None)
    assert d.reason == ScheduleReason.NOT_DUE and d.fingerprint == A


def test_a_changed_fingerprint_starts_one_run_with_lineage() -> None:
    last = {"name": f"{NAME}-dprev", "trigger": "DatasetChange", "reason": "DatasetChanged",
            "time": "2026-01-01T00:10:00Z"}  # fmt: skip
    d = run(spec(**DATA), status(datasetFingerprint=A, lastRun=last), at(1), fp=B)
    assert d.reason == ScheduleReason.DATASET_CHANGED and d.run is not None
    assert d.run.trigger == "DatasetChange" and d.run.fingerprint == B
    assert d.run.previous == f"{NAME}-dprev" and d.fingerprint == B
    assert d.run.name == sched.run_name(NAME, sched.ScheduleTrigger.DATASET_CHANGE, None, A, B)
    assert d.run.name.startswith(f"{NAME}-d") and len(d.run.name) == len(NAME) + 12
    # back to A later is another run (another name)
    back = run(spec(**DATA), status(datasetFingerprint=B), at(2), fp=A)
    assert back.run is not None and back.run.name != d.run.name


def test_cron_and_data_change_together_start_one_run() -> None:
    d = run(spec(**HOURLY, **DATA), status(datasetFingerprint=A), at(1, 0, 5), fp=B)
    assert d.run is not None and d.run.trigger == "Schedule"
    assert d.fingerprint == B and d.last_schedule_time == at(1)


# ------------------------------------------------------------------ policy and suspend


def test_suspend_starts_nothing_and_advances_nothing() -> None:
    d = run(spec(**HOURLY, **DATA, suspend=True), status(datasetFingerprint=A), at(3), fp=B)
    assert d.reason == ScheduleReason.SUSPENDED and d.run is None
    assert d.fingerprint == A and d.last_schedule_time is None


def test_forbid_holds_the_run_until_the_active_one_ends() -> None:
    st = status(datasetFingerprint=A)
    d = run(spec(**DATA), st, at(1), fp=B, active=(f"{NAME}-dold",))
    assert d.reason == ScheduleReason.FORBID_CONCURRENT and d.run is None
    assert d.fingerprint == A  # held: the change still counts after the active run ends
    assert f"{NAME}-dold" in d.message
    after = run(spec(**DATA), st, at(1, 1), fp=B)
    assert after.reason == ScheduleReason.DATASET_CHANGED


def test_replace_deletes_the_active_run() -> None:
    s = spec(**HOURLY, concurrencyPolicy="Replace")
    d = run(s, status(), at(1), active=("old-1", "old-2"))
    assert d.reason == ScheduleReason.REPLACED and d.delete == ("old-1", "old-2")
    assert d.run is not None and "replacing old-1, old-2" in d.message


def test_allow_runs_beside_the_active_one() -> None:
    d = run(spec(**HOURLY, concurrencyPolicy="Allow"), status(), at(1), active=("old",))
    assert d.reason == ScheduleReason.SCHEDULED and d.delete == ()


def test_a_run_stamped_by_a_pass_that_died_is_recorded_not_made_again() -> None:
    """Crash after create, before the status write: the next pass finds the run (which is
    active, and must not be replaced or block itself) and records it."""
    name = f"{NAME}-{int(at(1).timestamp()) // 60}"
    for policy in ("Forbid", "Replace"):
        s = spec(**HOURLY, concurrencyPolicy=policy)
        d = run(s, status(), at(1, 0, 10), active=(name,), existing=frozenset({name}))
        assert d.run is not None and d.run.exists and d.run.name == name
        assert d.delete == () and d.events == [] and d.last_schedule_time == at(1)


# ------------------------------------------------------------------ stamping, history


def test_stamp_copies_the_template_and_adds_lineage() -> None:
    s = spec(**DATA, template={**TEMPLATE, "metadata": {"labels": {"team": "a"},
                                                         "annotations": {"x": "y"}}})  # fmt: skip
    obj = {"metadata": {"name": NAME, "namespace": "ns", "uid": "u-1"}}
    r = sched.Run("nightly-d1", sched.ScheduleTrigger.DATASET_CHANGE,
                  ScheduleReason.DATASET_CHANGED, None, B, "nightly-d0")  # fmt: skip
    job = sched.stamp(obj, s, r)
    meta = job["metadata"]
    assert meta["labels"] == {"team": "a", sched.LABEL_SCHEDULE: NAME}
    assert meta["annotations"] == {
        "x": "y", sched.ANN_TRIGGER: "DatasetChange", sched.ANN_PREVIOUS: "nightly-d0",
        sched.ANN_FINGERPRINT: B,
    }  # fmt: skip
    assert meta["ownerReferences"][0]["uid"] == "u-1" and meta["ownerReferences"][0]["controller"]
    assert job["spec"] == s.template.spec.wire()
    assert "fromJob" not in job["spec"]["model"]  # lineage is not forced onto the model
    assert sched.owned_by(job, "u-1") and not sched.owned_by(job, "u-2")


def _job(name: str, phase: str | None, created: str) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": name, "creationTimestamp": created}}
    if phase:
        out["status"] = {"phase": phase}
    return out


def test_history_limits_keep_the_newest_finished_runs() -> None:
    jobs = [
        _job("s1", "Succeeded", "2026-01-01T01:00:00Z"),
        _job("f1", "Failed", "2026-01-01T02:00:00Z"),
        _job("s2", "Succeeded", "2026-01-01T03:00:00Z"),
        _job("f2", "Failed", "2026-01-01T04:00:00Z"),
        _job("s3", "Succeeded", "2026-01-01T05:00:00Z"),
        _job("r1", "Running", "2026-01-01T06:00:00Z"),
        _job("p1", None, "2026-01-01T07:00:00Z"),
    ]
    active, finished = sched.split_runs(reversed(jobs))
    assert active == ("r1", "p1")
    assert sched.to_prune(finished, 2, 1) == ["f1", "s1"]
    assert sched.to_prune(finished, 0, 0) == ["f1", "f2", "s1", "s2", "s3"]
    assert sched.to_prune(finished, 5, 5) == []


def test_the_data_check_interval() -> None:
    s = spec(**DATA)
    assert sched.dataset_check_due(s, status(), at(1))
    checked = status(datasetCheckedTime="2026-01-01T01:00:00Z")
    assert not sched.dataset_check_due(s, checked, at(1, 0, 5))
    assert sched.dataset_check_due(s, checked, at(1, 0, 10))
    assert not sched.dataset_check_due(spec(**HOURLY), status(), at(1))
    # the next pass: the sooner of the next cron time and the next data check
    assert sched.next_check(s, at(1), None, at(1, 0, 4)) == 6
    both = spec(**HOURLY, **DATA)
    assert sched.next_check(both, at(1, 59, 55), at(2), at(1, 59, 58)) == 2
    assert sched.next_check(spec(**HOURLY), None, None, at(1)) is None


def test_names_fit_a_finetunejob() -> None:
    longest = "x" * 40
    far = datetime(2200, 1, 1, tzinfo=UTC)
    assert len(sched.run_name(longest, sched.ScheduleTrigger.SCHEDULE, far, None, None)) <= 52
    assert len(sched.run_name(longest, sched.ScheduleTrigger.DATASET_CHANGE, None, A, B)) <= 52
