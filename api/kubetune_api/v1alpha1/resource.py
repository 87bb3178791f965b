"""The FineTuneJob resource: metadata, spec and status together."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from ._base import MAX_NAME_LENGTH, Spec, check_name_length
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus


class FineTuneJob(Spec):
    """A fine-tuning run of a transformer model: a base model, data, a method and an S3
    destination. The operator runs it as a batch/v1 Job and keeps the status true."""

    # metadata.name is at most MAX_NAME_LENGTH characters: checked below, and in the CRD by
    # `maxLength` on metadata.name (kubetune_api.build.crd), which the API server reports as
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
        check_name_length(self.metadata, MAX_NAME_LENGTH, "the run's Job is named <name>-run-<n>")
        return self
