"""The staged status derivation: the rule table (runstate.py), the reason table (reasons.py),
the observations of a pod set (observe.py), the event diff (events.py) and runPolicy parsed
once (runs.policy_of)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import pytest
from kubetune_api.v1alpha1 import OnSpecChange, Reason
from kubetune_operator import events, observe, reasons, render, runs, runstate, status
from kubetune_operator.runs import Decision
from statusbuilders import GOOD, NOW, apply, derive, ftj, job, pod
from test_operator_podset import UNSCHEDULABLE, gjob, member

REASONS = {r.value for r in Reason}


def ctx(j: dict[str, Any] | None, pods: list[dict[str, Any]], previous: dict[str, Any] | None = None,
        suspend: bool = False, same_run: bool = True) -> runstate.Ctx:  # fmt: skip
    obs = observe.observe(j, pods, NOW) if j is not None else None
    return runstate.Ctx(obs, observe.Recorded.of(previous or {}), same_run, suspend)


def fired(c: runstate.Ctx) -> str:
    return runstate.evaluate(c)[0].name


def failed_pod(**term: Any) -> dict[str, Any]:
    return pod(phase="Failed", terminated={"exitCode": 1, **term})


def dry(j: dict[str, Any]) -> dict[str, Any]:
    j["metadata"]["annotations"][render.ANN_DRY_RUN] = "true"
    return j


DONE = pod(phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(GOOD)})
TERMINAL = {"phase": "Succeeded", "message": "done", "conditions": [
    {"type": "Ready", "status": "True", "reason": "Completed"}]}  # fmt: skip

# One situation per rule, in the table's order: each picks its own rule, so every rule is
# reachable and none is shadowed by an earlier one.
SITUATIONS: list[tuple[str, runstate.Ctx]] = [
    ("outcome recorded, Job gone", ctx(None, [], TERMINAL)),
    ("Job deleted", ctx(None, [], {"jobName": "j-run-1", "phase": "Running"})),
    ("outcome recorded, pod gone", ctx(job(cond=("Complete", "")), [], TERMINAL)),
    ("completed, pod gone", ctx(job(cond=("Complete", "")), [])),
    ("completed without a result", ctx(job(cond=("Complete", "")),
                                       [pod(phase="Succeeded", terminated={"exitCode": 0})])),
    ("dry run without an estimate", ctx(dry(job(cond=("Complete", ""))), [DONE])),
    ("dry run", ctx(dry(job(cond=("Complete", ""))), [pod(phase="Succeeded", terminated={
        "exitCode": 0, "message": json.dumps({**GOOD, "estimate": {"gpuHours": 1.0}})})])),
    ("completed without artifacts", ctx(job(cond=("Complete", "")), [pod(
        phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(
            {**GOOD, "artifacts": {}})})])),
    ("succeeded", ctx(job(cond=("Complete", "")), [DONE])),
    ("deadline exceeded", ctx(job(cond=("Failed", "DeadlineExceeded")),
                              [failed_pod(reason="OOMKilled", exitCode=137)])),
    ("backoff limit, pod killed", ctx(job(cond=("Failed", "BackoffLimitExceeded"), failed=3),
                                      [failed_pod(reason="OOMKilled", exitCode=137)])),
    ("backoff limit, pod deleted", ctx(job(cond=("Failed", "BackoffLimitExceeded"), failed=3), [])),
    ("backoff limit", ctx(job(cond=("Failed", "BackoffLimitExceeded"), failed=3), [failed_pod()])),
    ("pod failed", ctx(job(cond=("Failed", "PodFailurePolicy")), [failed_pod(exitCode=11)])),
    ("Job failed", ctx(job(cond=("Failed", "PodFailurePolicy")), [])),
    ("suspended", ctx(job(suspend=True), [pod()], suspend=True)),
    ("suspended by another controller", ctx(job(suspend=True), [pod()])),
    ("trainer done, Job not complete yet", ctx(job(succeeded=1), [DONE])),
    ("group past its scheduling deadline", ctx(gjob(active=2), [
        member(0), member(1, "Pending", scheduled=UNSCHEDULABLE)])),
    ("group training", ctx(gjob(active=2), [member(0), member(1)])),
    ("training again", ctx(job(active=1, failed=1), [pod()])),
    ("training", ctx(job(active=1), [pod()])),
    ("starting again", ctx(job(active=1, failed=1),
                           [pod(phase="Pending", waiting={"reason": "ContainerCreating"})])),
    ("waiting", ctx(job(active=1), [pod(phase="Pending", waiting={"reason": "ErrImagePull"})])),
    ("attempt failed, Job retries", ctx(job(failed=1), [failed_pod()])),
    ("Job created", ctx(job(), [])),
]  # fmt: skip


def test_rule_table_order() -> None:
    """The table reads top to bottom in this order; moving a rule is a visible change here."""
    assert [r.name for r in runstate.RULES] == [name for name, _ in SITUATIONS]
    assert len({r.name for r in runstate.RULES}) == len(runstate.RULES)
    # The queueing hook (Kueue) sits between the user's suspend and anyone else's: the
    # user's intent wins, and a Job a queue holds is told apart before the generic fallback.
    names = [r.name for r in runstate.RULES]
    assert names.index("suspended") < names.index("suspended by another controller")


@pytest.mark.parametrize(("rule", "c"), SITUATIONS, ids=[n for n, _ in SITUATIONS])
def test_each_rule_fires_for_its_situation(rule: str, c: runstate.Ctx) -> None:
    name, state = runstate.evaluate(c)
    assert name.name == rule
    assert state.reason in REASONS


def test_earlier_rules_win() -> None:
    # A Failed Job beats the pods that still look alive; a deadline beats the pod's OOM.
    assert fired(ctx(job(cond=("Failed", "DeadlineExceeded")), [pod()])) == "deadline exceeded"
    # A suspended Job is suspended even with a pod still running.
    assert fired(ctx(job(suspend=True, active=1), [pod()])) == "suspended by another controller"
    # A recorded terminal outcome is kept only for the same run.
    assert fired(ctx(None, [], TERMINAL, same_run=False)) == "Job deleted"


# ------------------------------------------------------------------------------- reasons


KUBELET_WAITING = ["ContainerCreating", "PodInitializing", "ImagePullBackOff", "ErrImagePull",
                   "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                   "CreateContainerError", "RunContainerError", "CrashLoopBackOff",
                   "PreStartHookError", "SomethingNew"]  # fmt: skip


def test_reason_table_maps_onto_the_enum() -> None:
    assert all(isinstance(r, Reason) for r in reasons.KUBE_REASONS.values())
    assert set(reasons.FALLBACK) == set(reasons.Source)
    k = reasons.kube_reason
    S = reasons.Source
    assert k(S.WAITING, "ErrImagePull") == k(S.WAITING, "ImagePullBackOff")
    assert k(S.WAITING, "ErrImagePull") == Reason.IMAGE_PULL_BACK_OFF
    assert k(S.WAITING, "CreateContainerConfigError") == Reason.CREATE_CONTAINER_CONFIG_ERROR
    assert k(S.WAITING, "PodInitializing") == Reason.CONTAINER_CREATING
    assert k(S.TERMINATED, "OOMKilled") == Reason.OOM_KILLED
    assert k(S.POD, "Evicted") == Reason.POD_KILLED
    assert k(S.JOB, "DeadlineExceeded") == Reason.DEADLINE_EXCEEDED
    assert k(S.JOB, "BackoffLimitExceeded") == Reason.BACKOFF_LIMIT_EXCEEDED
    assert k(S.WAITING, "SomethingNew") == Reason.CONTAINER_WAITING
    assert k(S.JOB, None) == Reason.TRAINER_ERROR
    assert reasons.EXIT_REASONS[11] == Reason.DATASET_ERROR
    assert reasons.WARNING_REASONS <= REASONS


def test_an_unknown_kubelet_reason_is_closed_but_named() -> None:
    waiting = pod(phase="Pending", waiting={"reason": "SomethingNew", "message": "why"})
    st = status.run_state(job(active=1), [waiting], {}, True, False, NOW)
    assert st.reason == "ContainerWaiting" and "SomethingNew: why" in st.message


def _observations() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A sweep over what the kubelet, the Job controller and the trainer can report."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for why in KUBELET_WAITING:
        out.append((job(active=1), [pod(phase="Pending", waiting={"reason": why})]))
        out.append((job(active=1, failed=1), [failed_pod(), pod(phase="Pending",
                    waiting={"reason": why})]))  # fmt: skip
    forged = {"outcome": "Failed", "reason": "NotAReason", "message": "x"}
    terms: list[dict[str, Any]] = [
        {"exitCode": code} for code in (0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 20, 42, 137, 143)
    ]
    terms += [{"exitCode": 1, "reason": r} for r in ("OOMKilled", "Error", "ContainerCannotRun")]
    terms += [{"exitCode": 3, "message": json.dumps(forged)}, {"exitCode": 1, "signal": 9}]
    terms += [{"exitCode": 13, "message": json.dumps({**forged, "reason": "NonFiniteLoss"})}]
    for term, cond in itertools.product(terms, ["BackoffLimitExceeded", "DeadlineExceeded",
                                                "PodFailurePolicy", None]):  # fmt: skip
        j = job(cond=("Failed", cond) if cond else None, failed=1, active=0 if cond else 1)
        out.append((j, [failed_pod(**term)]))
    gone = pod(phase="Failed")
    gone["status"].update(reason="Evicted", message="The node was low on memory.")
    out.append((job(cond=("Failed", "BackoffLimitExceeded"), failed=3), [gone]))
    out.append(
        (
            job(active=1),
            [pod(phase="Pending", scheduled={**UNSCHEDULABLE, "reason": "SchedulerError"})],
        )
    )
    return out


def test_every_emitted_reason_is_in_the_enum() -> None:
    """Whatever the cluster reports, the derivation (status, conditions, events) speaks only
    the closed vocabulary."""
    for j, pods in _observations():
        f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Running"})
        out = derive(f, Decision(current_run=1), j, pods)
        emitted = {c["reason"] for c in out.status["conditions"]}
        emitted |= {e.reason for e in out.events}
        assert emitted <= REASONS, (emitted - REASONS, j["status"], pods)


# -------------------------------------------------------------------------- observations


def test_group_observation_names_the_pod_index_and_node_of_the_failure() -> None:
    cause = member(1, "Failed", gpus=1, terminated={"exitCode": 137, "reason": "OOMKilled"})
    cause["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = (
        "2026-11-23T11:05:00Z"
    )
    peer = member(0, "Failed", gpus=1, terminated={"exitCode": 1})
    rank0 = member(0, gpus=1, started="2026-11-23T11:50:00Z")  # restarted, 10 min
    rank1 = member(1, gpus=1, started="2026-11-23T11:50:00Z")
    obs = observe.observe(gjob(active=2, failed=2), [rank1, peer, cause, rank0], NOW)
    assert obs.group.size == 2 and obs.attempts_failed == 1
    assert obs.cause is not None and (obs.cause.index, obs.cause.node) == (1, "node-1")
    assert obs.failure is not None and obs.failure.reason == Reason.OOM_KILLED
    assert "index 1 on node node-1" in obs.failure.message
    # every pod's GPU time: the failed pods ran 5 and 10 minutes, the running ones 10 each
    assert obs.gpu_seconds({"nvidia.com/gpu"}, NOW) == pytest.approx(300 + 600 + 2 * 600)


def test_group_result_comes_from_rank_0() -> None:
    rank0 = member(0, "Succeeded", terminated={"exitCode": 0, "message": json.dumps(GOOD)})
    rank1 = member(1, "Succeeded", terminated={"exitCode": 0})
    rank1["metadata"]["creationTimestamp"] = "2026-11-23T11:00:01Z"
    obs = observe.observe(gjob(cond=("Complete", "")), [rank1, rank0], NOW)
    assert obs.result_pod is not None and obs.result_pod.index == 0
    assert obs.result_pod.terminated and obs.result_pod.terminated.result == GOOD


def test_pod_facts_are_typed() -> None:
    facts = observe.pod_facts(failed_pod(exitCode=137, signal=9))
    assert facts.terminated is not None and facts.terminated.exit_code == 137
    assert facts.terminated.signal == 9 and facts.node == "node-0" and facts.phase == "Failed"
    assert observe.job_facts(gjob(active=2)).backoff_limit_per_attempt == 2  # 4 over 2 pods


# -------------------------------------------------------------------------------- events


def test_event_diff_is_pure_and_empty_without_a_change() -> None:
    f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Pending"})
    out = derive(f, Decision(current_run=1), job(active=1), [pod()])
    t = events.Transition(run=1, generation=1)
    new = out.status
    assert events.diff(f["status"], new, t) == out.events
    assert [e.reason for e in out.events] == ["Training"]
    assert events.diff(new, new, t) == []


def test_event_diff_order_and_kinds() -> None:
    old = {"run": 1, "phase": "Suspended", "observedGeneration": 1,
           "conditions": [{"type": "Ready", "status": "False", "reason": "Suspended"}]}  # fmt: skip
    new = {**old, "phase": "Running", "queuedGeneration": 2, "conditions": [
        {"type": "Ready", "status": "False", "reason": "Training", "message": "m"}]}  # fmt: skip
    t = events.Transition(run=1, generation=2, problem=("InvalidSpec", "bad"), ignored=True)
    got = events.diff(old, new, t)
    assert [(e.type, e.reason) for e in got] == [
        ("Normal", "Resumed"),
        ("Normal", "Queued"),
        ("Normal", "SpecChangeIgnored"),
        ("Warning", "InvalidSpec"),
        ("Normal", "Training"),
    ]
    assert got[-1].message == "run 1: Running: m"


def test_event_diff_tells_restart_from_spec_change() -> None:
    old = {"run": 1, "phase": "Running"}
    new = {"run": 2, "jobName": "j-run-2", "runGeneration": 2, "phase": "Pending"}
    t = events.Transition(run=2, generation=2)
    superseded = {**new, "history": [{"run": 1, "outcome": "Superseded"}]}
    ended = {**new, "history": [{"run": 1, "outcome": "Succeeded"}]}
    assert events.diff(old, superseded, t)[0].reason == "Restarted"
    assert events.diff(old, ended, t)[0].reason == "SpecChanged"
    assert events.diff({}, new, t)[0].reason == "Created"


def test_a_failed_phase_is_a_warning() -> None:
    f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Running"})
    out = derive(f, Decision(current_run=1), job(cond=("Failed", "X"), failed=1),
                 [failed_pod(exitCode=11)])  # fmt: skip
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "DatasetError")]
    again = derive(apply(f, out), Decision(current_run=1), job(cond=("Failed", "X"), failed=1),
                   [failed_pod(exitCode=11)], now=NOW + timedelta(minutes=5))  # fmt: skip
    assert again.events == []


# ---------------------------------------------------------------------------- runPolicy


def test_run_policy_is_parsed_once_and_typed() -> None:
    p = runs.policy_of(ftj(runPolicy={"suspend": True, "onSpecChange": "Queue",
                                      "ttlSecondsAfterFinished": 60}))  # fmt: skip
    assert p.suspend is True and str(p.on_spec_change) == OnSpecChange.QUEUE.value
    assert p.ttl_seconds_after_finished == 60
    assert runs.policy_of(ftj()).suspend is False
    # One the schema would refuse is read field by field, as before.
    odd = runs.policy_of(ftj(runPolicy={"suspend": 1, "onSpecChange": "Sometimes", "x": 1}))
    assert odd.suspend is True and str(odd.on_spec_change) == OnSpecChange.RESTART.value


def test_derive_uses_the_policy_it_is_given() -> None:
    f = ftj({"run": 1, "jobName": "j-run-1", "phase": "Running"})
    given = runs.policy_of(ftj(runPolicy={"suspend": True}))
    out = status.derive(f, Decision(current_run=1), job(suspend=True), [], now=NOW,
                        gpu_resources=set(), policy=given)  # fmt: skip
    assert out.status["phase"] == "Suspended"
    assert status.Event  # re-exported for callers
    assert {c["reason"] for c in out.status["conditions"]} <= REASONS
