"""The vocabulary of the run-state rules (runstate.py): the state a rule gives (`RunState`),
what every rule reads (`Ctx`: the observations, the recorded status, the user's suspend), a
rule itself, and the helpers several outcomes share."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import Phase, Reason

from .observe import (
    JobFacts,
    Observation,
    PodFacts,
    Recorded,
    metrics,
)
from .reasons import Finding, waiting
from .runs import TERMINAL


@dataclass
class RunState:
    """What the current run is doing, from its Job and Pods."""

    phase: str
    reason: str
    message: str
    artifacts: dict[str, str] | None = None
    metrics: dict[str, float] | None = None
    completion_time: str | None = None
    estimate: dict[str, Any] | None = None  # a dry run's (spec.dryRun)
    evaluation: dict[str, Any] | None = None  # dataset.test: {metric: {base, tuned}}
    promotion: dict[str, Any] | None = None  # output.promote: the gate's decision

    def __post_init__(self) -> None:
        # Plain strings in the status (a Reason is a str, but YAML/JSON dumpers differ).
        self.phase, self.reason = str(self.phase), str(self.reason)


@dataclass(frozen=True)
class Ctx:
    """What the rules read: the observed run, the previous status, and the suspend intent."""

    obs: Observation | None  # None: the run's Job is gone
    previous: Recorded
    same_run: bool  # the previous status is about this run
    suspend_intent: bool  # runPolicy.suspend

    # Shorthands for the rules (all read the observation; none does I/O).
    @property
    def job(self) -> JobFacts:
        assert self.obs is not None
        return self.obs.job

    @property
    def o(self) -> Observation:
        assert self.obs is not None
        return self.obs

    @property
    def recorded_terminal(self) -> bool:
        return self.same_run and self.previous.phase in TERMINAL

    @property
    def job_reason(self) -> str:
        cond = self.job.condition
        return (cond.reason if cond else None) or ""

    @property
    def finished_at(self) -> str | None:
        cond = self.job.condition
        since = cond.since if cond else None
        if self.job.finished == "Complete":
            return self.job.completion_time or since
        return since

    @property
    def result(self) -> dict[str, Any] | None:
        pod = self.o.result_pod
        return pod.terminated.result if pod and pod.terminated else None

    @property
    def failure_metrics(self) -> dict[str, float] | None:
        cause = self.o.cause
        term = cause.terminated if cause else None
        return metrics(term.result) if term else None

    @property
    def attempts_failed_by_job(self) -> int:
        return self.o.group.attempts_failed(self.job.failed)

    @property
    def training(self) -> list[PodFacts]:
        """The running pods, if the run trains: a group trains only once all its pods run."""
        o = self.o
        running = o.running
        if o.group.size > 1 and running and len(running) + len(o.succeeded) < o.group.size:
            return []
        return running

    @property
    def blocked(self) -> Finding | None:
        pod = self.o.blocked
        return self.o.named(pod, waiting(pod)) if pod is not None else None


@dataclass(frozen=True)
class Rule:
    name: str
    when: Callable[[Ctx], bool]
    then: Callable[[Ctx], RunState]


def _failed(reason: Reason, message: str, ctx: Ctx, with_metrics: bool = True) -> RunState:
    return RunState(
        Phase.FAILED,
        reason,
        message,
        metrics=ctx.failure_metrics if with_metrics else None,
        completion_time=ctx.finished_at,
    )


def _backoff_tail(ctx: Ctx) -> str:
    return (
        f"{ctx.attempts_failed_by_job} failed attempt(s), backoffLimit "
        f"{ctx.job.backoff_limit_per_attempt} reached"
    )
