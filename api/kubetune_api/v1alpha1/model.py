"""`spec.model` and `spec.classification`: the base model and the task's head."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from ._base import (
    HUB_ID_PATTERN,
    ResourceName,
    S3Uri,
    Spec,
    WireBool,
    WireFloat,
    WireInt,
    cel,
    validations,
)
from .refs import PVCPath, SecretKeyRef

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class TaskType(StrEnum):
    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    PREFERENCE = "preference"


class PreferenceAlgorithm(StrEnum):
    DPO = "dpo"
    ORPO = "orpo"


class BaseArtifact(StrEnum):
    MERGED = "merged"
    ADAPTER = "adapter"


class JobModelRef(Spec):
    """Another FineTuneJob whose latest Succeeded run is the base model (jobs chain by
    reference: no hard-coded S3 path, namespace or run number)."""

    name: ResourceName = Field(description="The FineTuneJob's name.")
    namespace: ResourceName | None = Field(
        default=None,
        description="Its namespace; default: this job's. Another namespace only where the "
        "operator allows it (chart value modelRefs.crossNamespace).",
    )
    artifact: BaseArtifact = Field(
        default=BaseArtifact.MERGED,
        description="merged: train on that run's merged model (its methods full, bitfit, "
        "lora, qlora, dora, ia3 write one). adapter: warm start: keep training that run's "
        "adapter, on the base model it was trained on (this job's method.type must be the "
        "same adapter method; its method settings are those of the adapter).",
    )


class ModelSource(Spec):
    """The base model to fine-tune: exactly one of `hubId`, `s3Uri`, `pvc` or `fromJob`."""

    api_path = "spec.model"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.hubId), has(self.s3Uri), has(self.pvc), has(self.fromJob)]"
                ".filter(x, x).size() == 1",
                "exactly one of hubId, s3Uri, pvc, fromJob must be set",
            ),
            cel(
                "!has(self.revision) || has(self.hubId)",
                "revision applies only to hubId",
                ".revision",
            ),
            cel(
                "!has(self.tokenSecretRef) || has(self.hubId)",
                "tokenSecretRef applies only to hubId",
                ".tokenSecretRef",
            ),
            cel(
                "!has(self.cacheClaimName) || !has(self.pvc)",
                "cacheClaimName applies only to hubId and s3Uri (a pvc model is read in place)",
                ".cacheClaimName",
            ),
        )
    )

    hub_id: str | None = Field(
        default=None,
        pattern=HUB_ID_PATTERN,
        max_length=256,
        description="Hugging Face Hub model id, e.g. mistralai/Mistral-7B-v0.1.",
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="Hub revision (branch, tag or commit sha). Pin a commit sha for reproducible "
        "runs; the resolved sha is recorded in the run's manifest. Default: main.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated or private models.",
    )
    s3_uri: S3Uri | None = Field(
        default=None,
        description="s3://bucket/prefix holding a saved model (config.json, weights in "
        "safetensors, tokenizer files). Read with the output's S3 endpoint and credentials.",
    )
    pvc: PVCPath | None = Field(
        default=None, description="A saved model directory on a PersistentVolumeClaim."
    )
    from_job: JobModelRef | None = Field(
        default=None,
        description="Another FineTuneJob's latest Succeeded run: its merged model, or (artifact "
        "adapter) its adapter with its base. This job waits (WaitingForBase) while that one "
        "runs and fails (BaseFailed) if it fails; the run used is recorded in status.lineage "
        "and manifest.json. Resolved when a run starts: a later run of the base job does not "
        "restart this one.",
    )
    trust_remote_code: WireBool = Field(
        default=False,
        description="Allow model repositories to run their own Python code. Off by default: "
        "it executes code from the model source inside the trainer.",
    )
    cache_claim_name: ResourceName | None = Field(
        default=None,
        description="A PersistentVolumeClaim in the FineTuneJob's namespace that keeps "
        "downloaded base models, keyed by the model's URI and revision (the Hub commit, or the "
        "S3 objects' names, sizes and ETags) and verified by sha256 when reused: a retried "
        "attempt, or a later run of any job naming the same model, does not download it "
        "again. Mounted read-write (only its kubetune-model-cache/ directory); use "
        "ReadWriteMany when runs of several pods share it. Without it the model is cached on "
        "the pod's scratch volume, for the pod's lifetime.",
    )

    def display(self) -> str:
        """A one-line name of the model for humans (`status.model`, the Model column of
        `kubectl get ftj`): `org/name[@revision]`, the s3:// URI or `pvc://claim/path`."""
        if self.hub_id is not None:
            return self.hub_id + (f"@{self.revision}" if self.revision else "")
        if self.s3_uri is not None:
            return self.s3_uri
        if self.from_job is not None:
            ns = f"{self.from_job.namespace}/" if self.from_job.namespace else ""
            return f"finetunejob://{ns}{self.from_job.name}"
        assert self.pvc is not None
        return f"pvc://{self.pvc.claim_name}/{self.pvc.path.lstrip('/')}"


class PreferenceSpec(Spec):
    """Preference tuning (`task: preference`) on prompt/chosen/rejected rows, with trl."""

    algorithm: PreferenceAlgorithm = Field(
        default=PreferenceAlgorithm.DPO,
        description="dpo (Direct Preference Optimization: against a frozen reference, the base "
        "model, or the base without the adapter for adapter methods) or orpo (odds-ratio "
        "preference optimization: no reference model, SFT and preference in one loss).",
    )
    beta: WireFloat = Field(
        default=0.1,
        gt=0,
        le=10,
        description="dpo: strength of the pull towards the reference (higher: stay closer). "
        "orpo: weight of the odds-ratio term (trl's beta, lambda in the paper).",
    )


class ClassificationSpec(Spec):
    """Labels for `task: sequence-classification`."""

    api_path = "spec.classification"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.numLabels) || has(self.labelNames)",
                "set numLabels or labelNames",
            ),
            cel(
                "!has(self.numLabels) || !has(self.labelNames) || "
                "self.numLabels == self.labelNames.size()",
                "numLabels must equal the number of labelNames",
                ".numLabels",
            ),
        )
    )

    num_labels: WireInt | None = Field(
        default=None,
        ge=2,
        le=10000,
        description="Number of classes. Labels in the data are integers 0..numLabels-1 "
        "(or names from labelNames).",
    )
    label_names: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        min_length=2,
        max_length=10000,
        description="Class names in id order (index = label id), each unique; data may use "
        "either the name or the id. Saved as id2label/label2id in the model config.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _check(self) -> ClassificationSpec:
        # x-kubernetes-list-type: set in the CRD (not a CEL rule)
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError("spec.classification.labelNames: label names must be unique")
        return self

    @property
    def count(self) -> int:
        if self.label_names is not None:
            return len(self.label_names)
        assert self.num_labels is not None
        return self.num_labels
