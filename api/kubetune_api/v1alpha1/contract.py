"""The trainer contract: the resolved config the operator writes into the run's ConfigMap
(config.json), where a run writes its artifacts, and where PVCs are mounted.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
)

from ._base import S3Uri, Spec
from .spec import FineTuneJobSpec

# ---------------------------------------------------------------------------------------------
# The resolved config handed to the trainer (the ConfigMap's config.json)
# ---------------------------------------------------------------------------------------------


class JobIdentity(Spec):
    """Which FineTuneJob and run this trainer process serves."""

    namespace: str = Field(description="FineTuneJob namespace.")
    name: str = Field(description="FineTuneJob name.")
    uid: str | None = Field(default=None, description="FineTuneJob uid.")
    generation: int = Field(
        default=1, ge=1, description="metadata.generation the run was made for."
    )
    run: int = Field(default=1, ge=1, description="Run number (1, 2, ...).")


class TrainerConfig(Spec):
    """Everything the trainer needs, resolved by the operator. Holds no credential values:
    those arrive as environment variables from Secret references."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default="kubetune.io/v1alpha1", description="Config schema version."
    )
    job: JobIdentity = Field(description="The FineTuneJob and run.")
    spec: FineTuneJobSpec = Field(description="The job's spec, as validated.")
    run_prefix: S3Uri = Field(
        description="s3:// prefix for this run's artifacts: "
        "<output.uri>/<ns>/<name>/<uid8>/run-<n>/ (uid8: the first 8 characters of the "
        "FineTuneJob's metadata.uid)."
    )
    checkpoint_prefix: S3Uri | None = Field(
        default=None, description="s3:// prefix where checkpoints go and resume is read from."
    )
    progress_interval_seconds: float = Field(
        default=10.0, ge=0, description="Minimum seconds between status.progress patches."
    )
    report_progress: bool = Field(
        default=True, description="Patch status.progress on the FineTuneJob (needs the API)."
    )
    work_dir: str = Field(default="/workspace", description="Scratch directory.")
    base_adapter_uri: S3Uri | None = Field(
        default=None,
        description="model.fromJob with artifact adapter: s3:// prefix of the adapter to keep "
        "training (spec.model is then the base it was trained on).",
    )
    lineage: dict[str, Any] | None = Field(
        default=None,
        description="model.fromJob: the base job run used (status.lineage), for manifest.json.",
    )
    s3_retry_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long S3 connection errors are retried inside the trainer before the "
        "attempt fails with StorageUnavailable (retryable).",
    )


# Where the operator mounts each PersistentVolumeClaim named by a `pvc` source (model.pvc,
# dataset.pvc, dataset.validation.pvc, dataset.test.pvc), read-only: <PVC_MOUNT_ROOT>/<claimName>. The trainer
# reads `pvc.path` below that (KUBETUNE_PVC_ROOT overrides the root, for tests).
PVC_MOUNT_ROOT = "/mnt/kubetune/pvc"


def pvc_mount_path(claim_name: str, root: str = PVC_MOUNT_ROOT) -> str:
    """The directory a claim is mounted at in the trainer pod."""
    return f"{root.rstrip('/')}/{claim_name}"


# Where the operator mounts spec.model.cacheClaimName (its kubetune-model-cache/ directory,
# read-write), and the variable that tells the trainer; without it the trainer caches models
# under <workDir>/model-cache (the pod's scratch volume).
MODEL_CACHE_ROOT = "/mnt/kubetune/model-cache"
MODEL_CACHE_SUBPATH = "kubetune-model-cache"
MODEL_CACHE_ENV = "KUBETUNE_MODEL_CACHE"

UID_PREFIX_CHARS = 8


def run_prefix(output_uri: str, namespace: str, name: str, uid: str, run: int) -> str:
    """Where run `run` of the FineTuneJob `namespace/name` with metadata.uid `uid` writes its
    artifacts. The uid's first 8 characters are part of the path, so an object re-created with
    the same name (delete and recreate, a GitOps replace) never finds or overwrites the old
    object's checkpoints and artifacts (docs/design.md, "Storage layout")."""
    if not uid:
        raise ValueError("run_prefix needs the FineTuneJob's metadata.uid")
    short = uid[:UID_PREFIX_CHARS]
    return f"{output_uri.rstrip('/')}/{namespace}/{name}/{short}/run-{run}/"


# The artifact keys of the termination message (kubetune_trainer.result) and of status.artifacts.
ARTIFACT_KEYS = (
    "adapterUri",
    "mergedModelUri",
    "manifestUri",
    "manifestSha256",
    "metricsUri",
    "checkpointUri",
)

# The c10d rendezvous store's port on the pod of index 0 of a multi-pod run (docs/design.md):
# the operator renders it into the rendezvous endpoint the launcher hands to torchrun.
RDZV_PORT = 29400
