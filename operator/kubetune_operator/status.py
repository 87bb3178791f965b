"""Pure status derivation: observed Job + Pods + previous status -> new status and Events.

The status is re-derived from the cluster every time (an operator restart loses nothing), and
the result is compared with the previous status so the caller patches only real changes and
posts one Event per transition. Nothing here reads a clock except through `now`, and nothing
depends on when it runs: two derivations from the same observations are equal.

The derivation runs in stages, each a module of its own:
  1. observe.py: the Job and its pods as typed facts, read as one group (podset.py);
  2. runstate.py: an ordered table of rules gives the run's phase, reason and message;
  3. this module: the new status (run bookkeeping, conditions, history, GPU time);
  4. events.py: the Events, by diffing the old and the new status.
Every reason comes from one closed set (`Reason`); reasons.py maps Kubernetes' onto it.

`status.progress` belongs to the trainer: it is never computed here. The only thing the operator
does to it is clear it when a new run starts (`Derived.clear_progress`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_api.v1alpha1 import (
    ConditionType,
    Phase,
    Progress,
    Reason,
    RunPolicy,
    evaluation_summary,
)
from pydantic import ValidationError

from . import queueing
from .events import Event, Transition, diff, waiting_message
from .observe import (
    GPU_ACCOUNTING_STEP,
    Observation,
    json_object,
    observe,
    parse_result,
    parse_time,
    ready_reason,
)
from .reasons import EXIT_REASONS, MESSAGE_LIMIT, TRAINER_REASONS, clip
from .render import ANN_GENERATION, ANN_LINEAGE, ANN_SPEC_HASH
from .runs import TERMINAL, Decision, policy_of
from .runstate import Ctx, Recorded, RunState, evaluate, run_state

__all__ = [
    "EXIT_REASONS",
    "GPU_ACCOUNTING_STEP",
    "MESSAGE_LIMIT",
    "TRAINER_REASONS",
    "Decision",
    "Derived",
    "Event",
    "RunState",
    "conditions",
    "derive",
    "merge_patch",
    "parse_result",
    "parse_time",
    "progress_summary",
    "rfc3339",
    "run_state",
    "status_patch",
]

HISTORY_LIMIT = 20


@dataclass
class Derived:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    clear_progress: bool = False


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- conditions


def conditions(
    previous: list[dict[str, Any]] | None,
    state: RunState,
    generation: int,
    now: str,
    problem: tuple[str, str] | None = None,
    waiting: str | None = None,
) -> list[dict[str, Any]]:
    """All condition types, following kstatus' contract (what Flux and most deploy tools read):

    - `Stalled=True` when the object cannot progress without a change: the run failed, or the
      current generation's spec cannot run (`problem`), even while an older run is still active;
    - `Reconciling=True` while work is in progress and nothing is stalled: Pending, Running,
      suspended (by `runPolicy.suspend` or by a queue: not done, so a Flux `wait` keeps
      waiting), or a queued generation waiting for the current run;
    - never both: Stalled wins, so kstatus reads Failed at once instead of InProgress;
    - `Ready` is the summary: True only when the run Succeeded and nothing is pending or stalled.
    """
    phase, reason, message = state.phase, state.reason, state.message
    stalled = phase == Phase.FAILED.value or problem is not None
    reconciling = not stalled and (phase not in TERMINAL or waiting is not None)
    ready = phase == Phase.SUCCEEDED.value and not stalled and not reconciling
    rec_reason, rec_message = (reason, message)
    if waiting is not None:
        rec_reason, rec_message = Reason.QUEUED.value, waiting
    st_reason, st_message = (reason, message) if phase == Phase.FAILED.value else (reason, "")
    if problem is not None:
        st_reason, st_message = problem
    desired = [
        (ConditionType.READY, ready, reason, message),
        (ConditionType.RUNNING, phase == Phase.RUNNING.value, reason, message),
        (ConditionType.SUCCEEDED, phase == Phase.SUCCEEDED.value, reason, message),
        (ConditionType.FAILED, phase == Phase.FAILED.value, reason, message),
        (ConditionType.SUSPENDED, phase == Phase.SUSPENDED.value, reason, message),
        (ConditionType.RECONCILING, reconciling, rec_reason, rec_message if reconciling else ""),
        (ConditionType.STALLED, stalled, st_reason, st_message if stalled else ""),
    ]
    promo = state.promotion if phase == Phase.SUCCEEDED.value else None
    if promo:  # spec.output.promote: only on a Succeeded run, False with the numbers too
        desired.append(
            (
                ConditionType.PROMOTED,
                bool(promo.get("promoted")),
                str(promo.get("reason") or Reason.NOT_PROMOTED.value),
                str(promo.get("message") or ""),
            )
        )
    old = {c.get("type"): c for c in previous or []}
    out = []
    for ctype, true, creason, cmessage in desired:
        value = "True" if true else "False"
        if not true and ctype not in (ConditionType.READY, ConditionType.PROMOTED):
            cmessage = ""
        before = old.get(ctype.value) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else None
        out.append(
            {
                "type": ctype.value,
                "status": value,
                "reason": creason,
                "message": clip(cmessage),
                "lastTransitionTime": since or now,
                "observedGeneration": generation,
            }
        )
    return out


# ------------------------------------------------------------------------------- derivation


def progress_summary(progress: dict[str, Any]) -> str | None:
    """`status.progressSummary` (the Progress column) from the trainer's own `status.progress`:
    the same `Progress.summary()` the trainer uses, so whichever writes it first, they agree."""
    try:
        return Progress.model_validate(progress).summary()
    except ValidationError:
        return None


def _history_record(status: dict[str, Any], superseded: bool, gpu_seconds: float) -> dict[str, Any]:
    phase = status.get("phase")
    if phase in TERMINAL and not superseded:
        outcome = str(phase)
        reason = ready_reason(status)
    else:
        outcome = "Superseded"
        reason = Reason.RESTARTED.value
    record: dict[str, Any] = {"run": int(status["run"]), "outcome": outcome}
    for key, value in (
        ("generation", status.get("runGeneration")),
        ("reason", reason),
        ("startTime", status.get("startTime")),
        ("completionTime", status.get("completionTime")),
        ("artifacts", status.get("artifacts")),
        ("metrics", status.get("metrics")),
        ("promoted", status.get("promoted")),
        ("gpuSeconds", round(gpu_seconds, 1) if gpu_seconds else None),
    ):
        if value is not None:
            record[key] = value
    return record


def _history_gpu(history: list[dict[str, Any]]) -> float:
    return float(sum(float(h.get("gpuSeconds") or 0) for h in history))


def _new_run(
    old: dict[str, Any], job: dict[str, Any], decision: Decision, generation: int, now_s: str
) -> dict[str, Any]:
    """The status at the start of run `decision.current_run`: the old run goes into history,
    the run's fields start afresh."""
    new = copy.deepcopy(old)
    history = list(old.get("history") or [])
    old_run = int(old.get("run") or 0)
    if old_run:
        superseded = decision.supersede or old.get("phase") not in TERMINAL
        prev_gpu = max(0.0, float(old.get("gpuSeconds") or 0) - _history_gpu(history))
        history.append(_history_record(old, superseded, prev_gpu))
        history = history[-HISTORY_LIMIT:]
    for key in (
        "completionTime",
        "artifacts",
        "metrics",
        "evaluation",
        "evaluationSummary",
        "promoted",
        "promotion",
        "attempts",
        "queuedGeneration",
        "message",
        "lineage",
    ):
        new.pop(key, None)
    ann = job["metadata"].get("annotations") or {}
    lineage = json_object(ann.get(ANN_LINEAGE))  # written at the Job creation
    if lineage is not None:
        new["lineage"] = lineage
    gen = ann.get(ANN_GENERATION)
    new.update(
        run=decision.current_run,
        jobName=job["metadata"]["name"],
        specHash=ann.get(ANN_SPEC_HASH),
        runGeneration=int(gen) if gen and gen.isdigit() else generation,
        startTime=job["metadata"].get("creationTimestamp") or now_s,
        history=history,
    )
    return new


def _message(
    state: RunState,
    t: Transition,
    waiting: str | None,
    run_generation: Any,
    waiting_for_base: tuple[str, str] | None,
) -> str:
    """The run's message, with what else the pass knows: a spec that cannot run, a queued
    generation, a base job (spec.model.fromJob) not ready, an ignored spec change."""
    message = state.message
    if t.problem is not None and t.run:
        message = f"{message} (generation {t.generation} cannot run: {t.problem[1]})"
    if waiting:
        message = f"{message} ({waiting})"
    if waiting_for_base is not None and t.run:
        message = f"{message} (generation {t.generation} waits: {waiting_for_base[1]})"
    if t.ignored:
        message = (
            f"{message} (spec changes ignored: runPolicy.onSpecChange is Ignore; run {t.run} "
            f"trains generation {run_generation})"
        )
    return clip(message)


def derive(
    ftj: dict[str, Any],
    decision: Decision,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    now: datetime,
    gpu_resources: set[str],
    problem: tuple[str, str] | None = None,
    model: str | None = None,
    waiting_for_base: tuple[str, str] | None = None,
    policy: RunPolicy | None = None,
    workload: dict[str, Any] | None = None,
) -> Derived:
    """The new status of `ftj` after `decision` was carried out. `job` is the current run's Job
    (None if there is none), `pods` its pods; `problem` is (reason, message) when the spec cannot
    run; `waiting_for_base` (reason, message) while spec.model.fromJob's base is not ready;
    `policy` is spec.runPolicy as parsed for this pass (runs.policy_of); `workload` is Kueue's
    Workload of `job` when it waits in a queue (queueing.py). Returns the full new status and
    the Events of the transitions from the old one."""
    policy = policy or policy_of(ftj)
    generation = int(ftj["metadata"].get("generation") or 1)
    old: dict[str, Any] = copy.deepcopy(ftj.get("status") or {})
    old.pop("progress", None)
    now_s = rfc3339(now)
    current = decision.current_run
    t = Transition(current, generation, problem, decision.ignored)

    old_run = int(old.get("run") or 0)
    started = current > old_run and job is not None
    new = copy.deepcopy(old)
    if job is not None and started:
        new = _new_run(old, job, decision, generation, now_s)
    same_run = current == old_run
    obs = observe(job, pods, now) if job is not None else None

    # 1-2. Observe and apply the rules (before any run: the spec cannot run, or the first Job
    # is not there yet).
    if current == 0:
        if problem is not None:
            state = RunState(Phase.FAILED, problem[0], problem[1])
        elif waiting_for_base is not None:  # spec.model.fromJob: the base has not succeeded
            state = RunState(Phase.PENDING, *waiting_for_base)
        else:
            state = RunState(Phase.PENDING, Reason.CREATED, "creating the first run")
    else:
        state = evaluate(Ctx(obs, Recorded.of(old), same_run, policy.suspend))[1]
        # Suspended by Kueue (the rule "suspended by another controller"): Queued or
        # Preempted, in Kueue's words.
        queued = queueing.refine(state.phase, state.reason, job, workload)
        if queued is not None:
            state = RunState(queued.phase, queued.reason, queued.message)
    queue = queueing.queue_status(job, workload) if current else {}
    if queue:
        new["queue"] = queue
    else:
        new.pop("queue", None)

    # 3. The new status.
    waiting: str | None = None
    if decision.queued_generation is not None and current:
        new["queuedGeneration"] = decision.queued_generation
        waiting = waiting_message(current, decision.queued_generation)
    else:
        new.pop("queuedGeneration", None)
    new["phase"] = state.phase
    new["message"] = _message(state, t, waiting, new.get("runGeneration"), waiting_for_base)
    for key, value in (
        ("artifacts", state.artifacts),
        ("metrics", state.metrics),
        ("completionTime", state.completion_time),
        ("estimate", state.estimate),
        ("evaluation", state.evaluation),
        ("promotion", state.promotion),
    ):
        if value:
            new[key] = value
        else:
            new.pop(key, None)
    _evaluation_fields(new, state)
    new["observedGeneration"] = generation
    new["conditions"] = conditions(
        old.get("conditions"), state, generation, now_s, problem, waiting
    )
    if model:
        new["model"] = model
    if obs is not None:
        js = obs.job
        before = int(old.get("attempts") or 0) if same_run else 0
        attempts = max(before, js.active + js.failed + js.succeeded, len(obs.pods))
        if attempts:
            new["attempts"] = attempts
    _account_gpu(new, old, started, obs if current else None, gpu_resources, now)
    if current and not new.get("history"):
        new.pop("history", None)
    clear_progress = _progress(ftj, new, started, current)

    # 4. The Events, from the two statuses.
    return Derived(status=new, events=diff(old, new, t), clear_progress=clear_progress)


def _evaluation_fields(new: dict[str, Any], state: RunState) -> None:
    """status.evaluationSummary (the Eval column) and status.promoted, from the run's test
    metrics and the promotion gate's decision."""
    promo = state.promotion or {}
    summary = evaluation_summary(state.evaluation, promo.get("metric"))
    if summary:
        new["evaluationSummary"] = summary
    else:
        new.pop("evaluationSummary", None)
    if promo and state.phase == Phase.SUCCEEDED.value:
        new["promoted"] = bool(promo.get("promoted"))
    else:
        new.pop("promoted", None)


def _account_gpu(
    new: dict[str, Any],
    old: dict[str, Any],
    started: bool,
    obs: Observation | None,
    gpu_resources: set[str],
    now: datetime,
) -> None:
    """status.gpuSeconds: every past run's (history) plus the current run's, which never
    shrinks while the run's pods come and go."""
    history = new.get("history") or []
    run_gpu = 0.0
    if int(old.get("run") or 0) and not started:
        run_gpu = max(0.0, float(old.get("gpuSeconds") or 0) - _history_gpu(history))
    if obs is not None:
        run_gpu = max(run_gpu, obs.gpu_seconds(gpu_resources, now))
    total = _history_gpu(history) + run_gpu
    if total or "gpuSeconds" in old:
        new["gpuSeconds"] = round(total, 1)


def _progress(ftj: dict[str, Any], new: dict[str, Any], started: bool, current: int) -> bool:
    """Set status.progressSummary from the trainer's progress; True when that progress belongs
    to an earlier run and must be cleared."""
    progress = (ftj.get("status") or {}).get("progress") or None
    clear = started
    if progress is not None and not clear:
        prog_run = progress.get("run") if isinstance(progress, dict) else None
        clear = prog_run is not None and bool(current) and prog_run != current
    clear = clear and progress is not None
    summary = None if clear or progress is None else progress_summary(progress)
    if summary:
        new["progressSummary"] = summary
    else:
        new.pop("progressSummary", None)
    return clear


# ------------------------------------------------------------------------------ patching


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (None when they are equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for key in old.keys() - new.keys():
            patch[key] = None
        for key, value in new.items():
            if key not in old:
                patch[key] = value
            else:
                sub = merge_patch(old[key], value)
                if sub is not None:
                    patch[key] = sub
        return patch or None
    return None if old == new else new


def status_patch(ftj: dict[str, Any], derived: Derived) -> dict[str, Any] | None:
    """The merge patch for the status subresource; None when nothing changed. It never sets
    `progress` (the trainer's), only removes it when `clear_progress`."""
    old = copy.deepcopy(ftj.get("status") or {})
    progress = old.pop("progress", None)
    patch = merge_patch(old, derived.status) or {}
    if derived.clear_progress and progress is not None:
        patch["progress"] = None
    return {"status": patch} if patch else None
