"""status.py: observed Job + Pods + previous status -> new status and Events (pure)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from fakekube import merge
from kubetune_operator import status
from kubetune_operator.runs import Decision
from statusbuilders import GOOD, NOW, T0, apply, cond, derive, ftj, job, pod

# --------------------------------------------------------------------------- the first run


def test_new_run_is_recorded_with_an_event() -> None:
    out = derive(ftj(), Decision(current_run=1, start=1), job(), [])
    st = out.status
    assert st["run"] == 1 and st["jobName"] == "j-run-1" and st["specHash"] == "hash1"
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1
    assert st["startTime"] == "2026-11-23T10:00:00Z"
    assert cond(st, "Ready")["status"] == "False"
    assert cond(st, "Reconciling")["status"] == "True"
    assert [e.reason for e in out.events] == ["Created", "WaitingForPod"]


def test_unschedulable_is_surfaced_in_the_condition_message() -> None:
    sched = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}  # fmt: skip
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Pending"}
    out = derive(
        ftj(prev), Decision(current_run=1), job(active=1), [pod(phase="Pending", scheduled=sched)]
    )
    st = out.status
    assert st["phase"] == "Pending"
    ready = cond(st, "Ready")
    assert ready["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert out.events[-1].type == "Warning" and out.events[-1].reason == "Unschedulable"


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [
        ({"reason": "ImagePullBackOff", "message": "Back-off pulling image x"}, "ImagePullBackOff"),
        ({"reason": "ErrImagePull"}, "ImagePullBackOff"),
        ({"reason": "ContainerCreating"}, "ContainerCreating"),
        ({"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'},
         "CreateContainerConfigError"),
    ],
)  # fmt: skip
def test_waiting_reasons(waiting: dict[str, Any], reason: str) -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Pending"}
    out = derive(
        ftj(prev), Decision(current_run=1), job(active=1), [pod(phase="Pending", waiting=waiting)]
    )
    assert out.status["phase"] == "Pending"
    assert cond(out.status, "Ready")["reason"] == reason


def test_running() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Pending"}
    out = derive(ftj(prev), Decision(current_run=1), job(active=1), [pod()])
    st = out.status
    assert st["phase"] == "Running"
    assert cond(st, "Running")["status"] == "True"
    assert cond(st, "Running")["reason"] == "Training"
    assert st["attempts"] == 1


# ------------------------------------------------------------------------------- outcomes


def test_succeeded_with_artifacts_and_metrics() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running"}
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed",
                                              "message": json.dumps(GOOD)})  # fmt: skip
    out = derive(
        ftj(prev), Decision(current_run=1), job(cond=("Complete", ""), succeeded=1), [done]
    )
    st = out.status
    assert st["phase"] == "Succeeded"
    assert st["artifacts"]["mergedModelUri"] == "s3://b/o/ns/j/run-1/merged/"
    assert st["artifacts"]["manifestSha256"] == "ab" * 32
    assert st["metrics"] == {"eval_loss": 1.25, "train_loss": 1.5}
    assert st["completionTime"] == T0
    for t in ("Ready", "Succeeded"):
        assert cond(st, t)["status"] == "True" and cond(st, t)["reason"] == "Completed"
    for t in ("Running", "Failed", "Reconciling", "Stalled", "Suspended"):
        assert cond(st, t)["status"] == "False"
    assert out.events[-1].reason == "Completed"


def test_exit_zero_without_a_result_is_not_success() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running"}
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    out = derive(ftj(prev), Decision(current_run=1), job(cond=("Complete", "")), [done])
    assert out.status["phase"] == "Failed"
    assert cond(out.status, "Failed")["reason"] == "ArtifactsMissing"
    bare = dict(GOOD, artifacts={})
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(bare)})
    out = derive(ftj(prev), Decision(current_run=1), job(cond=("Complete", "")), [done])
    assert cond(out.status, "Failed")["reason"] == "ArtifactsMissing"


def test_non_retryable_trainer_error_fails_with_its_reason() -> None:
    msg = {"outcome": "Failed", "reason": "DatasetError", "retryable": False,
           "message": "s3://data/missing.jsonl: no such key", "artifacts": {}, "metrics": {}}  # fmt: skip
    p = pod(
        phase="Failed", terminated={"exitCode": 11, "reason": "Error", "message": json.dumps(msg)}
    )
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running"}
    out = derive(
        ftj(prev), Decision(current_run=1), job(cond=("Failed", "PodFailurePolicy"), failed=1), [p]
    )
    st = out.status
    assert st["phase"] == "Failed"
    failed = cond(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "DatasetError"
    assert "no such key" in failed["message"]
    assert cond(st, "Stalled")["status"] == "True"
    assert cond(st, "Reconciling")["status"] == "False"
    assert out.events[-1].type == "Warning" and out.events[-1].reason == "DatasetError"


def test_exit_code_alone_names_the_reason() -> None:
    p = pod(
        phase="Failed", terminated={"exitCode": 12, "reason": "Error", "message": "Traceback..."}
    )
    out = derive(
        ftj({"run": 1}), Decision(current_run=1), job(cond=("Failed", "PodFailurePolicy")), [p]
    )
    assert cond(out.status, "Failed")["reason"] == "ModelError"


def test_oom_killed() -> None:
    p = pod(phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    out = derive(ftj({"run": 1}), Decision(current_run=1),
                 job(cond=("Failed", "BackoffLimitExceeded"), failed=3), [p])  # fmt: skip
    failed = cond(out.status, "Failed")
    assert failed["reason"] == "OOMKilled" and "memory limit" in failed["message"]


def test_killed_by_signal() -> None:
    p = pod(phase="Failed", terminated={"exitCode": 137, "reason": "Error"})
    out = derive(ftj({"run": 1}), Decision(current_run=1),
                 job(cond=("Failed", "BackoffLimitExceeded"), failed=1), [p])  # fmt: skip
    assert cond(out.status, "Failed")["reason"] == "PodKilled"


def test_retryable_failures_until_backoff_limit() -> None:
    p = pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message": "boom"})
    out = derive(ftj({"run": 1}), Decision(current_run=1),
                 job(cond=("Failed", "BackoffLimitExceeded"), failed=3), [p])  # fmt: skip
    failed = cond(out.status, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "3 failed attempt(s)" in failed["message"] and "TrainerError" in failed["message"]


def test_retrying_between_attempts() -> None:
    bad = pod("j-run-1-aaaaa", phase="Failed", terminated={"exitCode": 1})
    new = pod("j-run-1-bbbbb")
    out = derive(ftj({"run": 1, "phase": "Running"}), Decision(current_run=1),
                 job(failed=1, active=1), [bad, new])  # fmt: skip
    assert out.status["phase"] == "Running"
    assert cond(out.status, "Running")["reason"] == "Retrying"
    assert out.status["attempts"] == 2


def test_deadline_exceeded() -> None:
    out = derive(ftj({"run": 1, "phase": "Running"}), Decision(current_run=1),
                 job(cond=("Failed", "DeadlineExceeded"), activeDeadlineSeconds=60), [])  # fmt: skip
    failed = cond(out.status, "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "60s" in failed["message"]


# ------------------------------------------------------------------------------- suspend


def test_suspended_by_the_user() -> None:
    f = ftj({"run": 1, "phase": "Running"}, runPolicy={"suspend": True})
    out = derive(f, Decision(current_run=1), job(suspend=True), [])
    st = out.status
    assert st["phase"] == "Suspended"
    assert cond(st, "Suspended")["reason"] == "Suspended"
    # Not done, not failed: kstatus reads InProgress, so a Flux `wait` does not move on to
    # what depends on the model (docs/gitops.md).
    assert cond(st, "Reconciling")["status"] == "True"
    assert cond(st, "Reconciling")["reason"] == "Suspended"
    assert cond(st, "Stalled")["status"] == "False"
    assert cond(st, "Failed")["status"] == "False"


def test_suspended_by_someone_else_is_preempted_never_failed() -> None:
    f = ftj({"run": 1, "phase": "Running"})
    out = derive(f, Decision(current_run=1), job(suspend=True), [])
    st = out.status
    assert st["phase"] == "Suspended"
    assert cond(st, "Suspended")["reason"] == "Preempted"
    assert cond(st, "Failed")["status"] == "False"


def test_resume_event() -> None:
    f = ftj({"run": 1, "phase": "Suspended"})
    out = derive(
        f,
        Decision(current_run=1),
        job(active=1),
        [pod(phase="Pending", waiting={"reason": "ContainerCreating"})],
    )
    assert "Resumed" in [e.reason for e in out.events]


# -------------------------------------------------------------------- gone Jobs, restarts


def test_finished_run_whose_job_ttl_removed_stays_finished() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Succeeded", "artifacts": {"adapterUri": "s3://x/a/"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Completed",
                            "message": "", "lastTransitionTime": T0}]}  # fmt: skip
    out = derive(ftj(prev), Decision(current_run=1), None, [])
    assert out.status["phase"] == "Succeeded"
    assert out.status["artifacts"] == {"adapterUri": "s3://x/a/"}
    assert out.events == []


def test_job_deleted_while_running_fails_without_restarting() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running"}
    out = derive(ftj(prev), Decision(current_run=1), None, [])
    assert out.status["phase"] == "Failed"
    assert cond(out.status, "Failed")["reason"] == "JobDeleted"


def test_restart_moves_the_run_into_history_and_clears_progress() -> None:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running", "runGeneration": 1,
            "specHash": "hash1", "startTime": T0, "gpuSeconds": 600.0,
            "progress": {"run": 1, "step": 5, "totalSteps": 10}, "progressSummary": "5/10 (50%)"}  # fmt: skip
    f = ftj(prev, generation=2)
    out = derive(f, Decision(current_run=2, start=2, supersede=True, delete=["j-run-1"]),
                 job(2), [])  # fmt: skip
    st = out.status
    assert st["run"] == 2 and st["jobName"] == "j-run-2" and st["runGeneration"] == 2
    (h,) = st["history"]
    assert h["run"] == 1 and h["outcome"] == "Superseded" and h["reason"] == "Restarted"
    assert h["gpuSeconds"] == 600.0 and st["gpuSeconds"] == 600.0
    assert out.clear_progress and "progressSummary" not in st
    assert "Restarted" in [e.reason for e in out.events]
    patch = status.status_patch(f, out)
    assert patch is not None and patch["status"]["progress"] is None


def running(generation: int, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob whose run 1 (generation 1) is training, as the operator recorded it."""
    f = ftj({}, **spec)
    f = apply(f, derive(f, Decision(current_run=1, start=1), job(active=1), [pod()]))
    f["metadata"]["generation"] = generation
    return f


def test_queue_records_the_waiting_generation_once() -> None:
    f = running(2)
    d = Decision(current_run=1, queued_generation=2)
    out = derive(f, d, job(active=1), [pod()])
    assert out.status["queuedGeneration"] == 2
    assert [e.reason for e in out.events] == ["Queued"]
    assert cond(out.status, "Reconciling")["reason"] == "Queued"
    again = derive(apply(f, out), d, job(active=1), [pod()])
    assert again.events == [] and status.status_patch(apply(f, out), again) is None


def test_ignore_records_and_tells() -> None:
    f = running(2)
    out = derive(f, Decision(current_run=1, ignored=True), job(active=1), [pod()])
    assert out.status["observedGeneration"] == 2 and out.status["runGeneration"] == 1
    assert [e.reason for e in out.events] == ["SpecChangeIgnored"]
    assert "Ignore" in out.status["message"]


def test_invalid_spec_without_a_run_fails_and_stalls() -> None:
    out = derive(ftj(), Decision(current_run=0), None, [],
                 problem=("ServiceAccountNotAllowed", "not allowed"))  # fmt: skip
    st = out.status
    assert st["phase"] == "Failed"
    assert cond(st, "Stalled")["status"] == "True"
    assert cond(st, "Failed")["reason"] == "ServiceAccountNotAllowed"
    assert "run" not in st


# ------------------------------------------------------------------ determinism, progress


def test_second_derivation_changes_nothing() -> None:
    f = ftj({}, generation=1)
    steps = [
        (Decision(current_run=1, start=1), job(), []),
        (Decision(current_run=1), job(active=1), [pod()]),
        (Decision(current_run=1), job(cond=("Complete", ""), succeeded=1),
         [pod(phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(GOOD)})]),
    ]  # fmt: skip
    for d, j, pods in steps:
        out = derive(f, d, j, pods)
        f = apply(f, out)
        later = derive(
            f, Decision(current_run=d.current_run), j, pods, now=NOW + timedelta(seconds=30)
        )
        assert status.status_patch(f, later) is None, f"not stable after {f['status']['phase']}"
        assert later.events == []


def test_progress_is_never_written_only_summarised() -> None:
    prog = {"run": 1, "step": 3, "totalSteps": 10, "loss": 2.0}
    f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Running", "progress": prog})
    out = derive(f, Decision(current_run=1), job(active=1), [pod()])
    assert "progress" not in out.status and not out.clear_progress
    assert out.status["progressSummary"] == "3/10 (30%)"
    patch = status.status_patch(f, out)
    assert patch is not None and "progress" not in patch["status"]
    # Progress of another run (a straggler pod of a superseded run) is cleared.
    f["status"]["progress"]["run"] = 0 + 7
    assert derive(f, Decision(current_run=1), job(active=1), [pod()]).clear_progress


def test_condition_times_move_only_on_transitions() -> None:
    f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Pending"})
    f = apply(f, derive(f, Decision(current_run=1), job(active=1), [pod()]))
    t_running = cond(f["status"], "Running")["lastTransitionTime"]
    later = derive(f, Decision(current_run=1), job(active=1), [pod()], now=NOW + timedelta(hours=1))
    assert cond(later.status, "Running")["lastTransitionTime"] == t_running


def test_gpu_seconds_from_pod_run_times() -> None:
    done = pod(phase="Failed", gpus=2, terminated={"exitCode": 1})  # 10 minutes x 2 GPUs
    running = pod("j-run-1-b", gpus=2, started="2026-11-23T11:50:00Z")  # 10 min -> 600 s x 2
    out = derive(ftj({"run": 1}), Decision(current_run=1), job(failed=1, active=1), [done, running])
    assert out.status["gpuSeconds"] == pytest.approx(1200 + 1200)
    # Between accounting steps a running pod adds nothing, so nothing is patched.
    out2 = derive(ftj({"run": 1}), Decision(current_run=1), job(failed=1, active=1), [done, running],
                  now=NOW + timedelta(seconds=100))  # fmt: skip
    assert out2.status["gpuSeconds"] == out.status["gpuSeconds"]


def test_merge_patch() -> None:
    old = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "d": 4}
    new = {"a": 1, "b": {"x": 1, "z": 3}, "c": [2]}
    patch = status.merge_patch(old, new)
    assert patch == {"b": {"y": None, "z": 3}, "c": [2], "d": None}
    assert merge(old, patch) == new
    assert status.merge_patch(new, new) is None


def test_finished_pod_before_the_job_completes_is_still_running() -> None:
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(GOOD)})
    out = derive(
        ftj({"run": 1, "phase": "Running"}), Decision(current_run=1), job(succeeded=1), [done]
    )
    assert out.status["phase"] == "Running"


def test_created_suspended() -> None:
    f = ftj({}, runPolicy={"suspend": True})
    out = derive(f, Decision(current_run=1, start=1), job(suspend=True), [])
    assert out.status["phase"] == "Suspended"
    assert cond(out.status, "Suspended")["reason"] == "Suspended"
