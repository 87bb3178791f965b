"""The platform team's guardrails (chart values `guardrails.*`), checked on every spec.

The chart also renders the same rules as a ValidatingAdmissionPolicy, so the API server refuses a
violating FineTuneJob at `kubectl apply` (helm/kubetune/templates/guardrails-policy.yaml). This
module is the same policy at reconcile: it covers objects created before the policy existed, a
chart installed with the admission policy off, and an operator upgraded with stricter values. A
violation stops the run (Failed, Stalled) with the field and the chart value to change; no Job
is created. Pure: settings in, a `RenderError` or nothing out.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import FineTuneJobSpec, Reason
from pydantic import BaseModel, ConfigDict, Field

from .settings import OperatorSettings

# Priority classes every cluster has, which place a pod above the cluster's own workloads.
SYSTEM_PRIORITY_PREFIX = "system-"
ANY_NAMESPACE = "*"


class PolicyError(Exception):
    """A spec the platform's guardrails do not allow."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NamespaceLimits(BaseModel):
    """Upper bounds for one namespace (`guardrails.limits.<namespace>`; `*` for the rest)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    gpus: int | None = Field(default=None, ge=0, description="Most GPUs per node (pod).")
    nodes: int | None = Field(default=None, ge=1, description="Most nodes (pods) per run.")
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        alias="activeDeadlineSeconds",
        description="Longest runPolicy.activeDeadlineSeconds; also the value a run without one "
        "must set.",
    )


def limits_for(settings: OperatorSettings, namespace: str) -> NamespaceLimits:
    """The namespace's own limits, else the `*` entry, else none."""
    table = settings.namespace_limits
    raw: Any = table.get(namespace, table.get(ANY_NAMESPACE, {}))
    return NamespaceLimits.model_validate(raw)


def _allowed_in(namespaces: list[str], namespace: str) -> bool:
    return ANY_NAMESPACE in namespaces or namespace in namespaces


def check_priority_class(spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    name = spec.resources.priority_class_name
    if name is None:
        return
    allowed = settings.allowed_priority_classes
    if allowed:
        if name in allowed:
            return
        why = f"not in the platform's allowed priority classes ({', '.join(allowed)})"
    elif name.startswith(SYSTEM_PRIORITY_PREFIX):
        why = "a system priority class (it would let the run preempt the cluster's own pods)"
    else:
        return
    raise PolicyError(
        Reason.PRIORITY_CLASS_NOT_ALLOWED,
        f"spec.resources.priorityClassName: {name!r} is {why}; remove the field or ask a "
        "platform admin to add it to the chart value guardrails.allowedPriorityClasses",
    )


def check_tolerations(spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    keys = settings.allowed_toleration_keys
    for i, tol in enumerate(spec.resources.tolerations or []):
        field = f"spec.resources.tolerations[{i}]"
        if not tol.key:
            if settings.allow_wildcard_toleration:
                continue
            raise PolicyError(
                Reason.TOLERATION_NOT_ALLOWED,
                f"{field}: a toleration without a key tolerates every taint (it would place the "
                "run on any reserved or failing node); name the taint's key, or ask a platform "
                "admin to set the chart value guardrails.allowWildcardToleration",
            )
        if keys and tol.key not in keys:
            raise PolicyError(
                Reason.TOLERATION_NOT_ALLOWED,
                f"{field}.key: {tol.key!r} is not in the platform's allowed toleration keys "
                f"({', '.join(keys)}; chart value guardrails.allowedTolerationKeys)",
            )


def check_limits(spec: FineTuneJobSpec, namespace: str, settings: OperatorSettings) -> None:
    limits = limits_for(settings, namespace)
    res = spec.resources
    where = f"the limit for namespace {namespace} (chart value guardrails.limits)"
    if limits.gpus is not None and res.gpus > limits.gpus:
        raise PolicyError(
            Reason.LIMIT_EXCEEDED,
            f"spec.resources.gpus: {res.gpus} is above {where}: at most {limits.gpus}",
        )
    if limits.nodes is not None and res.nodes > limits.nodes:
        raise PolicyError(
            Reason.LIMIT_EXCEEDED,
            f"spec.resources.nodes: {res.nodes} is above {where}: at most {limits.nodes}",
        )
    most = limits.active_deadline_seconds
    deadline = spec.run_policy.active_deadline_seconds
    if most is not None and (deadline is None or deadline > most):
        have = "unset" if deadline is None else str(deadline)
        raise PolicyError(
            Reason.LIMIT_EXCEEDED,
            f"spec.runPolicy.activeDeadlineSeconds: {have} is above {where}: set it to at "
            f"most {most}",
        )


def check_privileged_fields(
    spec: FineTuneJobSpec, namespace: str, settings: OperatorSettings
) -> None:
    """A custom image and remote model code both run code of the author's choosing in the
    trainer pod, with its S3 credentials: only where the platform allows it."""
    if spec.resources.image and not _allowed_in(settings.image_override_namespaces, namespace):
        raise PolicyError(
            Reason.IMAGE_OVERRIDE_NOT_ALLOWED,
            f"spec.resources.image: overriding the trainer image is not allowed in namespace "
            f"{namespace}; remove the field, or ask a platform admin to add the namespace to "
            "the chart value guardrails.imageOverrideNamespaces",
        )
    if spec.model.trust_remote_code and not _allowed_in(
        settings.trust_remote_code_namespaces, namespace
    ):
        raise PolicyError(
            Reason.TRUST_REMOTE_CODE_NOT_ALLOWED,
            f"spec.model.trustRemoteCode: running the model repository's own code is not "
            f"allowed in namespace {namespace}; pick a model supported by transformers "
            "natively, or ask a platform admin to add the namespace to the chart value "
            "guardrails.trustRemoteCodeNamespaces",
        )


def check(spec: FineTuneJobSpec, namespace: str, settings: OperatorSettings) -> None:
    """Raise PolicyError for the first guardrail the spec breaks."""
    check_priority_class(spec, settings)
    check_tolerations(spec, settings)
    check_limits(spec, namespace, settings)
    check_privileged_fields(spec, namespace, settings)
