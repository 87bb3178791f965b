"""The FineTuneJob resource: spec (from the trainer's config contract) plus status.

Status is written by the operator only (the status subresource), except `status.progress`,
which the trainer patches through its per-job ServiceAccount. Condition types and reasons live
here, in one place, so status derivation, events, docs and tests agree on the vocabulary.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from kubetune_trainer.config import (
    API_GROUP,
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    FineTuneJobSpec,
    Progress,
    Spec,
)
from pydantic import ConfigDict, Field, model_validator

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "Artifacts",
    "Condition",
    "ConditionType",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Phase",
    "Reason",
    "RunRecord",
]


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    """kstatus-compatible: `Ready` is the summary; `Succeeded`/`Failed` are terminal so that
    `kubectl wait --for=condition=Succeeded` works; `Reconciling`/`Stalled` are what Flux's
    kstatus reads for in-progress / stuck."""

    READY = "Ready"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(StrEnum):
    """CamelCase reasons for conditions and events."""

    # Pending / scheduling
    CREATED = "Created"
    WAITING_FOR_POD = "WaitingForPod"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CONTAINER_CREATING = "ContainerCreating"
    INVALID_SPEC = "InvalidSpec"
    SERVICE_ACCOUNT_NOT_ALLOWED = "ServiceAccountNotAllowed"
    NAME_CONFLICT = "NameConflict"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"
    TRACKING_HOST_NOT_ALLOWED = "TrackingHostNotAllowed"
    QUEUED = "Queued"
    # Running
    TRAINING = "Training"
    RETRYING = "Retrying"
    # Terminal
    COMPLETED = "Completed"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    TRAINER_ERROR = "TrainerError"
    DATASET_ERROR = "DatasetError"
    MODEL_ERROR = "ModelError"
    CONFIG_ERROR = "ConfigError"
    ARTIFACTS_MISSING = "ArtifactsMissing"
    NON_FINITE_LOSS = "NonFiniteLoss"
    GPU_OUT_OF_MEMORY = "GpuOutOfMemory"
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"
    STORAGE_CONFLICT = "StorageConflict"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    POD_KILLED = "PodKilled"
    JOB_DELETED = "JobDeleted"
    # Suspend / spec changes
    SUSPENDED = "Suspended"
    PREEMPTED = "Preempted"
    RESUMED = "Resumed"
    SPEC_CHANGED = "SpecChanged"
    RESTARTED = "Restarted"
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"


class Condition(Spec):
    """A condition per the Kubernetes API conventions (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    type: str = Field(max_length=316, description="Condition type, e.g. Succeeded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )


class Artifacts(Spec):
    """Where a run's outputs are. A URI appears only once its upload is complete and verified."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    adapter_uri: str | None = Field(
        default=None, description="s3:// prefix of the adapter (PEFT format)."
    )
    merged_model_uri: str | None = Field(
        default=None, description="s3:// prefix of the merged standalone model."
    )
    manifest_uri: str | None = Field(
        default=None, description="s3:// URI of manifest.json (written last; lists every file)."
    )
    manifest_sha256: str | None = Field(default=None, description="sha256 of manifest.json.")
    metrics_uri: str | None = Field(default=None, description="s3:// URI of metrics.json.")
    checkpoint_uri: str | None = Field(
        default=None, description="s3:// prefix of the latest checkpoint."
    )


class RunRecord(Spec):
    """A past run, kept in status.history."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    run: int = Field(ge=1, description="Run number.")
    generation: int | None = Field(default=None, description="metadata.generation it ran.")
    outcome: str = Field(max_length=64, description="Succeeded, Failed, Superseded or Cancelled.")
    reason: str | None = Field(default=None, max_length=1024, description="Reason of the outcome.")
    start_time: str | None = Field(default=None, description="When the run started.")
    completion_time: str | None = Field(default=None, description="When it ended.")
    artifacts: Artifacts | None = Field(default=None, description="What it wrote.")
    metrics: dict[str, float] | None = Field(default=None, description="Its final metrics.")
    gpu_seconds: float | None = Field(
        default=None, ge=0, description="GPU-seconds its pods used (part of status.gpuSeconds)."
    )


class FineTuneJobStatus(Spec):
    """Observed state, written by the operator (progress by the trainer)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    phase: Phase | None = Field(
        default=None, description="Pending, Running, Succeeded, Failed or Suspended."
    )
    model: str | None = Field(
        default=None,
        max_length=1024,
        description="The base model in one line (hub id[@revision], s3:// URI or "
        "pvc://claim/path; see ModelSource.display()), for the Model column of kubectl get.",
    )
    progress_summary: str | None = Field(
        default=None,
        max_length=64,
        description="step/totalSteps (pct%) of the current run (see Progress.summary()), for "
        "the Progress column of kubectl get.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Running, Succeeded, Failed, Suspended, Reconciling, Stalled.",
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status reflects."
    )
    run: int | None = Field(default=None, ge=1, description="Current run number.")
    run_generation: int | None = Field(
        default=None, description="metadata.generation the current run trains."
    )
    spec_hash: str | None = Field(
        default=None, description="Hash of the training-relevant spec of the current run."
    )
    queued_generation: int | None = Field(
        default=None, description="A generation waiting to run after the current run (Queue)."
    )
    job_name: str | None = Field(
        default=None, description="Name of the current run's batch/v1 Job."
    )
    start_time: str | None = Field(default=None, description="When the current run started.")
    completion_time: str | None = Field(default=None, description="When the current run ended.")
    progress: Progress | None = Field(default=None, description="Live progress from the trainer.")
    metrics: dict[str, float] | None = Field(default=None, description="Final evaluation metrics.")
    artifacts: Artifacts | None = Field(default=None, description="The current run's artifacts.")
    attempts: int | None = Field(
        default=None, ge=0, description="Pods started for the current run."
    )
    gpu_seconds: float | None = Field(
        default=None, ge=0, description="GPU-seconds used by all runs of this job."
    )
    message: str | None = Field(default=None, max_length=32768, description="Summary of the state.")
    history: list[RunRecord] | None = Field(
        default=None, max_length=20, description="Past runs, newest last (at most 20)."
    )


class FineTuneJob(Spec):
    """A fine-tuning run of a transformer model: a base model, data, a method and an S3
    destination. The operator runs it as a batch/v1 Job and keeps the status true."""

    # metadata.name is at most MAX_NAME_LENGTH characters: checked below, and in the CRD by
    # `maxLength` on metadata.name (crdgen), which the API server reports as
    # "metadata.name: Too long".
    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", description="kubetune.io/v1alpha1"
    )
    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="FineTuneJob")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    # The CRD defaults `status` to observedGeneration 0 (applied when the API server reads the
    # object), so before the operator's first write kstatus/Flux read InProgress (generation 1
    # not observed yet) instead of Current, and Argo CD reads Progressing.
    status: FineTuneJobStatus | None = Field(
        default=None,
        description="Observed state.",
        json_schema_extra={"default": {"observedGeneration": 0}},
    )

    @model_validator(mode="after")
    def _check(self) -> FineTuneJob:
        name = self.metadata.get("name")
        if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"metadata.name: metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(the run's Job is named <name>-run-<n>)"
            )
        return self
