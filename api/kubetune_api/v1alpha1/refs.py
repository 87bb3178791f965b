"""References to other objects: Secret keys, S3 credentials, PersistentVolumeClaim paths."""

from __future__ import annotations

from pydantic import (
    ConfigDict,
    Field,
)

from ._base import PATH_PATTERN, ResourceName, Spec, cel, validations

# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


class SecretKeyRef(Spec):
    """A key in a Secret in the FineTuneJob's namespace. Only the reference travels: the value is
    injected into the trainer pod as an environment variable by the kubelet, never copied."""

    name: ResourceName = Field(description="Name of the Secret in the FineTuneJob's namespace.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret whose value is used.",
    )


class S3CredentialsRef(Spec):
    """A Secret holding S3 credentials under the conventional AWS key names."""

    name: ResourceName = Field(
        description="Name of a Secret in the FineTuneJob's namespace with keys "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN)."
    )


class PVCPath(Spec):
    """A path inside a PersistentVolumeClaim in the FineTuneJob's namespace, mounted read-only."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!self.path.contains('..')", "path must not contain '..'", ".path")
        )
    )

    claim_name: ResourceName = Field(description="Name of the PersistentVolumeClaim.")
    path: str = Field(
        default="/",
        pattern=PATH_PATTERN,
        max_length=1024,
        description="Absolute path inside the volume (e.g. /models/llama). Default: the root.",
    )
