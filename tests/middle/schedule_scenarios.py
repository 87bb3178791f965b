"""FineTuneSchedule passes (`schedules.handle_schedule`) over a FakeKube and an in-memory S3:
the helpers of tests/middle/test_schedule_passes.py, and `exercise_schedules`, which makes
every request the schedule code makes, for the chart's RBAC check (test_chart_rbac.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fakekube import FakeKube
from kubetune_operator.schedules import handle_schedule
from kubetune_operator.settings import OperatorSettings
from scenarios import job_spec

NS = "team-a"
SCHED = "nightly"
T0 = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)

JSON = dict[str, Any]


class MemS3:
    """head_object and list_objects_v2 over a dict of key -> ETag."""

    def __init__(self, objects: dict[str, str] | None = None) -> None:
        self.objects = objects or {}
        self.calls = 0

    def head_object(self, Bucket: str, Key: str) -> JSON:
        self.calls += 1
        if f"{Bucket}/{Key}" not in self.objects:
            err = Exception("404")
            err.response = {"Error": {"Code": "404"}}  # type: ignore[attr-defined]
            raise err
        return {"ETag": self.objects[f"{Bucket}/{Key}"], "ContentLength": 1}

    def get_paginator(self, name: str) -> Any:
        s3 = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str) -> list[JSON]:
                s3.calls += 1
                keys = sorted(k for k in s3.objects if k.startswith(f"{Bucket}/{Prefix}"))
                return [{"Contents": [{"Key": k.split("/", 1)[1], "ETag": s3.objects[k],
                                       "Size": 1} for k in keys]}]  # fmt: skip

        return Pages()


def schedule(**spec: Any) -> JSON:
    body: JSON = {
        "trigger": {"datasetChange": {"intervalSeconds": 10}},
        "template": {
            "metadata": {"labels": {"team": "a"}},
            "spec": job_spec(dataset={"s3Uri": "s3://data/train/"}),  # a prefix: changes trigger
        },
    }
    body.update(spec)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSchedule",
        "metadata": {"name": SCHED, "namespace": NS, "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": body,
    }  # fmt: skip


# What the platform lets team-a's schedules watch, unless a test sets schedule_watch_prefixes.
WATCH = {NS: ["s3://data/"]}


def tick(kube: FakeKube, settings: OperatorSettings, s3: MemS3, now: datetime) -> float | None:
    if not settings.schedule_watch_prefixes:
        settings = settings.model_copy(update={"schedule_watch_prefixes": WATCH})
    return handle_schedule(kube, settings, NS, SCHED, now=now, s3=s3)


def changed_after_baseline(kube: FakeKube, settings: OperatorSettings, **spec: Any) -> MemS3:
    """A schedule watching data/train/, its first pass done (the baseline fingerprint), and the
    data changed since: the next check starts a run."""
    s3 = MemS3({"data/train/a.jsonl": '"a"'})
    kube.put(schedule(**spec))
    tick(kube, settings, s3, T0)
    s3.objects["data/train/a.jsonl"] = '"a2"'
    return s3


def status(kube: FakeKube) -> JSON:
    obj = kube.find("FineTuneSchedule", NS, SCHED)
    assert obj is not None
    return dict(obj.get("status") or {})


def runs(kube: FakeKube) -> list[str]:
    return sorted(
        o["metadata"]["name"]
        for o in kube.all("FineTuneJob", NS)
        if (o["metadata"].get("labels") or {}).get("kubetune.io/schedule") == SCHED
    )


def finish(kube: FakeKube, name: str, phase: str = "Succeeded") -> None:
    """The FineTuneJob reconcile marked the run finished."""
    kube.edit("FineTuneJob", NS, name, {"status": {"phase": phase}})


def exercise_schedules(settings: OperatorSettings) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every request the schedule code makes: a baseline, a change
    that starts a run, one held by Forbid, one that replaces (Replace), history pruning, a run
    name taken by someone else, and the resync's list."""
    seen: set[tuple[str, str, str]] = set()
    kube, s3 = FakeKube(), MemS3({"data/train/a.jsonl": '"a"'})
    kube.put(schedule(concurrencyPolicy="Replace", successfulJobsHistoryLimit=0))
    t = T0
    tick(kube, settings, s3, t)  # baseline
    s3.objects["data/train/b.jsonl"] = '"b"'
    t += timedelta(seconds=10)
    tick(kube, settings, s3, t)  # a run
    s3.objects["data/train/c.jsonl"] = '"c"'
    t += timedelta(seconds=10)
    tick(kube, settings, s3, t)  # replaces it
    for name in runs(kube):
        finish(kube, name)
    t += timedelta(seconds=10)
    tick(kube, settings, s3, t)  # prunes (limit 0)
    assert kube.list_schedules([]) and kube.list_schedules([NS])
    seen |= kube.verbs()
    return seen
