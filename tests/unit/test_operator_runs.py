"""runs.py: the spec hash and the run decisions (pure; no cluster)."""

from __future__ import annotations

import copy
from typing import Any

from kubetune_api.v1alpha1 import FineTuneJobSpec
from kubetune_operator import render, runs

UID = "uid-1"
BASE: dict[str, Any] = {
    "model": {"hubId": "org/model"},
    "dataset": {"s3Uri": "s3://data/train.jsonl"},
    "output": {"uri": "s3://bucket/out"},
}


def spec(**over: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(over)
    return raw


def h(raw: dict[str, Any]) -> str:
    return runs.spec_hash(FineTuneJobSpec.model_validate(raw))


def ftj(raw: dict[str, Any], generation: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": UID, "generation": generation},
        "spec": raw,
        "status": status,
    }


def job(run: int, spec_hash: str, *, done: str | None = None, suspend: str = "false",
        deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {
        "name": f"j-run-{run}",
        "labels": {render.LABEL_RUN: str(run)},
        "annotations": {render.ANN_SPEC_HASH: spec_hash, render.ANN_SUSPEND: suspend},
        "ownerReferences": [{"uid": UID}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"conditions": [{"type": done, "status": "True"}]} if done else {}
    return {"metadata": meta, "spec": {}, "status": status}


def test_hash_ignores_run_policy_and_explicit_defaults() -> None:
    base = h(spec())
    assert h(spec(runPolicy={"suspend": True, "onSpecChange": "Queue", "backoffLimit": 5})) == base
    assert h(spec(method={"type": "lora"}, hyperparameters={"epochs": 1.0})) == base
    assert h(spec(hyperparameters={"learningRate": 1e-4})) != base
    assert h(spec(resources={"gpus": 1})) != base
    assert h(spec(model={"hubId": "org/other"})) != base


def test_first_run() -> None:
    d = runs.decide(ftj(spec()), [], h(spec()), runnable=True)
    assert d.start == 1 and d.current_run == 1 and not d.supersede and d.delete == []


def test_nothing_when_not_runnable() -> None:
    d = runs.decide(ftj(spec()), [], h(spec()), runnable=False)
    assert d.start is None and d.current_run == 0


def test_identical_reapply_is_a_no_op() -> None:
    raw = spec()
    d = runs.decide(
        ftj(raw, run=1, specHash=h(raw), phase="Running"), [job(1, h(raw))], h(raw), True
    )
    assert d.start is None and d.current_run == 1 and d.suspend is None and not d.ignored


def test_ttl_removed_finished_run_never_restarts() -> None:
    raw = spec()
    f = ftj(raw, generation=2, run=1, specHash=h(raw), phase="Succeeded")
    d = runs.decide(f, [], h(raw), True)
    assert d.start is None and d.current_run == 1


def test_a_job_not_yet_in_status_is_adopted_not_recreated() -> None:
    # The operator created run 2 and was killed before recording it in the status.
    old, new = spec(), spec(hyperparameters={"learningRate": 1e-4})
    f = ftj(new, generation=2, run=1, specHash=h(old), phase="Running")
    d = runs.decide(f, [job(1, h(old)), job(2, h(new))], h(new), True)
    assert d.start is None and d.current_run == 2
    assert d.delete == ["j-run-1"]  # the superseded run must not keep running


def test_restart_supersedes_the_running_run() -> None:
    old, new = spec(), spec(hyperparameters={"learningRate": 1e-4})
    f = ftj(new, generation=2, run=1, specHash=h(old), phase="Running")
    d = runs.decide(f, [job(1, h(old))], h(new), True)
    assert d.start == 2 and d.supersede and d.delete == ["j-run-1"]


def test_restart_after_the_run_finished_keeps_the_finished_job() -> None:
    old, new = spec(), spec(hyperparameters={"learningRate": 1e-4})
    f = ftj(new, generation=2, run=1, specHash=h(old), phase="Succeeded")
    d = runs.decide(f, [job(1, h(old), done="Complete")], h(new), True)
    assert d.start == 2 and not d.supersede and d.delete == []


def test_queue_waits_for_the_running_run_then_starts() -> None:
    old = spec()
    new = spec(hyperparameters={"learningRate": 1e-4}, runPolicy={"onSpecChange": "Queue"})
    f = ftj(new, generation=3, run=1, specHash=h(old), phase="Running")
    d = runs.decide(f, [job(1, h(old))], h(new), True)
    assert d.start is None and d.queued_generation == 3 and d.delete == []
    # Run 1 ended: first its outcome is recorded, then run 2 starts.
    d = runs.decide(f, [job(1, h(old), done="Failed")], h(new), True)
    assert d.start is None and d.deferred and d.queued_generation == 3
    f["status"]["phase"] = "Failed"
    d = runs.decide(f, [job(1, h(old), done="Failed")], h(new), True)
    assert d.start == 2 and not d.supersede and d.queued_generation is None


def test_ignore_records_only() -> None:
    old = spec()
    new = spec(hyperparameters={"learningRate": 1e-4}, runPolicy={"onSpecChange": "Ignore"})
    f = ftj(new, generation=2, run=1, specHash=h(old), phase="Running")
    d = runs.decide(f, [job(1, h(old))], h(new), True)
    assert d.start is None and d.ignored and d.current_run == 1
    d = runs.decide(ftj(new, 2, run=1, specHash=h(old), phase="Succeeded"), [], h(new), True)
    assert d.start is None and d.ignored


def test_suspend_follows_user_intent_only() -> None:
    raw = spec(runPolicy={"suspend": True})
    f = ftj(raw, generation=2, run=1, specHash=h(raw), phase="Running")
    d = runs.decide(f, [job(1, h(raw), suspend="false")], h(raw), True)
    assert d.suspend is True and d.start is None
    # Already applied: nothing to do, whatever the Job's spec.suspend says now.
    d = runs.decide(f, [job(1, h(raw), suspend="true")], h(raw), True)
    assert d.suspend is None
    resume = spec(runPolicy={"suspend": False})
    d = runs.decide(
        ftj(resume, 3, run=1, specHash=h(raw)), [job(1, h(raw), suspend="true")], h(resume), True
    )
    assert d.suspend is False
    # An external suspend (Kueue) with unchanged intent is left alone.
    d = runs.decide(
        ftj(resume, 3, run=1, specHash=h(raw)), [job(1, h(raw), suspend="false")], h(resume), True
    )
    assert d.suspend is None


def test_jobs_being_deleted_are_not_deleted_again() -> None:
    old, new = spec(), spec(hyperparameters={"learningRate": 1e-4})
    f = ftj(new, generation=2, run=2, specHash=h(new), phase="Running")
    d = runs.decide(f, [job(1, h(old), deleting=True), job(2, h(new))], h(new), True)
    assert d.delete == [] and d.start is None


def test_ttl_deletes_finished_jobs_only_after_their_outcome_is_recorded() -> None:
    from datetime import UTC, datetime

    def done(run: int, at: str) -> dict[str, Any]:
        j = job(run, "h", done="Complete")
        j["status"]["conditions"][0]["lastTransitionTime"] = at
        return j

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    jobs = [done(1, "2026-01-01T11:00:00Z"), done(2, "2026-01-01T11:59:30Z")]
    # Run 2's outcome is not in the status yet: only run 1 (in history) may go.
    assert runs.expired_jobs(jobs, 2, False, 60, now) == (["j-run-1"], None)
    assert runs.expired_jobs(jobs, 2, True, 60, now) == (["j-run-1"], 30.0)
    assert runs.expired_jobs(jobs, 2, True, 0, now) == (["j-run-1", "j-run-2"], None)
    assert runs.expired_jobs(jobs, 2, True, None, now) == ([], None)
    running = job(3, "h")
    assert runs.expired_jobs([running], 3, False, 0, now) == ([], None)
