"""What this operator admits to run, beyond schema validity (pure): the pod's ServiceAccount,
referenced Secrets and the hosts a spec sends data to must be allowed by the platform, and
resource quantities must parse. A refusal is a RenderError naming the field and the fix.
"""

from __future__ import annotations

import re
from decimal import Decimal
from urllib.parse import urlsplit

from kubetune_api.v1alpha1 import (
    FineTuneJobSpec,
    Reason,
)

from . import podoptions, policy
from .naming import RenderError, trainer_sa_name
from .settings import OperatorSettings

_SUFFIXES: dict[str, int | Decimal] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": Decimal("0.001"),
}  # fmt: skip


def parse_quantity(q: str) -> Decimal:
    """A Kubernetes resource quantity ("16Gi", "500m", "1e9") as a number of base units."""
    m = re.fullmatch(r"\s*\+?([0-9.]+)(e[+-]?[0-9]+|E[+-]?[0-9]+)?([a-zA-Z]*)\s*", q)
    if not m or m.group(3) not in _SUFFIXES:
        raise ValueError(f"not a resource quantity: {q!r}")
    number = Decimal(m.group(1) + (m.group(2) or ""))
    return number * Decimal(_SUFFIXES[m.group(3)])


def service_account(spec: FineTuneJobSpec, owner_name: str, settings: OperatorSettings) -> str:
    """The pod's ServiceAccount: the per-job one, or an allow-listed override."""
    wanted = spec.resources.service_account_name
    if wanted is None:
        return trainer_sa_name(owner_name)
    if wanted not in settings.allowed_service_accounts:
        allowed = ", ".join(settings.allowed_service_accounts) or "none"
        raise RenderError(
            Reason.SERVICE_ACCOUNT_NOT_ALLOWED,
            f"spec.resources.serviceAccountName: {wanted!r} is not in the operator's "
            f"allowed service accounts ({allowed}); remove the field to use the per-job account",
        )
    return wanted


def secret_refs(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(spec field, Secret name) of every Secret a spec makes the pod read."""
    refs: list[tuple[str, str]] = []
    if spec.model.token_secret_ref is not None:
        refs.append(("model.tokenSecretRef", spec.model.token_secret_ref.name))
    if spec.output.credentials_secret_ref is not None:
        refs.append(("output.credentialsSecretRef", spec.output.credentials_secret_ref.name))
    tracking = spec.tracking
    if tracking.mlflow is not None and tracking.mlflow.token_secret_ref is not None:
        refs.append(("tracking.mlflow.tokenSecretRef", tracking.mlflow.token_secret_ref.name))
    if tracking.wandb is not None:
        refs.append(("tracking.wandb.apiKeySecretRef", tracking.wandb.api_key_secret_ref.name))
    return refs + podoptions.secret_refs(spec)


def check_secrets(spec: FineTuneJobSpec, namespace: str, settings: OperatorSettings) -> None:
    """A Secret reference hands the Secret's value to code of the author's choosing (a custom
    image, remote model code) and to endpoints of the author's choosing: only Secrets the
    platform opted in (`trainer.allowedSecrets`) may be referenced."""
    allowed = set(settings.allowed_secrets)
    if settings.s3_credentials_secret:  # the platform's own, already given to every pod
        allowed.add(settings.s3_credentials_secret)
    for field, name in secret_refs(spec):
        if name in allowed or f"{namespace}/{name}" in allowed:
            continue
        raise RenderError(
            Reason.SECRET_NOT_ALLOWED,
            f"spec.{field}: Secret {name!r} is not in the operator's allowed Secrets; a platform "
            f"admin can allow it with the chart value trainer.allowedSecrets (e.g. "
            f"[{namespace}/{name}]), which lets anyone who may create a FineTuneJob in "
            f"{namespace} read it",
        )


def _host(url: str) -> tuple[str, str]:
    """(host, host:port) of a URL, lower-cased; port from the scheme when absent."""
    parsed = urlsplit(url if "://" in url else f"//{url}")
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
    return host, f"{host}:{port}"


def _host_allowed(url: str, allowed: list[str]) -> bool:
    host, host_port = _host(url)
    return bool(host) and any(a.lower() in (host, host_port) for a in allowed)


def check_tracking_hosts(spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    """Where a spec sends metrics, parameters and tokens: tracking servers, and an S3 endpoint
    that would receive the operator's own S3 credentials, must be opted in
    (`trainer.allowedTrackingHosts`)."""
    allowed = settings.allowed_tracking_hosts
    targets: list[tuple[str, str]] = []
    if spec.tracking.mlflow is not None:
        targets.append(("tracking.mlflow.trackingUri", spec.tracking.mlflow.tracking_uri))
    if spec.tracking.wandb is not None and spec.tracking.wandb.base_url:
        targets.append(("tracking.wandb.baseUrl", spec.tracking.wandb.base_url))
    endpoint = spec.output.endpoint
    platform_endpoint = _host(settings.s3_endpoint)[1] if settings.s3_endpoint else None
    if (
        endpoint
        and spec.output.credentials_secret_ref is None  # the operator's credentials go there
        and _host(endpoint)[1] != platform_endpoint
    ):
        targets.append(("output.endpoint", endpoint))
    for field, url in targets:
        if url.startswith("file:") or _host_allowed(url, allowed):
            continue
        host = _host(url)[0] or url
        raise RenderError(
            Reason.TRACKING_HOST_NOT_ALLOWED,
            f"spec.{field}: host {host!r} is not in the operator's allowed tracking hosts; a "
            "platform admin can allow it with the chart value trainer.allowedTrackingHosts",
        )


def check(
    spec: FineTuneJobSpec, owner_name: str, settings: OperatorSettings, namespace: str = ""
) -> None:
    """Raise RenderError if this spec cannot be run by this operator (beyond schema validity)."""
    service_account(spec, owner_name, settings)
    check_secrets(spec, namespace, settings)
    check_tracking_hosts(spec, settings)
    try:
        policy.check(spec, namespace, settings)
    except policy.PolicyError as e:
        raise RenderError(e.reason, e.message) from None
    for field, value in (
        ("resources.cpu", spec.resources.cpu),
        ("resources.memory", spec.resources.memory),
        ("resources.ephemeralStorage", spec.resources.ephemeral_storage),
        ("resources.shmSize", spec.resources.shm_size),
    ):
        if value is not None:
            try:
                parse_quantity(value)
            except ValueError as e:
                raise RenderError(Reason.INVALID_SPEC, f"spec.{field}: {e}") from None
