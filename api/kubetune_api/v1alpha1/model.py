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


class ModelSource(Spec):
    """The base model to fine-tune: exactly one of `hubId`, `s3Uri` or `pvc`."""

    api_path = "spec.model"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.hubId), has(self.s3Uri), has(self.pvc)].filter(x, x).size() == 1",
                "exactly one of hubId, s3Uri, pvc must be set",
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
        assert self.pvc is not None
        return f"pvc://{self.pvc.claim_name}/{self.pvc.path.lstrip('/')}"


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
