"""What the current run is doing: an ordered table of rules over the observations (pure).

The second stage of the status derivation. `RULES` is read top to bottom; the first rule whose
predicate holds gives the run's phase, reason and message. Every reason a rule gives is a
`Reason` (the closed set); the one exception is a terminal outcome restored from the previous
status, which was itself derived by these rules.

Order matters, and the table says it plainly:
  1. no Job: the recorded outcome survives the Job's TTL; otherwise the Job was deleted;
  2. a Complete Job: the result of rank 0 decides (no result, no artifacts: not a success; a
     dry run (spec.dryRun) succeeds with its estimate);
  3. a Failed Job: deadline, then backoff limit (naming the pod that began it), then the pod;
  4. a suspended Job: by runPolicy.suspend; then queueing (the hook for Kueue's rule, which
     tells Queued, Admitted and Preempted apart from its Workload); else another controller;
  5. an active Job: done, past its scheduling deadline, training, starting again, waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubetune_api.v1alpha1 import Phase, Reason

from . import podset
from .observe import (
    MODEL_ARTIFACTS,
    Recorded,
    artifacts,
    evaluation,
    metrics,
    observe,
    promotion,
)
from .reasons import Source, clip, kube_reason, pod_failure, waiting
from .runctx import (
    Ctx,
    Rule,
    RunState,
    _backoff_tail,
    _failed,
)

# ------------------------------------------------------------------------------ predicates


def _no_job(c: Ctx) -> bool:
    return c.obs is None


def _complete(c: Ctx) -> bool:
    return c.obs is not None and c.job.finished == "Complete"


def _complete_no_pod(c: Ctx) -> bool:
    return _complete(c) and c.o.result_pod is None


def _complete_no_result(c: Ctx) -> bool:
    return _complete(c) and (c.result is None or c.result.get("outcome") != "Succeeded")


def _dry_run(c: Ctx) -> bool:
    return _complete(c) and c.job.dry_run


def _dry_run_no_estimate(c: Ctx) -> bool:
    return _dry_run(c) and not isinstance((c.result or {}).get("estimate"), dict)


def _complete_no_artifacts(c: Ctx) -> bool:
    return _complete(c) and not (MODEL_ARTIFACTS & set(artifacts(c.result or {})))


def _job_failed(c: Ctx) -> bool:
    return c.obs is not None and c.job.finished == "Failed"


def _job_failed_for(reason: Reason) -> Callable[[Ctx], bool]:
    return lambda c: _job_failed(c) and kube_reason(Source.JOB, c.job_reason) == reason


def _backoff_killed(c: Ctx) -> bool:
    failure = c.o.failure if _job_failed(c) else None
    return (
        _job_failed_for(Reason.BACKOFF_LIMIT_EXCEEDED)(c)
        and failure is not None
        and failure.reason in (Reason.OOM_KILLED, Reason.POD_KILLED)
    )


def _backoff_pod_gone(c: Ctx) -> bool:
    return _job_failed_for(Reason.BACKOFF_LIMIT_EXCEEDED)(c) and c.o.cause is None


def _suspended(c: Ctx) -> bool:
    return c.obs is not None and c.job.suspended


def _active(c: Ctx) -> bool:
    return c.obs is not None  # what no earlier rule took: the Job neither ended nor suspended


def _done_not_complete(c: Ctx) -> bool:
    return _active(c) and not c.o.live and bool(c.o.succeeded)


def _overdue(c: Ctx) -> bool:
    return _active(c) and c.o.overdue is not None


def _starting_again(c: Ctx) -> bool:
    blocked = c.blocked if _active(c) else None
    return (
        blocked is not None
        and bool(c.o.attempts_failed)
        and blocked.reason in (Reason.CONTAINER_CREATING, Reason.WAITING_FOR_POD)
    )


# -------------------------------------------------------------------------------- outcomes


def _job_deleted(c: Ctx) -> RunState:
    name = c.previous.job_name or "the Job"
    return RunState(
        Phase.FAILED,
        Reason.JOB_DELETED,
        f"{name} was deleted before its outcome was recorded; the run is not restarted "
        "(change the spec to start a new run)",
    )


def _completed_unknown(c: Ctx) -> RunState:
    return RunState(
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        f"Job {c.job.name} completed; its pod was gone before the result was read, so "
        "artifact URIs are not known",
        completion_time=c.finished_at,
    )


def _not_success(c: Ctx, why: str, **kw: Any) -> RunState:
    """A run that claims success without what a success must carry: Failed, ArtifactsMissing."""
    return RunState(
        Phase.FAILED,
        Reason.ARTIFACTS_MISSING,
        f"{why}; not treated as success",
        completion_time=c.finished_at,
        **kw,
    )


def _no_result(c: Ctx) -> RunState:
    pod = c.o.result_pod
    assert pod is not None
    return _not_success(
        c,
        f"pod {pod.name}: the trainer exited 0 without reporting a successful result (no "
        "termination message)",
    )


def _no_estimate(c: Ctx) -> RunState:
    return _not_success(c, "the dry run reported success but no estimate")


def _estimated(c: Ctx) -> RunState:
    result = c.result or {}
    return RunState(
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        clip(str(result.get("message") or "dry run: estimate in status.estimate")),
        completion_time=c.finished_at,
        estimate=result["estimate"],
    )


def _no_artifacts(c: Ctx) -> RunState:
    return _not_success(
        c, "the trainer reported success but no artifact URI", metrics=metrics(c.result)
    )


def _succeeded(c: Ctx) -> RunState:
    # A run that fails the promotion gate still Succeeded: the Promoted condition says False.
    result = c.result or {}
    return RunState(
        Phase.SUCCEEDED,
        Reason.COMPLETED,
        clip(str(result.get("message") or "training completed")),
        artifacts(result),
        metrics(result),
        c.finished_at,
        evaluation=evaluation(result),
        promotion=promotion(result),
    )


def _deadline(c: Ctx) -> RunState:
    return _failed(
        Reason.DEADLINE_EXCEEDED,
        f"the run was active longer than runPolicy.activeDeadlineSeconds "
        f"({c.job.active_deadline_seconds}s) and was stopped",
        c,
    )


def _backoff_by_kill(c: Ctx) -> RunState:
    failure = c.o.failure
    assert failure is not None
    return _failed(failure.reason, clip(f"{failure.message}; {_backoff_tail(c)}"), c)


def _backoff_pod_deleted(c: Ctx) -> RunState:
    # The failed pod is gone: deleted (kubectl delete pod, a drain without eviction) and the
    # Job counted it as a failure.
    return _failed(
        Reason.POD_KILLED,
        f"the run's pod was deleted before the trainer finished; {_backoff_tail(c)}",
        c,
        with_metrics=False,
    )


def _backoff(c: Ctx) -> RunState:
    failure = c.o.failure
    assert failure is not None
    last_words = f"; last attempt: {failure.reason}: {failure.message}"
    return _failed(Reason.BACKOFF_LIMIT_EXCEEDED, clip(f"{_backoff_tail(c)}{last_words}"), c)


def _pod_failed(c: Ctx) -> RunState:
    failure = c.o.failure
    assert failure is not None
    return _failed(failure.reason, failure.message, c)


def _job_failed_unexplained(c: Ctx) -> RunState:
    cond = c.job.condition
    detail = (cond.message if cond else None) or ""
    return _failed(
        Reason.TRAINER_ERROR, clip(f"Job failed: {c.job_reason}: {detail}"), c, with_metrics=False
    )


def _suspended_by_user(c: Ctx) -> RunState:
    return RunState(
        Phase.SUSPENDED,
        Reason.SUSPENDED,
        "suspended (runPolicy.suspend: true); set it to false to resume from the last checkpoint",
    )


def _suspended_by_other(c: Ctx) -> RunState:
    return RunState(
        Phase.SUSPENDED,
        Reason.PREEMPTED,
        "the Job was suspended by another controller (e.g. a queue such as Kueue); it resumes "
        "from the last checkpoint when unsuspended",
    )


def _finishing(c: Ctx) -> RunState:
    # The trainer has exited 0; the Job controller has not marked the Job Complete yet.
    return RunState(
        Phase.RUNNING, Reason.TRAINING, "the trainer finished; waiting for the Job to complete"
    )


def _past_scheduling_deadline(c: Ctx) -> RunState:
    o = c.o
    pod = o.overdue
    assert pod is not None
    return RunState(
        Phase.FAILED,
        Reason.UNSCHEDULABLE,
        clip(
            f"{podset.where(pod)} could not be scheduled within "
            f"runPolicy.schedulingTimeoutSeconds ({o.group.scheduling_deadline}s), so the group "
            f"of {o.group.size} pods cannot train; its pods were stopped and their GPUs "
            f"released. {waiting(pod).message}"
        ),
    )


def _group_training(c: Ctx) -> RunState:
    failed = c.o.attempts_failed
    nodes = sorted({p.node or "?" for p in c.training})
    again = f" (attempt {failed + 1}, resuming from the last checkpoint)" if failed else ""
    return RunState(
        Phase.RUNNING,
        Reason.RETRYING if failed else Reason.TRAINING,
        clip(f"{len(c.training)} pods are training on nodes {', '.join(nodes)}{again}"),
    )


def _retrying(c: Ctx) -> RunState:
    return RunState(
        Phase.RUNNING,
        Reason.RETRYING,
        f"pod {c.training[-1].name} is training (attempt {c.o.attempts_failed + 1}, resuming "
        "from the last checkpoint)",
    )


def _training(c: Ctx) -> RunState:
    return RunState(Phase.RUNNING, Reason.TRAINING, f"pod {c.training[-1].name} is training")


def _restarting(c: Ctx) -> RunState:
    cause = c.o.cause
    why = f" after {pod_failure(cause).reason}" if cause is not None else ""
    return RunState(
        Phase.RUNNING, Reason.RETRYING, f"attempt {c.o.attempts_failed + 1} is starting{why}"
    )


def _waiting(c: Ctx) -> RunState:
    blocked = c.blocked
    assert blocked is not None
    return RunState(Phase.PENDING, blocked.reason, blocked.message)


def _will_retry(c: Ctx) -> RunState:
    failure = c.o.failure
    why = f": {failure.message}" if failure is not None else ""
    return RunState(
        Phase.RUNNING,
        Reason.RETRYING,
        clip(f"attempt {c.o.attempts_failed} failed{why}; the Job will retry"),
    )


def _created(c: Ctx) -> RunState:
    return RunState(
        Phase.PENDING, Reason.WAITING_FOR_POD, f"Job {c.job.name} created; waiting for its pod"
    )


# ---------------------------------------------------------------------------- the table


def _gone_after_outcome(c: Ctx) -> bool:
    return _no_job(c) and c.recorded_terminal


def _pod_gone_after_outcome(c: Ctx) -> bool:
    return _complete_no_pod(c) and c.recorded_terminal


def _pod_explains(c: Ctx) -> bool:
    return _job_failed(c) and c.o.cause is not None


def _suspended_by_policy(c: Ctx) -> bool:
    return _suspended(c) and c.suspend_intent


def _group_trains(c: Ctx) -> bool:
    return _active(c) and c.o.group.size > 1 and bool(c.training)


def _trains_again(c: Ctx) -> bool:
    return _active(c) and bool(c.training) and bool(c.o.attempts_failed)


def _trains(c: Ctx) -> bool:
    return _active(c) and bool(c.training)


def _waits(c: Ctx) -> bool:
    return _active(c) and bool(c.o.live)


def _attempt_failed(c: Ctx) -> bool:
    return _active(c) and bool(c.o.attempts_failed)


def _restore(c: Ctx) -> RunState:
    p = c.previous
    phase = str(p.phase)
    return RunState(
        phase,
        p.reason or phase,
        p.message,
        p.artifacts,
        p.metrics,
        p.completion_time,
        p.estimate,
        p.evaluation,
        p.promotion,
    )


RULES: tuple[Rule, ...] = (
    # 1. The Job is gone.
    Rule("outcome recorded, Job gone", _gone_after_outcome, _restore),
    Rule("Job deleted", _no_job, _job_deleted),
    # 2. The Job is Complete: rank 0's result decides.
    Rule("outcome recorded, pod gone", _pod_gone_after_outcome, _restore),
    Rule("completed, pod gone", _complete_no_pod, _completed_unknown),
    Rule("completed without a result", _complete_no_result, _no_result),
    Rule("dry run without an estimate", _dry_run_no_estimate, _no_estimate),
    Rule("dry run", _dry_run, _estimated),
    Rule("completed without artifacts", _complete_no_artifacts, _no_artifacts),
    Rule("succeeded", _complete, _succeeded),
    # 3. The Job Failed.
    Rule("deadline exceeded", _job_failed_for(Reason.DEADLINE_EXCEEDED), _deadline),
    Rule("backoff limit, pod killed", _backoff_killed, _backoff_by_kill),
    Rule("backoff limit, pod deleted", _backoff_pod_gone, _backoff_pod_deleted),
    Rule("backoff limit", _job_failed_for(Reason.BACKOFF_LIMIT_EXCEEDED), _backoff),
    Rule("pod failed", _pod_explains, _pod_failed),
    Rule("Job failed", _job_failed, _job_failed_unexplained),
    # 4. The Job is suspended: by the user first, then by a queue, then by anyone else.
    Rule("suspended", _suspended_by_policy, _suspended_by_user),
    # Queueing hook: Kueue's Queued/Admitted/Preempted rule (queueing.py, reading the Workload
    # carried in Ctx) goes here, e.g. Rule("held by a queue", queueing.holds, queueing.state).
    Rule("suspended by another controller", _suspended, _suspended_by_other),
    # 5. The Job is active.
    Rule("trainer done, Job not complete yet", _done_not_complete, _finishing),
    Rule("group past its scheduling deadline", _overdue, _past_scheduling_deadline),
    Rule("group training", _group_trains, _group_training),
    Rule("training again", _trains_again, _retrying),
    Rule("training", _trains, _training),
    Rule("starting again", _starting_again, _restarting),
    Rule("waiting", _waits, _waiting),
    Rule("attempt failed, Job retries", _attempt_failed, _will_retry),
    Rule("Job created", _active, _created),
)


def evaluate(ctx: Ctx) -> tuple[Rule, RunState]:
    """The first rule that holds, and its state."""
    for rule in RULES:
        if rule.when(ctx):
            return rule, rule.then(ctx)
    raise AssertionError("the last rule always holds")  # pragma: no cover


def run_state(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    previous: dict[str, Any],
    same_run: bool,
    suspend_intent: bool,
    now: datetime | None = None,
) -> RunState:
    """The phase of the current run. `previous` is the old status, `same_run` whether it was
    about this run (so a terminal outcome recorded there still counts after TTL)."""
    obs = observe(job, pods, now) if job is not None else None
    return evaluate(Ctx(obs, Recorded.of(previous), same_run, suspend_intent))[1]
