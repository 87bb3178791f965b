"""`spec.resources`: GPUs, nodes, distribution strategy and scheduling."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
)

from ._base import (
    INT32_MAX,
    NAME_PATTERN,
    LabelValue,
    Quantity,
    ResourceName,
    Spec,
    WireInt,
    cel,
    validations,
)
from .affinity import LABEL_KEY_PATTERN, Affinity

# ---------------------------------------------------------------------------------------------
# Resources and scheduling
# ---------------------------------------------------------------------------------------------


class Toleration(Spec):
    """A pod toleration (as core/v1 Toleration, with the same rules, so that a bad one is refused
    at apply time rather than when the operator creates the pod)."""

    api_path = "spec.resources.tolerations"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.key) && self.key != '') || "
                "(has(self.operator) && self.operator == 'Exists')",
                "operator must be Exists when key is empty",
                ".operator",
            ),
            cel(
                "!has(self.operator) || self.operator != 'Exists' || "
                "!has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                ".value",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies only to effect NoExecute",
                ".tolerationSeconds",
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=316, description="Taint key; empty matches all."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches all."
    )
    toleration_seconds: WireInt | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="For NoExecute: how long the pod stays bound after the taint.",
    )


class DistributionStrategy(StrEnum):
    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"


class DistributionSpec(Spec):
    """How the processes of a run share the work (docs/scaling.md)."""

    strategy: DistributionStrategy = Field(
        default=DistributionStrategy.AUTO,
        description="auto (picked from the model's size, the method and the GPU's memory), ddp "
        "(every process holds the whole model; LoRA/QLoRA/prompt methods that fit one GPU) or "
        "fsdp (parameters, gradients and optimizer state sharded across all processes; full "
        "fine-tuning and models that do not fit one GPU, QLoRA included).",
    )
    processes_per_node: WireInt | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Training processes per pod. Default: one per GPU (gpus), or 1 on CPU. "
        "With GPUs it must equal gpus (every reserved GPU does work); set it only to run "
        "several CPU processes (tests).",
    )


class ResourcesSpec(Spec):
    """Compute resources and placement of the trainer pod."""

    api_path = "spec.resources"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches('"
                + LABEL_KEY_PATTERN
                + "'))",
                "nodeSelector keys must be label keys ([prefix/]name, name at most 63 "
                "characters of alphanumerics, -, _ and .)",
                ".nodeSelector",
            ),
            cel(
                "!has(self.distribution) || !has(self.distribution.processesPerNode) || "
                "!has(self.gpus) || self.gpus == 0 || "
                "self.distribution.processesPerNode == self.gpus",
                "distribution.processesPerNode must equal gpus (one process per GPU, so no "
                "reserved GPU sits idle); leave it out",
                ".distribution.processesPerNode",
            ),
        )
    )

    @field_validator("node_selector", mode="before")
    @classmethod
    def _drop_null_labels(cls, value: Any) -> Any:
        # The API server prunes null map values, like null fields.
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if v is not None}
        return value

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if not re.match(LABEL_KEY_PATTERN, key) or len(key) > 316:
                raise ValueError(
                    "nodeSelector keys must be label keys ([prefix/]name, name at most 63 "
                    "characters of alphanumerics, -, _ and .)"
                )
        return value

    gpus: WireInt = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs per node, requested as the operator's GPU resource name "
        "(nvidia.com/gpu by default). 0 runs on CPU (tests, tiny models).",
    )
    gpu_type: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="GPU product, e.g. NVIDIA-H100-80GB-HBM3; becomes a node selector on the "
        "operator's GPU product label (nvidia.com/gpu.product by default).",
    )
    gpu_resource_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$",
        description="Extended resource to request instead of the operator default "
        "(e.g. nvidia.com/mig-1g.10gb).",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 8.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit, e.g. 64Gi. Exceeding it is OOMKilled."
    )
    ephemeral_storage: Quantity | None = Field(
        default=None, description="Scratch disk for model downloads and checkpoints, e.g. 200Gi."
    )
    shm_size: Quantity | None = Field(
        default=None, description="Size of /dev/shm for data loaders; default 1Gi or memory/4."
    )
    nodes: WireInt = Field(
        default=1,
        ge=1,
        le=64,
        description="Nodes (pods) to train on; each gets `gpus` GPUs. More than 1 runs the pods "
        "as one group (an Indexed Job): one pod failing restarts them all from the last "
        "checkpoint.",
    )
    distribution: DistributionSpec = Field(
        default_factory=DistributionSpec,
        description="How several processes share the work (strategy auto/ddp/fsdp).",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=64,
        description="Extra node labels the trainer pod requires (label key to value).",
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Tolerations, added to the operator's defaults."
    )
    affinity: Affinity | None = Field(
        default=None,
        description="A core/v1 Affinity for the trainer pod (nodeAffinity, podAffinity, "
        "podAntiAffinity), checked as the core type at apply.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=NAME_PATTERN, description="PriorityClass for the pod."
    )
    service_account_name: ResourceName | None = Field(
        default=None,
        description="Run the trainer as this existing ServiceAccount instead of the per-job one "
        "(e.g. for cloud IAM). Only names in the operator's allowedServiceAccounts are accepted: "
        "choosing a pod's identity is a privilege.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@\-]*$",
        description="Trainer image override; default the operator's trainer image.",
    )

    def processes_per_node(self) -> int:
        """Training processes in one pod: one per GPU; on CPU processesPerNode (default 1)."""
        if self.gpus:
            return self.gpus
        return self.distribution.processes_per_node or 1

    def world_size(self) -> int:
        """Training processes in the run, over all its pods."""
        return self.processes_per_node() * self.nodes
