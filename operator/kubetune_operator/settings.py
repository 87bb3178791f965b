"""Operator configuration from the environment (docs/design.md, "Operator configuration").

Every knob is a `KUBETUNE_*` variable (the Helm chart sets them). Lists and maps that the design
documents as JSON are parsed as JSON; `KUBETUNE_NAMESPACES` and `KUBETUNE_ALLOWED_SERVICE_ACCOUNTS`
are comma-separated. Invalid values stop the operator at start with a message naming the variable.
"""

from __future__ import annotations

import json
import os
import socket
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _package_version() -> str:
    try:
        return version("kubetune")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _pod_namespace() -> str:
    """The operator's own namespace: POD_NAMESPACE (downward API), the in-cluster SA file, or
    `default` when running outside a cluster."""
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


class OperatorSettings(BaseSettings):
    """The operator's configuration. Construct with `OperatorSettings()` to read the environment."""

    model_config = SettingsConfigDict(env_prefix="KUBETUNE_", extra="ignore", frozen=True)

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty = all (cluster-wide)."
    )
    trainer_image: str = Field(
        default_factory=lambda: f"ghcr.io/kubetune/trainer:{_package_version()}",
        description="Default trainer image.",
    )
    trainer_command: list[str] = Field(
        default_factory=lambda: ["kubetune-train"],
        min_length=1,
        description="Trainer entry command (JSON list); `--config <path>` is passed as args.",
    )
    gpu_resource_name: str = Field(default="nvidia.com/gpu")
    gpu_product_label: str = Field(default="nvidia.com/gpu.product")
    default_node_selector: dict[str, str] = Field(default_factory=dict)
    default_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    default_cpu: str | None = None
    default_memory: str | None = None
    default_shm_size: str = Field(
        default="1Gi", description="/dev/shm size without shmSize/memory."
    )
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_credentials_secret: str | None = None
    allowed_service_accounts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Secrets a spec may reference (name, or namespace/name). Empty: none. "
        "Allowing one lets anyone who may create a FineTuneJob in that namespace read it.",
    )
    allowed_tracking_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (host or host:port) a spec may send tracking data and tokens to "
        "(tracking.mlflow.trackingUri, tracking.wandb.baseUrl), and S3 endpoints other than "
        "the operator's (output.endpoint). Empty: none.",
    )
    trainer_image_pull_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Pull secrets of every trainer pod (its namespace's)."
    )
    extra_ca_bundle_config_map: str | None = Field(
        default=None,
        description="ConfigMap (in the run's namespace) with a PEM bundle every trainer trusts.",
    )
    extra_ca_bundle_key: str = Field(default="ca.crt", description="Its key.")
    # Guardrails (chart values guardrails.*; kubetune_operator.policy).
    allowed_priority_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="PriorityClasses a spec may name. Empty: any but system-*.",
    )
    allowed_toleration_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Taint keys a spec may tolerate. Empty: any key."
    )
    allow_wildcard_toleration: bool = Field(
        default=False, description="Allow a toleration without a key (tolerates every taint)."
    )
    image_override_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces where resources.image may replace the trainer image (* for all).",
    )
    trust_remote_code_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces where model.trustRemoteCode may be true (* for all).",
    )
    namespace_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="JSON: namespace (or *) to {gpus, nodes, activeDeadlineSeconds} maxima.",
    )
    schedule_watch_prefixes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="JSON: namespace (or *) to the S3 URI prefixes a FineTuneSchedule there may "
        "watch for datasetChange ({namespace} is replaced by the namespace). Empty: none; the "
        "operator reads them with its own credentials.",
    )
    allow_cross_namespace_model_refs: bool = Field(
        default=False,
        description="spec.model.fromJob may name a FineTuneJob in another namespace (whose "
        "artifacts the job then reads with its own credentials).",
    )
    base_poll_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a job waiting for its spec.model.fromJob base looks again.",
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="0 disables /metrics.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="0 disables /healthz.")
    leader_election: bool = True
    lease_namespace: str = Field(default_factory=_pod_namespace)
    lease_name: str = "kubetune-operator"
    lease_duration_seconds: float = Field(default=15.0, gt=1)
    lease_renew_seconds: float = Field(default=5.0, gt=0)
    progress_interval_seconds: float = Field(default=10.0, ge=0)
    s3_retry_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long the trainer retries S3 connection errors before the attempt fails "
        "(KUBETUNE_S3_RETRY_SECONDS).",
    )
    resync_seconds: float = Field(
        default=60.0, gt=0, description="Safety-net re-reconcile of every FineTuneJob."
    )
    identity: str = Field(
        default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname(),
        description="This replica's name in the Lease and in Events.",
    )
    log_level: str = "INFO"

    @field_validator(
        "namespaces",
        "allowed_service_accounts",
        "allowed_secrets",
        "allowed_tracking_hosts",
        "allowed_priority_classes",
        "trainer_image_pull_secrets",
        "allowed_toleration_keys",
        "image_override_namespaces",
        "trust_remote_code_namespaces",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("trainer_command", "default_tolerations", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else []
        return value

    @field_validator(
        "default_node_selector", "namespace_limits", "schedule_watch_prefixes", mode="before"
    )
    @classmethod
    def _json_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        return value

    @field_validator("schedule_watch_prefixes")
    @classmethod
    def _watch_prefixes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from .fingerprint import NAMESPACE_PLACEHOLDER, normalise_uri

        for ns, prefixes in value.items():
            for p in prefixes:
                if normalise_uri(p.replace(NAMESPACE_PLACEHOLDER, "ns")) is None:
                    raise ValueError(
                        f"{ns}: {p!r} is no s3://bucket[/prefix] without ./.. segments "
                        "(KUBETUNE_SCHEDULE_WATCH_PREFIXES, chart value schedules.watchPrefixes)"
                    )
        return value
