"""`FineTuneJob.status`: phases, conditions and reasons (one closed vocabulary, so status
derivation, events, docs and tests agree), the run history, and `status.progress`, which the
trainer patches through its per-job ServiceAccount. Everything else is written by the operator.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from ._base import JsonObject, Spec


class Progress(Spec):
    """Live training progress, patched into status.progress by the trainer (rate-limited)."""

    # A status, not user input: unknown keys are ignored and NaN/inf are not refused here.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    run: int | None = Field(default=None, ge=1, description="Run number this progress belongs to.")
    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput (tokens/s, all devices)."
    )
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds left.")
    stage: str | None = Field(
        default=None,
        max_length=64,
        description="Trainer stage: resolve, load, data, build, train, evaluate, save, merge, upload.",
    )
    updated_at: str | None = Field(
        default=None, description="When the trainer wrote this (RFC 3339)."
    )

    def summary(self) -> str | None:
        """`step/totalSteps (pct%)` for `status.progressSummary` (the Progress column of
        `kubectl get ftj`); None before the first step is known."""
        if self.step is None:
            return None
        if self.total_steps:
            return f"{self.step}/{self.total_steps} ({100 * self.step // self.total_steps}%)"
        return str(self.step)


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"  # waiting in a Kueue queue for admission (operator: queueing.py)
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
    # Set only on a Succeeded run with spec.output.promote: whether the gate moved the pointer.
    PROMOTED = "Promoted"


class Reason(StrEnum):
    """CamelCase reasons for conditions and events: the closed set the operator emits. Reasons
    from the kubelet and the Job controller are mapped onto it in one table
    (kubetune_operator/reasons.py); one it does not know becomes `ContainerWaiting`."""

    # Pending / scheduling
    CREATED = "Created"
    WAITING_FOR_POD = "WaitingForPod"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CONTAINER_CREATING = "ContainerCreating"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    RUN_CONTAINER_ERROR = "RunContainerError"
    CONTAINER_WAITING = "ContainerWaiting"
    INVALID_SPEC = "InvalidSpec"
    SERVICE_ACCOUNT_NOT_ALLOWED = "ServiceAccountNotAllowed"
    NAME_CONFLICT = "NameConflict"
    CHILD_REJECTED = "ChildRejected"  # the API server refused a child object (its message)
    SECRET_NOT_ALLOWED = "SecretNotAllowed"
    TRACKING_HOST_NOT_ALLOWED = "TrackingHostNotAllowed"
    # The platform's guardrails (chart values guardrails.*): no Job is created.
    PRIORITY_CLASS_NOT_ALLOWED = "PriorityClassNotAllowed"
    TOLERATION_NOT_ALLOWED = "TolerationNotAllowed"
    LIMIT_EXCEEDED = "LimitExceeded"
    IMAGE_OVERRIDE_NOT_ALLOWED = "ImageOverrideNotAllowed"
    TRUST_REMOTE_CODE_NOT_ALLOWED = "TrustRemoteCodeNotAllowed"
    QUEUED = "Queued"
    WAITING_FOR_BASE = "WaitingForBase"
    BASE_FAILED = "BaseFailed"
    BASE_NOT_ALLOWED = "BaseNotAllowed"
    ADMITTED = "Admitted"
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
    # The promotion gate (spec.output.promote), on the Promoted condition
    PROMOTED = "Promoted"  # the gate passed; the pointer names this run
    NOT_PROMOTED = "NotPromoted"  # the metric did not beat the previous run or the threshold
    PROMOTION_METRIC_MISSING = "PromotionMetricMissing"  # the test metric could not be computed


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


class Lineage(Spec):
    """The run of another FineTuneJob this run started from (`spec.model.fromJob`)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    namespace: str = Field(description="Namespace of the base FineTuneJob.")
    name: str = Field(description="Name of the base FineTuneJob.")
    uid: str = Field(description="Its metadata.uid (a recreated namesake is another job).")
    run: int = Field(ge=1, description="The base job's run that was used.")
    artifact: str = Field(description="merged or adapter.")
    model_uri: str | None = Field(
        default=None, description="s3:// prefix of the model trained on (merged, or the base)."
    )
    adapter_uri: str | None = Field(
        default=None, description="s3:// prefix of the adapter continued (artifact adapter)."
    )
    manifest_uri: str | None = Field(default=None, description="The base run's manifest.json.")
    manifest_sha256: str | None = Field(default=None, description="sha256 of that manifest.")


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
    promoted: bool | None = Field(
        default=None, description="Whether it passed spec.output.promote (runs with a gate)."
    )
    gpu_seconds: float | None = Field(
        default=None, ge=0, description="GPU-seconds its pods used (part of status.gpuSeconds)."
    )


class QueueStatus(Spec):
    """Where the current run stands in its Kueue queue (from Kueue's Workload of its Job)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    name: str = Field(max_length=253, description="The LocalQueue the run's Job waits in.")
    workload: str | None = Field(
        default=None, max_length=253, description="Kueue's Workload for the run's Job."
    )
    cluster_queue: str | None = Field(
        default=None, max_length=253, description="The ClusterQueue that admitted it."
    )
    admitted: bool | None = Field(default=None, description="Whether Kueue admitted it.")
    waiting_for: str | None = Field(
        default=None,
        max_length=1024,
        description="What it waits for, in Kueue's words (e.g. the quota it lacks).",
    )
    preemptions: int | None = Field(
        default=None,
        ge=0,
        description="How often Kueue preempted it (not failed attempts: it resumed from its last "
        "checkpoint each time).",
    )


class MetricPair(Spec):
    """One test metric of the base model (before training) and of the tuned model."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    base: float | None = Field(default=None, description="The base model's score.")
    tuned: float | None = Field(default=None, description="The tuned model's score.")


def evaluation_summary(
    evaluation: dict[str, dict[str, float]] | None, main: str | None
) -> str | None:
    """`status.evaluationSummary` (the Eval column): `metric base -> tuned` of the main metric
    (the promotion gate's, else the first), with an arrow for which way is better."""
    if not evaluation:
        return None
    name = main if main in evaluation else next(iter(evaluation))
    pair = evaluation[name] or {}

    def f(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, int | float) else "?"

    arrow = "↓" if name in ("loss", "perplexity") else "↑"
    return f"{name}{arrow} {f(pair.get('base'))} -> {f(pair.get('tuned'))}"


class Promotion(Spec):
    """The promotion gate's decision for the current run (spec.output.promote)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    promoted: bool = Field(description="Whether the pointer moved to this run.")
    reason: str = Field(
        max_length=64, description="Promoted, NotPromoted or PromotionMetricMissing."
    )
    metric: str = Field(max_length=64, description="The metric compared.")
    rule: str = Field(max_length=64, description="beatPrevious or threshold.")
    direction: str | None = Field(default=None, description="maximize or minimize.")
    value: float | None = Field(default=None, description="This run's test value.")
    previous: float | None = Field(
        default=None, description="beatPrevious: the promoted run's value (none: first run)."
    )
    previous_run: str | None = Field(
        default=None, max_length=1024, description="beatPrevious: the promoted run's prefix."
    )
    threshold: float | None = Field(default=None, description="rule threshold: the threshold.")
    pointer_uri: str | None = Field(
        default=None, max_length=2048, description="s3:// URI of the promoted pointer object."
    )
    message: str | None = Field(default=None, max_length=1024, description="The decision.")


class FineTuneJobStatus(Spec):
    """Observed state, written by the operator (progress by the trainer)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=True)

    phase: Phase | None = Field(
        default=None,
        description="Pending, Queued (waiting for Kueue), Running, Succeeded, Failed or "
        "Suspended (by runPolicy.suspend, or preempted by Kueue).",
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
    evaluation: dict[str, MetricPair] | None = Field(
        default=None,
        description="Test metrics (spec.dataset.test) of the base model and the tuned model, "
        "side by side: {metric: {base, tuned}}.",
    )
    evaluation_summary: str | None = Field(
        default=None,
        max_length=256,
        description="The main test metric as `metric base -> tuned`, for the Eval column of "
        "kubectl get.",
    )
    promoted: bool | None = Field(
        default=None,
        description="Whether the current run passed spec.output.promote and the promoted "
        "pointer names it (unset without a gate, or before the run ends).",
    )
    promotion: Promotion | None = Field(
        default=None, description="The promotion gate's numbers and decision."
    )
    estimate: JsonObject | None = Field(
        default=None,
        description="The dry run's estimate (spec.dryRun): rows, bad rows, tokens, steps, peak "
        "GPU memory (GiB), tokens/s, wall seconds, GPU-hours.",
    )
    artifacts: Artifacts | None = Field(default=None, description="The current run's artifacts.")
    attempts: int | None = Field(
        default=None, ge=0, description="Pods started for the current run."
    )
    gpu_seconds: float | None = Field(
        default=None, ge=0, description="GPU-seconds used by all runs of this job."
    )
    message: str | None = Field(default=None, max_length=32768, description="Summary of the state.")
    lineage: Lineage | None = Field(
        default=None,
        description="The base job run the current run started from (spec.model.fromJob).",
    )
    queue: QueueStatus | None = Field(
        default=None, description="The current run in its Kueue queue (runs with a queue only)."
    )
    history: list[RunRecord] | None = Field(
        default=None, max_length=20, description="Past runs, newest last (at most 20)."
    )
