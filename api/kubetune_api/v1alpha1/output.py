"""`spec.output`, `spec.tracking` and `spec.runPolicy`: where artifacts go, who hears about
the run, and what happens on failure or a spec change.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from ._base import INT32_MAX, S3Uri, Spec, WireBool, WireInt, cel, validations
from .evaluation import PromoteSpec
from .refs import S3CredentialsRef, SecretKeyRef

# ---------------------------------------------------------------------------------------------
# Output, tracking, run policy
# ---------------------------------------------------------------------------------------------


class ServerSideEncryption(StrEnum):
    NONE = "none"
    AES256 = "AES256"
    KMS = "aws:kms"


class MergedDtype(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class OutputSpec(Spec):
    """Where artifacts go. Each run writes under <uri>/<namespace>/<name>/<uid8>/run-<n>/
    (uid8: the first 8 characters of metadata.uid, so an object re-created with the same name
    never reads or touches the old one's files); artifacts are kept when the FineTuneJob is
    deleted."""

    api_path = "spec.output"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.sse != 'aws:kms' || has(self.kmsKeyId)",
                "sse aws:kms needs kmsKeyId",
                ".kmsKeyId",
            ),
            cel(
                "self.adapter || self.mergedModel",
                "write at least one of adapter, mergedModel",
                ".adapter",
            ),
        )
    )

    uri: S3Uri = Field(description="s3://bucket/prefix for this job's artifacts.")
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[!-~]*)?$",
        description="S3-compatible endpoint URL (MinIO, Ceph, R2...); default the operator's or AWS.",
    )
    region: str | None = Field(
        default=None, max_length=64, pattern=r"^[a-z0-9\-]+$", description="S3 region."
    )
    credentials_secret_ref: S3CredentialsRef | None = Field(
        default=None,
        description="Secret with S3 credentials; default the operator's. Also used to read "
        "s3:// model and dataset sources.",
    )
    sse: ServerSideEncryption = Field(
        default=ServerSideEncryption.NONE, description="Server-side encryption for uploads."
    )
    kms_key_id: str | None = Field(
        default=None, max_length=2048, description="KMS key for aws:kms."
    )
    adapter: WireBool = Field(default=True, description="Write the adapter (PEFT methods).")
    merged_model: WireBool = Field(
        default=True,
        description="Write base+adapter merged into a standalone model (LoRA-family methods; "
        "full/bitfit always write the whole model here).",
    )
    checkpoints: WireBool = Field(
        default=True, description="Upload checkpoints so an evicted or retried pod resumes."
    )
    merged_dtype: MergedDtype = Field(
        default=MergedDtype.BFLOAT16, description="Dtype of the merged model's weights."
    )
    promote: PromoteSpec | None = Field(
        default=None,
        description="Promotion gate on a test metric (needs dataset.test). A run that passes "
        "moves the pointer <uri>/<namespace>/<pointer>/promoted/promoted.json to itself; one "
        "that does not ends Succeeded with the Promoted condition False and the numbers.",
    )


class Reporter(StrEnum):
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class MlflowSpec(Spec):
    """MLflow tracking server settings."""

    tracking_uri: str = Field(
        max_length=1024, description="MLflow tracking URI, e.g. http://mlflow:5000."
    )
    experiment: str | None = Field(default=None, max_length=256, description="Experiment name.")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with a token (MLFLOW_TRACKING_TOKEN)."
    )


class WandbSpec(Spec):
    """Weights & Biases settings."""

    project: str = Field(max_length=256, description="W&B project.")
    entity: str | None = Field(default=None, max_length=256, description="W&B entity (team).")
    api_key_secret_ref: SecretKeyRef = Field(description="Secret key with the W&B API key.")
    base_url: str | None = Field(default=None, max_length=512, description="Self-hosted W&B URL.")


class TrackingSpec(Spec):
    """Experiment tracking (transformers' report_to)."""

    api_path = "spec.tracking"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.reportTo) || !('mlflow' in self.reportTo) || has(self.mlflow)",
                "reportTo mlflow needs mlflow settings",
                ".mlflow",
            ),
            cel(
                "!has(self.reportTo) || !('wandb' in self.reportTo) || has(self.wandb)",
                "reportTo wandb needs wandb settings",
                ".wandb",
            ),
        )
    )

    report_to: list[Reporter] = Field(
        default_factory=lambda: [Reporter.TENSORBOARD],
        max_length=3,
        description="Where to send metrics (each at most once): tensorboard, mlflow, wandb. "
        "TensorBoard logs are uploaded with the artifacts. [] turns tracking off.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    run_name: str | None = Field(
        default=None, max_length=256, description="Run name; default <namespace>-<name>-run-<n>."
    )
    mlflow: MlflowSpec | None = Field(default=None, description="MLflow settings.")
    wandb: WandbSpec | None = Field(default=None, description="W&B settings.")

    @model_validator(mode="after")
    def _check(self) -> TrackingSpec:
        # x-kubernetes-list-type: set in the CRD (not a CEL rule)
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError("spec.tracking.reportTo: each reporter may appear only once")
        return self


class OnSpecChange(StrEnum):
    RESTART = "Restart"
    QUEUE = "Queue"
    IGNORE = "Ignore"


class RunPolicy(Spec):
    """How runs are retried, bounded, cleaned up, paused and re-run."""

    backoff_limit: WireInt = Field(
        default=2,
        ge=0,
        le=20,
        description="Retries of a failed pod (resuming from the last checkpoint). Errors that "
        "cannot succeed on retry (bad config, bad data) fail at once.",
    )
    active_deadline_seconds: WireInt | None = Field(
        default=None, ge=60, le=INT32_MAX, description="Fail the run if it runs longer than this."
    )
    scheduling_timeout_seconds: WireInt | None = Field(
        default=None,
        ge=30,
        le=INT32_MAX,
        description="Fail a run of several pods (resources.nodes > 1) whose pods are not all "
        "scheduled after this long, releasing the GPUs of those that were (default 600). A "
        "queue (Kueue) admits the whole group at once instead.",
    )
    ttl_seconds_after_finished: WireInt | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Delete the finished run's Job and pods after this long; the FineTuneJob, "
        "its status and artifacts stay.",
    )
    suspend: WireBool = Field(
        default=False,
        description="true stops the pods (phase Suspended); false resumes from the last checkpoint.",
    )
    on_spec_change: OnSpecChange = Field(
        default=OnSpecChange.RESTART,
        description="What a changed training spec does: Restart (stop the current run, start a "
        "new one), Queue (start the new run after the current one ends), Ignore (record only).",
    )
