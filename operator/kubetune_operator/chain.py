"""`spec.model.fromJob`: jobs chain by reference (pure).

A FineTuneJob B names another one, A, as its base. When B is about to start a run the operator
reads A (through the operator's own status record, ledger.trusted_view, never A's writable
status) and either

  * resolves it: A's current run Succeeded, so B trains on A's merged model (`artifact:
    merged`), or keeps training A's adapter on A's base (`artifact: adapter`, a warm start);
  * waits (`WaitingForBase`): A does not exist yet, or has not finished;
  * refuses: A failed (`BaseFailed`), the reference crosses namespaces where the platform does
    not allow it (`BaseNotAllowed`), or A's run has no artifact of the kind asked for.

The result is pinned when B's run starts: it goes into the run's config (the trainer reads a
concrete `s3Uri`) and onto its Job as an annotation, from which `status.lineage` is derived. A
later run of A does not restart B; B's spec hash covers the reference, not A's run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import (
    BaseArtifact,
    FineTuneJobSpec,
    MethodType,
    ModelSource,
    Phase,
    Reason,
)
from pydantic import ValidationError

from .settings import OperatorSettings


@dataclass(frozen=True)
class Base:
    """What a run of B starts from."""

    model: ModelSource  # concrete: s3Uri, hubId or pvc
    adapter_uri: str | None
    lineage: dict[str, Any]


@dataclass(frozen=True)
class Blocked:
    reason: str
    message: str
    waiting: bool  # True: try again later (WaitingForBase); False: B cannot run as it is


def reference(spec: FineTuneJobSpec, namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of the base job, or None when the model is not a job reference."""
    ref = spec.model.from_job
    if ref is None:
        return None
    return ref.namespace or namespace, ref.name


def check(
    spec: FineTuneJobSpec, namespace: str, name: str, settings: OperatorSettings
) -> Blocked | None:
    """Static checks of the reference (no I/O): not itself, and another namespace only where
    the platform allows it."""
    ref = reference(spec, namespace)
    if ref is None:
        return None
    ref_ns, ref_name = ref
    if (ref_ns, ref_name) == (namespace, name):
        return Blocked(
            Reason.INVALID_SPEC.value,
            "spec.model.fromJob: a FineTuneJob cannot be its own base",
            False,
        )
    if ref_ns != namespace and not settings.allow_cross_namespace_model_refs:
        return Blocked(
            Reason.BASE_NOT_ALLOWED.value,
            f"spec.model.fromJob.namespace: {ref_ns} is another namespace, and this operator "
            "allows base jobs only in the job's own namespace (chart value "
            "modelRefs.crossNamespace). Copy the model, or ask the platform team",
            False,
        )
    return None


def _base_model_of(base_ftj: dict[str, Any], status: dict[str, Any]) -> ModelSource | None:
    """The concrete model A trained on: its spec.model, or (A itself chained) its lineage's
    model URI."""
    raw = (base_ftj.get("spec") or {}).get("model") or {}
    if "fromJob" not in raw:
        try:
            return ModelSource.model_validate(raw)
        except ValidationError:
            return None
    uri = (status.get("lineage") or {}).get("modelUri")
    return ModelSource(s3_uri=uri) if uri else None


def resolve(
    spec: FineTuneJobSpec, namespace: str, base_ftj: dict[str, Any] | None
) -> Base | Blocked:
    """Resolve B's `spec.model.fromJob` against A (`base_ftj`, its trusted view; None when A
    does not exist)."""
    ref = spec.model.from_job
    assert ref is not None
    ref_ns = ref.namespace or namespace
    who = f"FineTuneJob {ref_ns}/{ref.name}"
    if base_ftj is None:
        return Blocked(
            Reason.WAITING_FOR_BASE.value, f"waiting for {who} (spec.model.fromJob) to exist", True
        )
    status = base_ftj.get("status") or {}
    phase = status.get("phase")
    run = int(status.get("run") or 0)
    if phase == Phase.FAILED.value:
        why = _ready_reason(status) or "Failed"
        return Blocked(
            Reason.BASE_FAILED.value,
            f"the base model's job {who} failed ({why}, run {run}): "
            f"{status.get('message') or ''}".rstrip(": ")
            + ". Fix and rerun it; this job starts when it succeeds",
            False,
        )
    if phase != Phase.SUCCEEDED.value or not run:
        return Blocked(
            Reason.WAITING_FOR_BASE.value,
            f"waiting for {who} (spec.model.fromJob) to succeed; it is "
            f"{phase or 'not started'}" + (f" (run {run})" if run else ""),
            True,
        )
    artifacts = status.get("artifacts") or {}
    lineage: dict[str, Any] = {
        "namespace": ref_ns,
        "name": ref.name,
        "uid": base_ftj["metadata"].get("uid", ""),
        "run": run,
        "artifact": str(ref.artifact),
    }
    for key in ("manifestUri", "manifestSha256"):
        if artifacts.get(key):
            lineage[key] = artifacts[key]
    base_method = ((base_ftj.get("spec") or {}).get("method") or {}).get("type") or "lora"
    if ref.artifact == BaseArtifact.MERGED:
        merged = artifacts.get("mergedModelUri")
        if not merged:
            return Blocked(
                Reason.INVALID_SPEC.value,
                f"spec.model.fromJob.artifact: run {run} of {who} wrote no merged model "
                f"(method {base_method} is not merged): set artifact: adapter and method.type: "
                f"{base_method} to continue its adapter",
                False,
            )
        lineage["modelUri"] = merged
        return Base(ModelSource(s3_uri=merged), None, lineage)
    adapter = artifacts.get("adapterUri")
    if not adapter:
        return Blocked(
            Reason.INVALID_SPEC.value,
            f"spec.model.fromJob.artifact: run {run} of {who} wrote no adapter (method "
            f"{base_method}): use artifact: merged",
            False,
        )
    if MethodType(spec.method.type).value != base_method:
        return Blocked(
            Reason.INVALID_SPEC.value,
            f"spec.method.type: artifact: adapter continues {who}'s {base_method} adapter, so "
            f"method.type must be {base_method} (got {spec.method.type})",
            False,
        )
    model = _base_model_of(base_ftj, status)
    if model is None:
        return Blocked(
            Reason.INVALID_SPEC.value,
            f"spec.model.fromJob: cannot tell which base model {who} trained its adapter on",
            False,
        )
    lineage["adapterUri"] = adapter
    lineage["modelUri"] = model.display()
    return Base(model, adapter, lineage)


def _ready_reason(status: dict[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or "") or None
    return None
