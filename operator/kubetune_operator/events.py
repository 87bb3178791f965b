"""Events: the transitions between the old and the new status, as Kubernetes Events (pure).

The last stage of the status derivation. Nothing appends Events while deriving: `diff` reads the
two statuses and the few inputs of the pass that the status does not record (`Transition`), so
a pass that changes nothing posts nothing, and the same pair of statuses always gives the same
Events, in this order: a run started, a run resumed, a generation queued, a spec change
ignored, a spec that cannot run, and the run's new phase or reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import ConditionType, Phase, Reason

from .observe import ready_reason
from .reasons import WARNING_REASONS
from .runs import TERMINAL

Status = dict[str, Any]


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """What the pass knows beyond the two statuses."""

    run: int  # the run the pass decided on (0: none yet)
    generation: int  # metadata.generation
    problem: tuple[str, str] | None = None  # (reason, message) when the spec cannot run
    ignored: bool = False  # a spec change ignored (runPolicy.onSpecChange: Ignore)


def _condition(status: Status, type_: ConditionType) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_.value), {})


def waiting_message(run: int, queued_generation: int) -> str:
    return f"generation {queued_generation} is queued: run {run + 1} starts when run {run} ends"


def _run_started(old: Status, new: Status) -> Event | None:
    old_run, run = int(old.get("run") or 0), int(new.get("run") or 0)
    if run <= old_run:
        return None
    job, gen = new.get("jobName"), new.get("runGeneration")
    if not old_run:
        return Event(
            "Normal",
            Reason.CREATED.value,
            f"started run {run} (Job {job}) for generation {gen}",
        )
    last = (new.get("history") or [{}])[-1]
    if last.get("run") == old_run and last.get("outcome") == "Superseded":
        return Event(
            "Normal",
            Reason.RESTARTED.value,
            f"spec changed (generation {gen}): run {old_run} stopped, run {run} started "
            f"(Job {job})",
        )
    return Event(
        "Normal",
        Reason.SPEC_CHANGED.value,
        f"spec changed (generation {gen}): started run {run} (Job {job}) after run {old_run} ended",
    )


def _resumed(old: Status, new: Status, t: Transition) -> Event | None:
    same_run = t.run and t.run == int(old.get("run") or 0)
    resumed = new.get("phase") not in TERMINAL and new.get("phase") != Phase.SUSPENDED.value
    if resumed and same_run and old.get("phase") == Phase.SUSPENDED.value:
        return Event("Normal", Reason.RESUMED.value, f"run {t.run} resumed")
    return None


def _queued(old: Status, new: Status, t: Transition) -> Event | None:
    queued = new.get("queuedGeneration")
    if queued is None or queued == old.get("queuedGeneration"):
        return None
    return Event("Normal", Reason.QUEUED.value, waiting_message(t.run, queued))


def _ignored(old: Status, new: Status, t: Transition) -> Event | None:
    if not t.ignored or old.get("observedGeneration") == t.generation:
        return None
    return Event(
        "Normal",
        Reason.SPEC_CHANGE_IGNORED.value,
        f"spec changed (generation {t.generation}) but runPolicy.onSpecChange is Ignore: "
        f"run {t.run} keeps training generation {new.get('runGeneration')}",
    )


def _cannot_run(old: Status, t: Transition) -> Event | None:
    if t.problem is None or not t.run:
        return None
    stalled = _condition(old, ConditionType.STALLED)
    if stalled.get("reason") == t.problem[0] and stalled.get("status") == "True":
        return None
    return Event("Warning", t.problem[0], f"generation {t.generation} cannot run: {t.problem[1]}")


def _phase(old: Status, new: Status, t: Transition) -> Event | None:
    """The run's phase or reason changed (or a new run began): its Ready condition says why."""
    phase, ready = new.get("phase"), _condition(new, ConditionType.READY)
    reason = ready.get("reason")
    unchanged = (phase, reason) == (old.get("phase"), ready_reason(old))
    if unchanged and t.run == int(old.get("run") or 0):
        return None
    warning = phase == Phase.FAILED.value or reason in WARNING_REASONS
    return Event(
        "Warning" if warning else "Normal",
        str(reason),
        f"run {t.run or '-'}: {phase}: {ready.get('message') or ''}",
    )


def diff(old: Status, new: Status, t: Transition) -> list[Event]:
    """The Events of the transition from `old` to `new` (both without `progress`)."""
    found = (
        _run_started(old, new),
        _resumed(old, new, t),
        _queued(old, new, t),
        _ignored(old, new, t),
        _cannot_run(old, t),
        _phase(old, new, t),
    )
    return [e for e in found if e is not None]
