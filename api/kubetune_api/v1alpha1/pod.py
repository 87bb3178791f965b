"""`spec.pod`: what platform teams hang on a trainer pod besides compute: labels and annotations
(cost allocation, queues), pull secrets, extra environment (proxies, Hub mirrors) and an extra
CA bundle. Everything kubetune itself sets stays out of reach: reserved label prefixes and
environment names are refused at apply, and a Secret reached through `envFrom` must be on the
operator's allow-list like every other Secret reference.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator

from ._base import LabelValue, ResourceName, Spec, cel, validations
from .affinity import LABEL_KEY_PATTERN

# Labels and annotations under these prefixes belong to kubetune, Kubernetes or Kueue.
RESERVED_PREFIXES = (
    "kubetune.io/",
    "batch.kubernetes.io/",
    "kueue.x-k8s.io/",
    "app.kubernetes.io/",
)
# Environment the operator sets (credentials, config, paths): an extra variable may not shadow it.
RESERVED_ENV_PREFIXES = ("KUBETUNE_", "AWS_", "HF_", "WANDB_", "MLFLOW_", "PYTORCH_", "NCCL_")
RESERVED_ENV_NAMES = ("TMPDIR", "HOME", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _reserved_key(key: str) -> bool:
    return key.startswith(RESERVED_PREFIXES)


def _reserved_env(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES


_RESERVED_KEYS_CEL = "[" + ", ".join(f"'{p}'" for p in RESERVED_PREFIXES) + "]"
_RESERVED_ENV_CEL = "[" + ", ".join(f"'{p}'" for p in RESERVED_ENV_PREFIXES) + "]"
_RESERVED_NAMES_CEL = "[" + ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES) + "]"


def _keys_rule(field: str) -> dict[str, str]:
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, k.matches('{LABEL_KEY_PATTERN}') && "
        f"!{_RESERVED_KEYS_CEL}.exists(p, k.startsWith(p)))",
        f"{field} keys must be label keys outside kubetune.io/, batch.kubernetes.io/, "
        "kueue.x-k8s.io/ and app.kubernetes.io/ (the operator and Kueue set those)",
        f".{field}",
    )


class EnvVar(Spec):
    """A plain environment variable (use envFrom for values held in a Secret)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!{_RESERVED_ENV_CEL}.exists(p, self.name.startsWith(p)) && "
                f"!(self.name in {_RESERVED_NAMES_CEL})",
                "name is reserved: the operator sets KUBETUNE_*, AWS_*, HF_*, WANDB_*, MLFLOW_*, "
                "PYTORCH_*, NCCL_*, TMPDIR, HOME and the rendezvous variables",
                ".name",
            )
        )
    )

    name: str = Field(max_length=128, pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str = Field(max_length=4096, description="Its value.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if _reserved_env(name):
            raise ValueError(
                "name is reserved: the operator sets KUBETUNE_*, AWS_*, HF_*, WANDB_*, MLFLOW_*, "
                "PYTORCH_*, NCCL_*, TMPDIR, HOME and the rendezvous variables"
            )
        return name


class LocalObjectRef(Spec):
    """An object in the FineTuneJob's namespace, by name."""

    name: ResourceName = Field(description="Its name.")


class EnvFromSource(Spec):
    """Every key of a ConfigMap or a Secret as environment variables (the Secret must be on the
    operator's allowed Secrets, chart value trainer.allowedSecrets)."""

    api_path = "spec.pod.envFrom"
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.configMapRef) != has(self.secretRef)",
                "exactly one of configMapRef, secretRef must be set",
            )
        )
    )

    config_map_ref: LocalObjectRef | None = Field(default=None, description="A ConfigMap.")
    secret_ref: LocalObjectRef | None = Field(default=None, description="A Secret.")
    prefix: str | None = Field(
        default=None, max_length=64, pattern=ENV_NAME_PATTERN, description="Prefix for its keys."
    )


class ConfigMapKeyRef(Spec):
    """A key of a ConfigMap in the FineTuneJob's namespace."""

    name: ResourceName = Field(description="The ConfigMap.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Its key."
    )


class PodOptions(Spec):
    """Metadata and environment for the run's Job and pods."""

    model_config = ConfigDict(
        json_schema_extra=validations(_keys_rule("labels"), _keys_rule("annotations"))
    )

    labels: dict[str, LabelValue] | None = Field(
        default=None, max_length=32, description="Labels on the Job and its pods."
    )
    annotations: dict[str, str] | None = Field(
        default=None, max_length=32, description="Annotations on the Job and its pods."
    )
    image_pull_secrets: list[ResourceName] | None = Field(
        default=None,
        max_length=8,
        description="Secrets (in this namespace) the kubelet pulls the trainer image with, "
        "added to the operator's trainer.imagePullSecrets.",
    )
    env: list[EnvVar] | None = Field(
        default=None, max_length=64, description="Extra plain environment variables."
    )
    env_from: list[EnvFromSource] | None = Field(
        default=None,
        max_length=8,
        description="Extra environment from ConfigMaps or allowed Secrets (proxies, HF_ENDPOINT "
        "for a Hub mirror, ...).",
    )
    extra_ca_bundle: ConfigMapKeyRef | None = Field(
        default=None,
        description="A PEM bundle (ConfigMap key) the trainer trusts in addition to the system "
        "store, for every client (S3, the Hub, tracking): a corporate TLS proxy or private CA.",
    )

    @field_validator("labels", "annotations")
    @classmethod
    def _keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if not re.match(LABEL_KEY_PATTERN, key) or _reserved_key(key):
                raise ValueError(
                    f"key {key!r}: keys must be label keys outside kubetune.io/, "
                    "batch.kubernetes.io/, kueue.x-k8s.io/ and app.kubernetes.io/ (the operator "
                    "and Kueue set those)"
                )
        return value
