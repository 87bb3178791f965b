"""One reconcile pass of one FineTuneJob: read the cluster, decide, act, derive status, patch.

`handle_reconcile` is a plain function (no Kopf) over a `Kube`: the Kopf handlers in
handlers.py only schedule it. Every pass starts from what is in the cluster (the FineTuneJob
with its status, its Jobs and Pods), so it is safe to run at any time, any number of times, and
after a crash at any point:

  * a run's children have deterministic names; 409 AlreadyExists is success;
  * a Job is created before the status records it; a Job newer than `status.run` is adopted;
  * a finished run is recorded in the status, so a Job removed by its TTL never runs again;
  * the status is patched only when it changed, and never touches `status.progress` (the
    trainer's) except to clear it when a new run starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune_api.v1alpha1 import KIND, FineTuneJobSpec, Phase, Reason
from pydantic import ValidationError

from . import chain, ledger, metrics, queueing, render, runs, status
from .k8s import ApiError, Kube, path
from .render import Owner, RenderError, Run
from .settings import OperatorSettings

log = logging.getLogger(__name__)
COMPONENT = "kubetune-operator"


@dataclass
class Outcome:
    phase: str | None  # None: the FineTuneJob is gone
    requeue_after: float | None = None
    patched: bool = False


class Requeue(Exception):
    """Try again after `after` seconds (a transient state, not an error)."""

    def __init__(self, after: float, why: str) -> None:
        super().__init__(why)
        self.after = after


def spec_problem(
    raw: dict[str, Any], name: str, settings: OperatorSettings, namespace: str = ""
) -> tuple[FineTuneJobSpec | None, tuple[str, str] | None]:
    """The validated spec, or the reason it cannot run. Messages name fields, not values."""
    try:
        spec = FineTuneJobSpec.model_validate(raw)
    except ValidationError as e:
        parts = []
        for err in e.errors(include_input=False, include_url=False)[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()))
            parts.append(f"spec.{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return None, (Reason.INVALID_SPEC.value, "; ".join(parts))
    try:
        render.check(spec, name, settings, namespace)
    except RenderError as e:
        return spec, (e.reason.value, e.message)
    blocked = chain.check(spec, namespace, name, settings)
    if blocked is not None:
        return spec, (blocked.reason, blocked.message)
    return spec, None


def resolve_base(
    kube: Kube, spec: FineTuneJobSpec, namespace: str
) -> chain.Base | chain.Blocked | None:
    """`spec.model.fromJob` resolved against the base FineTuneJob as the operator recorded it
    (ledger.trusted_view), or None when the model is not a job reference."""
    ref = chain.reference(spec, namespace)
    if ref is None:
        return None
    try:
        base = kube.get_finetunejob(*ref)
    except ApiError as e:
        if e.status != 403:
            raise
        return chain.Blocked(
            Reason.BASE_NOT_ALLOWED.value,
            f"spec.model.fromJob: the operator may not read FineTuneJobs in {ref[0]} (it does "
            "not watch that namespace)",
            False,
        )
    return chain.resolve(spec, namespace, ledger.trusted_view(base) if base else None)


# ------------------------------------------------------------------------------ children


def _differs(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key in ("data", "rules", "subjects", "roleRef"):
        if key in wanted and existing.get(key) != wanted[key]:
            return True
    if wanted["kind"] == "Service":  # the pods rendezvous where its selector points
        return bool((existing.get("spec") or {}).get("selector") != wanted["spec"]["selector"])
    return False


class NameConflict(Exception):
    """A child's name is taken by an object this FineTuneJob does not control: nothing is
    touched, the FineTuneJob is Stalled (reason NameConflict) until the name is free."""

    def __init__(self, obj: dict[str, Any]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        super().__init__(
            f"{kind} {name} already exists and is not controlled by this FineTuneJob; "
            f"kubetune never adopts or changes it. Delete or rename that {kind}, or rename "
            "the FineTuneJob"
        )


def _check_ours(existing: dict[str, Any], owner: Owner) -> None:
    """Return if `existing` is this FineTuneJob's child; else wait for the garbage collector
    (a child of a deleted namesake) or refuse (anything else)."""
    if runs.controlled_by(existing, owner.uid):
        return
    if runs.left_by_namesake(existing, KIND, owner.name, owner.uid):
        raise Requeue(2.0, f"{existing['kind']} {existing['metadata']['name']} belongs to an "
                      "earlier FineTuneJob of this name; waiting for the garbage collector")  # fmt: skip
    raise NameConflict(existing)


def ensure(kube: Kube, obj: dict[str, Any], owner: Owner) -> None:
    """Create `obj`, or bring our existing one with its name in line (content). An object of
    that name that is not ours is never changed (NameConflict)."""
    existing, created = kube.create(obj)
    if created:
        return
    _check_ours(existing, owner)
    if not _differs(existing, obj):
        return
    meta = obj["metadata"]
    # ConfigMaps are immutable, and so is a RoleBinding's roleRef: those are replaced whole. So
    # is our Service whose selector was changed (the group's rendezvous goes where it points).
    recreate = obj["kind"] in ("ConfigMap", "Service") or (
        "roleRef" in obj and existing.get("roleRef") != obj["roleRef"]
    )
    log.info("updating %s %s (content changed)", obj["kind"], meta["name"])
    if recreate:
        kube.delete(obj["kind"], meta["namespace"], meta["name"], uid=existing["metadata"]["uid"])
        kube.create(obj)
    else:
        patch: dict[str, Any] = {"metadata": {"labels": meta["labels"]}}
        for key in ("rules", "subjects"):
            if key in obj:
                patch[key] = obj[key]
        kube.merge_patch(obj["kind"], meta["namespace"], meta["name"], patch)


# API answers that retrying the same request cannot change: the server refused the object itself
# (invalid: 400/422; forbidden by RBAC, a quota or an admission policy or webhook: 403).
REFUSED = (400, 403, 422)


class ChildRefused(Exception):
    """The API server refused to create or update one of a run's children: the FineTuneJob is
    Stalled (reason ChildRejected) with the server's own message, in the same pass, instead of
    a retry loop visible only in the operator's log. The next pass (resync) tries again, so a
    raised quota or a relaxed policy lets the run start."""

    def __init__(self, obj: dict[str, Any], error: ApiError) -> None:
        self.kind = obj["kind"]
        self.name = obj["metadata"]["name"]
        super().__init__(f"the API server refused {self.kind} {self.name}: {error}")


def start_run(
    kube: Kube, spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> dict[str, Any]:
    """Create everything run `run` needs; the Job last. Returns the Job (new or existing)."""
    objects = render.run_objects(spec, owner, run, settings)
    current = objects[0]
    try:
        for obj in objects[:-1]:
            current = obj
            ensure(kube, obj, owner)
        current = objects[-1]
        job, created = kube.create(objects[-1])
    except ApiError as e:
        if e.status in REFUSED:
            raise ChildRefused(current, e) from None
        raise
    _check_ours(job, owner)
    if created:
        log.info(
            "created Job %s for run %d (generation %d)",
            job["metadata"]["name"],
            run.number,
            run.generation,
        )
    return job


def delete_run(kube: Kube, owner: Owner, job_name: str) -> None:
    """Delete a run's Job, ConfigMap and (multi-pod runs, group.py) headless Service, each
    only if this FineTuneJob controls it (checked by uid, which the API server enforces as a
    delete precondition). The Job goes last: the next pass finds the run to delete through its
    Job, so a crash in between must not leave the others behind without it."""
    for kind in ("Service", "ConfigMap", "Job"):
        obj = kube.get(path(kind, owner.namespace, job_name))
        if obj is not None and runs.controlled_by(obj, owner.uid):
            kube.delete(kind, owner.namespace, job_name, uid=obj["metadata"]["uid"])


def _pods(kube: Kube, owner: Owner, run: int, job: dict[str, Any]) -> list[dict[str, Any]]:
    uid = job["metadata"].get("uid")
    pods = kube.list_objects(path("Pod", owner.namespace), render.selector(owner.name, run))
    return [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/controller-uid") == uid
        or any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
    ]


def _workload(kube: Kube, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """Kueue's Workload of a Job in a queue (None: not queued, or no Workload (yet)). A cluster
    without Kueue has no such resource (404); a chart without the rule, 403: both only mean the
    status has no queue details."""
    if queueing.queue_name(job) is None:
        return None
    try:
        items = kube.list_objects(path("Workload", namespace), queueing.workload_selector(job))
    except ApiError as e:
        if e.status in (403, 404):
            log.debug("no Kueue Workloads readable: %s", e)
            return None
        raise
    uid = job["metadata"].get("uid")
    ours = [
        w
        for w in items
        if any(ref.get("uid") == uid for ref in w["metadata"].get("ownerReferences") or [])
    ]
    ours.sort(key=lambda w: str(w["metadata"].get("creationTimestamp") or ""))
    return ours[-1] if ours else None


def _sync_active(
    kube: Kube, namespace: str, workload: dict[str, Any], ftj: dict[str, Any]
) -> dict[str, Any]:
    """runPolicy.suspend of a queued run is Kueue's `spec.active` on its Workload: Kueue would
    unsuspend an admitted Job that only the operator suspended, and deactivating the Workload is
    how Kueue is told to stop a workload and keep it stopped (evicted, not requeued)."""
    suspend = bool(((ftj.get("spec") or {}).get("runPolicy") or {}).get("suspend", False))
    if (workload.get("spec") or {}).get("active", True) != suspend:
        return workload
    name = workload["metadata"]["name"]
    try:
        patched = kube.merge_patch("Workload", namespace, name, {"spec": {"active": not suspend}})
    except ApiError as e:
        log.warning("could not set Workload %s active=%s: %s", name, not suspend, e)
        return workload
    log.info("Workload %s %s", name, "deactivated" if suspend else "activated")
    return patched


# ------------------------------------------------------------------------------- the pass


def handle_reconcile(
    kube: Kube,
    settings: OperatorSettings,
    namespace: str,
    name: str,
    *,
    now: datetime | None = None,
) -> Outcome:
    live = kube.get_finetunejob(namespace, name)
    if live is None:
        return Outcome(phase=None)
    # Decide and derive from the operator's own record, not from a status the trainer's
    # identity can write (ledger.py); patches still diff against the live status.
    ftj = ledger.trusted_view(live)
    meta = ftj["metadata"]
    old_status = ftj.get("status") or {}
    if meta.get("deletionTimestamp"):
        # Children go with it through their ownerReferences; artifacts in S3 stay.
        return Outcome(phase=old_status.get("phase"))
    owner = Owner(namespace, name, meta["uid"])
    generation = int(meta.get("generation") or 1)

    spec, problem = spec_problem(ftj.get("spec") or {}, name, settings, namespace)
    desired_hash = runs.spec_hash(spec) if spec is not None else ""
    jobs = [
        j
        for j in kube.list_objects(path("Job", namespace), render.selector(name))
        if runs.controlled_by(j, owner.uid)
    ]
    policy = runs.policy_of(ftj)
    decision = runs.decide(ftj, jobs, desired_hash, runnable=problem is None, policy=policy)

    base: chain.Base | None = None
    waiting_for_base: tuple[str, str] | None = None
    if decision.start is not None and spec is not None:
        resolved = resolve_base(kube, spec, namespace)
        if isinstance(resolved, chain.Blocked):
            if resolved.waiting:
                waiting_for_base = (resolved.reason, resolved.message)
            else:
                problem = (resolved.reason, resolved.message)
            decision = runs.decide(ftj, jobs, desired_hash, runnable=False, policy=policy)
        else:
            base = resolved

    if decision.start is not None:
        assert spec is not None
        try:
            job = start_run(
                kube, spec, owner, Run(decision.start, generation, desired_hash, base), settings
            )
            jobs = [j for j in jobs if runs.run_of(j) != decision.start] + [job]
        except NameConflict as e:
            log.warning("%s", e)
            problem = (Reason.NAME_CONFLICT.value, str(e))
            decision = runs.decide(ftj, jobs, desired_hash, runnable=False, policy=policy)
        except ChildRefused as e:
            log.warning("%s", e)
            problem = (Reason.CHILD_REJECTED.value, str(e))
            decision = runs.decide(ftj, jobs, desired_hash, runnable=False, policy=policy)
    for job_name in decision.delete:
        log.info("deleting Job %s of an earlier run", job_name)
        delete_run(kube, owner, job_name)
    current = next((j for j in jobs if runs.run_of(j) == decision.current_run), None)
    if current is not None and decision.suspend is not None:
        suspend_patch: dict[str, Any] = {
            "metadata": {
                "annotations": {render.ANN_SUSPEND: "true" if decision.suspend else "false"}
            },
            "spec": {"suspend": decision.suspend},
        }
        if not decision.suspend and queueing.queue_name(current) is not None:
            # A queued Job is started by Kueue when it admits it, never by the operator.
            del suspend_patch["spec"]
        current = kube.merge_patch("Job", namespace, current["metadata"]["name"], suspend_patch)
        log.info(
            "%s Job %s", "suspended" if decision.suspend else "resumed", current["metadata"]["name"]
        )

    pods = _pods(kube, owner, decision.current_run, current) if current is not None else []
    workload = _workload(kube, namespace, current) if current is not None else None
    if workload is not None:
        workload = _sync_active(kube, namespace, workload, ftj)
    gpu_resources = {settings.gpu_resource_name}
    if spec is not None and spec.resources.gpu_resource_name:
        gpu_resources.add(spec.resources.gpu_resource_name)
    display = getattr(spec.model, "display", None) if spec is not None else None
    now = now or datetime.now(UTC)
    derived = status.derive(
        ftj,
        decision,
        current,
        pods,
        now=now,
        gpu_resources=gpu_resources,
        problem=problem,
        model=display() if callable(display) else None,
        waiting_for_base=waiting_for_base,
        policy=policy,
        workload=workload,
    )
    # Events first: a crash between the two repeats an Event rather than losing it.
    for ev in derived.events:
        kube.post_event(ftj, ev.type, ev.reason, ev.message, COMPONENT, settings.identity)
        metrics.EVENTS.labels(ev.type, ev.reason).inc()
        log.info("event %s %s: %s", ev.type, ev.reason, ev.message)
    patch = status.status_patch(live, derived)
    record = ledger.record_patch(live, derived.status)
    try:
        # The record first: a crash in between leaves a record newer than the status, which
        # the next pass re-derives and writes; never a status without its record.
        if record is not None:
            kube.merge_patch("FineTuneJob", namespace, name, record)
        if patch is not None:
            kube.patch_status(namespace, name, patch)
    except ApiError as e:
        if e.status == 404:
            return Outcome(phase=None)
        raise
    if patch is not None:
        gained = float(derived.status.get("gpuSeconds") or 0) - float(
            old_status.get("gpuSeconds") or 0
        )
        if gained > 0:
            metrics.GPU_SECONDS.inc(gained)
        if derived.status.get("phase") != old_status.get("phase"):
            log.info(
                "phase %s -> %s (%s)",
                old_status.get("phase"),
                derived.status.get("phase"),
                derived.status.get("message"),
            )
    if (
        current is not None
        and runs.job_finished(current) is None
        and not runs.job_deleting(current)
        and derived.status.get("phase") == Phase.FAILED.value
    ):
        # Only a group past its scheduling deadline is Failed while its Job runs
        # (podset.scheduling_overdue): stop its pods, so the GPUs of those that were scheduled
        # are released. The outcome is recorded above, so the missing Job changes nothing.
        log.info("deleting Job %s: %s", current["metadata"]["name"], derived.status.get("message"))
        kube.delete(
            "Job",
            namespace,
            current["metadata"]["name"],
            propagation="Background",
            uid=current["metadata"].get("uid"),
        )
    # runPolicy.ttlSecondsAfterFinished: finished Jobs go only after their outcome is recorded.
    ttl = policy.ttl_seconds_after_finished
    expired, next_expiry = runs.expired_jobs(
        jobs,
        int(derived.status.get("run") or 0),
        derived.status.get("phase") in runs.TERMINAL,
        ttl,
        now,
    )
    for job_name in expired:
        log.info("deleting Job %s: ttlSecondsAfterFinished (%ss) passed", job_name, ttl)
        delete_run(kube, owner, job_name)
    waits = [1.0] if decision.deferred else []
    if waiting_for_base is not None:
        waits.append(settings.base_poll_seconds)
    if next_expiry is not None:
        waits.append(next_expiry + 0.5)
    requeue = min(waits) if waits else None
    return Outcome(
        phase=derived.status.get("phase"), patched=patch is not None, requeue_after=requeue
    )
