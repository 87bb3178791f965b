"""The FineTuneJob API and the trainer's config contract.

This module is the single source of truth for `kubetune.io/v1alpha1` `FineTuneJob.spec`
(and the trainer-written `status.progress`). The operator imports it, renders the CRD from it
(`python -m kubetune_operator.crdgen`) and writes a resolved `TrainerConfig` into the ConfigMap
that the trainer reads. It must stay importable without torch: the operator image has none.

Every cross-field rule is written twice, on purpose: as a CEL rule (`x-kubernetes-validations`)
that the API server enforces at `kubectl apply`, and as a pydantic validator so the operator and
trainer reject the same input with the same message. `tests/` checks that the two agree.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"

# s3://bucket/prefix — bucket names per the S3 rules (3-63 chars, lowercase, digits, dots, dashes).
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
# Kubernetes resource quantities (e.g. 500m, 4, 16Gi, 1.5G, 1e3), non-negative: the grammar of
# k8s.io/apimachinery resource.Quantity (number, then a binary-SI, decimal-SI or exponent suffix).
QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][-+]?[0-9]+)?$"
# A DNS-1123 subdomain name, as for Secrets and PVCs.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# A Hugging Face Hub id: "name" or "org/name".
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)?$"
# A str.format template whose placeholders are plain column names: {name} or {name:format-spec};
# {{ and }} are literal braces. No attribute or index access ({x.y}, {x[0]}), no conversions.
TEXT_TEMPLATE_PATTERN = r"^([^{}]|\{\{|\}\}|\{[A-Za-z_][A-Za-z0-9_]*(:[^{}]*)?\})*$"
# An absolute path inside a volume, no "..".
PATH_PATTERN = r"^(/[A-Za-z0-9._@+=,~\-]+)*/?$"

# Patterns are evaluated by two engines that must agree: Go's RE2 in the API server and Rust's
# regex crate in pydantic. They differ on Unicode classes (`\s`, `\d`, `\w` are ASCII in RE2,
# Unicode in Rust), so patterns here use explicit ASCII classes only.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# The longest FineTuneJob name: the operator names the run's batch/v1 Job `<name>-run-<n>`, and a
# Job name must fit a 63-character label value; 52 leaves room for `-run-` and 6 digits.
MAX_NAME_LENGTH = 52


def _wire_int(value: Any) -> Any:
    """JSON integers only: not 8.0, "8" or true (pydantic's lax mode would take all three).

    The API server's OpenAPI check lets an integral float (8.0) through, but its CEL evaluation
    fails on one ("expected int, got float64") wherever a rule reads the field; so the CRD
    refuses floats uniformly with a rule on every integer field (_INT_RULE) and so do we. kubectl
    never sends 8.0: it turns YAML `8.0` into JSON `8`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError('must be an integer (8, not 8.0 or "8")')
    return value


def _int_or_string(value: Any) -> Any:
    """A quantity may be written as a JSON integer (`cpu: 8`), as in core/v1; it is kept as str.
    Not as a float, not even 8.0 (see _wire_int)."""
    if isinstance(value, bool | float):
        raise ValueError("must be a quantity string or a non-negative integer")
    if isinstance(value, int):
        if not 0 <= value <= INT64_MAX:
            raise ValueError("must be a quantity string or a non-negative integer")
        return str(value)
    return value


def stored_json(value: Any) -> Any:
    """A free-form (preserve-unknown-fields) value as the API server stores and returns it:
    keys whose value is null are dropped at every depth (null list elements stay); numbers go
    through Go's float64/int64, so an integer beyond int64 becomes a float and an integral float
    within int64 comes back as an integer (1.0 -> 1)."""
    if isinstance(value, dict):
        return {k: stored_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored_json(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value <= INT64_MAX:
        try:
            return float(value)
        except OverflowError:
            raise ValueError("number out of range") from None
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
        # Go writes the shortest decimal that round-trips (as repr does), then reads an int64:
        # 4.738154416028131e+16 comes back as 47381544160281310, not int(value).
        return int(Decimal(repr(value)))
    return value


# A free-form JSON object (inline dataset rows, a pod affinity), as the API server keeps it.
JsonObject = Annotated[dict[str, Any], BeforeValidator(stored_json)]

# JSON-typed scalars for the spec: pydantic's lax mode turns "1", "true" or "yes" into numbers and
# booleans, which the API server (and thus `kubectl apply`) refuses; these refuse them too.
_INT_RULE = {"rule": "type(self) == int", "message": "must be an integer (8, not 8.0)"}
WireInt = Annotated[
    int,
    Field(json_schema_extra={"x-kubernetes-validations": [_INT_RULE]}),
    BeforeValidator(_wire_int),
]
WireFloat = Annotated[float, Strict()]
WireBool = Annotated[bool, Strict()]

# (Field before BeforeValidator: in the other order pydantic leaves `pattern` out of the JSON
# Schema, and so out of the CRD, while still enforcing it in Python.)
Quantity = Annotated[
    str,
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "minimum": 0,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || type(self) == string",
                    "message": "must be a quantity string or an integer (8, not 8.0)",
                }
            ],
        },
    ),
    BeforeValidator(_int_or_string),
]
S3Uri = Annotated[str, Field(pattern=S3_URI_PATTERN, max_length=1024)]
ResourceName = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=253)]
# A label value: empty, or alphanumerics with -_. inside, at most 63 characters.
LabelValue = Annotated[
    str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)
]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule for `x-kubernetes-validations`; `fieldPath` makes the API
    server's error name the offending field (e.g. `spec.model.hubId`).

    A rule must guard with `has()` every field it reads, even one with a default: object fields
    default to `{}` in the CRD, and the API server checks that `{}` against the rules *before*
    nested defaults are applied to it (on real objects the nested defaults are always there)."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Spec(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields refused (as the CRD's
    structural schema prunes them, the Python side refuses them so a typo is not silently lost)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        """`field: null` means "not set", as on the API server, which prunes null values of
        non-nullable fields before defaulting: the field then takes its default."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _one_of(obj: BaseModel, names: list[str], where: str) -> None:
    """Exactly one of `names` (python attribute names) is set; the message names the fields."""
    wire = [to_camel(n) for n in names]
    present = [w for n, w in zip(names, wire, strict=True) if getattr(obj, n) is not None]
    if len(present) != 1:
        raise ValueError(
            f"{where}: exactly one of {', '.join(wire)} must be set"
            + (f" (got {', '.join(present)})" if present else " (got none)")
        )


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

    @model_validator(mode="after")
    def _check(self) -> PVCPath:
        if ".." in self.path:
            raise ValueError("path: path must not contain '..'")
        return self


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class TaskType(StrEnum):
    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"


class ModelSource(Spec):
    """The base model to fine-tune: exactly one of `hubId`, `s3Uri` or `pvc`."""

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

    @model_validator(mode="after")
    def _check(self) -> ModelSource:
        _one_of(self, ["hub_id", "s3_uri", "pvc"], "spec.model")
        if self.revision is not None and self.hub_id is None:
            raise ValueError("spec.model.revision: revision applies only to hubId")
        if self.token_secret_ref is not None and self.hub_id is None:
            raise ValueError("spec.model.tokenSecretRef: tokenSecretRef applies only to hubId")
        return self

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
        if self.num_labels is None and self.label_names is None:
            raise ValueError("spec.classification: set numLabels or labelNames")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise ValueError("spec.classification.labelNames: label names must be unique")
        if (
            self.num_labels is not None
            and self.label_names is not None
            and self.num_labels != len(self.label_names)
        ):
            raise ValueError(
                "spec.classification.numLabels: numLabels must equal the number of labelNames"
            )
        return self

    @property
    def count(self) -> int:
        if self.label_names is not None:
            return len(self.label_names)
        assert self.num_labels is not None
        return self.num_labels


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


class DataFormat(StrEnum):
    TEXT = "text"
    PROMPT_COMPLETION = "prompt-completion"
    MESSAGES = "messages"
    CLASSIFICATION = "classification"


class FileFormat(StrEnum):
    AUTO = "auto"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    CSV = "csv"


class BadRowPolicy(StrEnum):
    FAIL = "fail"
    SKIP = "skip"


class HubDataset(Spec):
    """A dataset on the Hugging Face Hub."""

    name: str = Field(pattern=HUB_ID_PATTERN, max_length=256, description="Dataset id, e.g. imdb.")
    config: str | None = Field(
        default=None, max_length=256, description="Dataset configuration (subset) name."
    )
    split: str = Field(
        default="train",
        max_length=256,
        description="Split to read, with slicing if wanted (e.g. train[:10%]).",
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Dataset revision (branch, tag or sha)."
    )


_SOURCE_RULE = cel(
    "[has(self.s3Uri), has(self.hub), has(self.pvc), has(self.inline)].filter(x, x).size() == 1",
    "exactly one of s3Uri, hub, pvc, inline must be set",
)


class DataSource(Spec):
    """Where rows come from: exactly one of `s3Uri`, `hub`, `pvc` or `inline`."""

    model_config = ConfigDict(json_schema_extra=validations(_SOURCE_RULE))

    s3_uri: S3Uri | None = Field(
        default=None,
        description="s3://bucket/key of one file, or s3://bucket/prefix/ of shards (every "
        "file of the fileFormat under the prefix, in name order).",
    )
    hub: HubDataset | None = Field(default=None, description="A Hugging Face Hub dataset.")
    pvc: PVCPath | None = Field(
        default=None, description="A file or directory of shards on a PersistentVolumeClaim."
    )
    inline: list[JsonObject] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Rows written in the manifest, for small experiments and tests "
        "(at most 1000; use s3Uri for anything larger).",
    )
    file_format: FileFormat = Field(
        default=FileFormat.AUTO,
        description="File format for s3Uri/pvc sources; auto picks by file extension "
        "(.jsonl, .json, .parquet, .csv).",
    )

    def _check_one(self, where: str) -> None:
        _one_of(self, ["s3_uri", "hub", "pvc", "inline"], where)


class FieldMapping(Spec):
    """Column names in the data, for when they differ from the defaults."""

    text: str = Field(
        default="text", max_length=128, description="Text column (text, classification)."
    )
    prompt: str = Field(
        default="prompt", max_length=128, description="Prompt column (prompt-completion)."
    )
    completion: str = Field(
        default="completion", max_length=128, description="Completion column (prompt-completion)."
    )
    messages: str = Field(
        default="messages",
        max_length=128,
        description="Column holding a list of {role, content} turns (messages).",
    )
    label: str = Field(
        default="label", max_length=128, description="Label column (classification)."
    )


class ValidationSpec(Spec):
    """Held-out data for evaluation: a separate source, or a fraction split off the training data."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.s3Uri), has(self.hub), has(self.pvc), has(self.inline), "
                "has(self.splitFraction)].filter(x, x).size() == 1",
                "exactly one of s3Uri, hub, pvc, inline, splitFraction must be set",
            )
        )
    )

    s3_uri: S3Uri | None = Field(default=None, description="Validation file or prefix in S3.")
    hub: HubDataset | None = Field(default=None, description="Validation split on the Hub.")
    pvc: PVCPath | None = Field(default=None, description="Validation file on a PVC.")
    inline: list[JsonObject] | None = Field(
        default=None, min_length=1, max_length=1000, description="Validation rows in the manifest."
    )
    split_fraction: WireFloat | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Hold out this fraction of the training rows (seeded shuffle), e.g. 0.1.",
    )
    file_format: FileFormat = Field(default=FileFormat.AUTO, description="As dataset.fileFormat.")

    @model_validator(mode="after")
    def _check(self) -> ValidationSpec:
        _one_of(
            self, ["s3_uri", "hub", "pvc", "inline", "split_fraction"], "spec.dataset.validation"
        )
        return self


class DatasetSpec(DataSource):
    """Training data and how to turn it into model inputs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            _SOURCE_RULE,
            cel(
                "!has(self.packing) || !self.packing || self.format != 'classification'",
                "packing applies to causal-lm formats only",
                ".packing",
            ),
            cel(
                "!has(self.textTemplate) || self.format == 'text'",
                "textTemplate applies only to format text",
                ".textTemplate",
            ),
        )
    )

    format: DataFormat = Field(
        default=DataFormat.TEXT,
        description="Row format: text (one text column), prompt-completion, messages "
        "(chat turns rendered with the tokenizer's chat template), classification (text + label).",
    )
    fields: FieldMapping = Field(
        default_factory=FieldMapping, description="Column names, when they differ from defaults."
    )
    text_template: str | None = Field(
        default=None,
        max_length=16384,
        pattern=TEXT_TEMPLATE_PATTERN,
        description="format text only: build each row's text from its columns with a Python "
        "str.format template instead of reading fields.text, e.g. "
        "'Quote: {quote} Author: {author}'. Placeholders are column names, optionally with a "
        "format spec ({score:.2f}); write {{ and }} for literal braces. Attribute and index "
        "access ({a.b}, {a[0]}) is not allowed. A row missing a column is a bad row.",
    )
    validation: ValidationSpec | None = Field(
        default=None,
        description="Evaluation data. Without it, evaluation, early stopping and final eval "
        "metrics are off.",
    )
    max_seq_length: WireInt = Field(
        default=1024,
        ge=16,
        le=131072,
        description="Longest tokenized sequence; longer rows are truncated. Above the model's "
        "position limit (e.g. 512 for BERT) it is clamped to that limit, with a warning in the "
        "run's final status message and `datasets.maxSeqLength` in its manifest.",
    )
    packing: WireBool = Field(
        default=False,
        description="Pack several short rows into each sequence (padding-free where supported) "
        "for throughput. Causal-LM only.",
    )
    completion_only_loss: WireBool = Field(
        default=True,
        description="prompt-completion: compute the loss on completion tokens only.",
    )
    assistant_only_loss: WireBool = Field(
        default=True,
        description="messages: compute the loss on assistant turns only.",
    )
    chat_template: str | None = Field(
        default=None,
        max_length=65536,
        description="A Jinja chat template to use instead of the tokenizer's own (messages).",
    )
    bad_rows: BadRowPolicy = Field(
        default=BadRowPolicy.FAIL,
        description="fail: stop with an error naming the row and field; skip: drop such rows and "
        "report how many in the metrics (bad_rows_skipped). Malformed JSON Lines (a line that "
        "is not a JSON object) are bad rows too: fail reports how many and the first line "
        "numbers; skip leaves them out and counts them.",
    )
    shuffle_seed: WireInt | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seed for shuffling; default hyperparameters.seed.",
    )

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        self._check_one("spec.dataset")
        if self.packing and self.format == DataFormat.CLASSIFICATION:
            raise ValueError("spec.dataset.packing: packing applies to causal-lm formats only")
        if self.text_template is not None and self.format != DataFormat.TEXT:
            raise ValueError("spec.dataset.textTemplate: textTemplate applies only to format text")
        return self


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


class MethodType(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    PROMPT_TUNING = "prompt-tuning"
    PREFIX_TUNING = "prefix-tuning"
    IA3 = "ia3"
    BITFIT = "bitfit"


LORA_METHODS = {MethodType.LORA, MethodType.QLORA, MethodType.DORA}
ADAPTER_METHODS = LORA_METHODS | {
    MethodType.PROMPT_TUNING,
    MethodType.PREFIX_TUNING,
    MethodType.IA3,
}


class LoraBias(StrEnum):
    NONE = "none"
    ALL = "all"
    LORA_ONLY = "lora_only"


ModuleName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-*]+$")]


class LoraSpec(Spec):
    """LoRA settings (used by lora, qlora and dora)."""

    r: WireInt = Field(default=16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: WireInt = Field(
        default=32, ge=1, le=4096, description="Scaling numerator (lora_alpha); scale = alpha/r."
    )
    dropout: WireFloat = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt. Default per architecture family: all attention and "
        "MLP projections for Llama/Mistral/Qwen-like models (q,k,v,o,gate,up,down_proj), "
        "query/key/value/dense for BERT-like ones; 'all-linear' adapts every linear layer.",
    )
    modules_to_save: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Modules trained in full and saved with the adapter, e.g. [classifier] for a "
        "freshly initialised classification head.",
    )
    bias: LoraBias = Field(default=LoraBias.NONE, description="Which biases to train.")
    use_rslora: WireBool = Field(
        default=False, description="Rank-stabilised scaling (alpha/sqrt(r))."
    )


class QuantType(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class ComputeDtype(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class QuantizationSpec(Spec):
    """bitsandbytes 4-bit quantization of the frozen base model (qlora)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.computeDtype != 'float32'",
                "qlora needs a 16-bit compute dtype (bfloat16 or float16); float32 compute "
                "defeats the memory saving",
                ".computeDtype",
            )
        )
    )

    bits: Literal[4] = Field(default=4, description="Bits per weight (4).")
    quant_type: QuantType = Field(default=QuantType.NF4, description="nf4 (recommended) or fp4.")
    double_quant: WireBool = Field(
        default=True, description="Quantize the quantization constants too (~0.4 bit/param saved)."
    )
    compute_dtype: ComputeDtype = Field(
        default=ComputeDtype.BFLOAT16,
        description="Dtype of matmuls on dequantized weights: bfloat16 (Ampere+) or float16.",
    )

    @model_validator(mode="after")
    def _check(self) -> QuantizationSpec:
        if self.compute_dtype == ComputeDtype.FLOAT32:
            raise ValueError(
                "spec.method.quantization.computeDtype: qlora needs a 16-bit compute dtype "
                "(bfloat16 or float16)"
            )
        return self


class PromptTuningSpec(Spec):
    """Prompt tuning: learned soft-prompt embeddings, model weights frozen."""

    num_virtual_tokens: WireInt = Field(
        default=20, ge=1, le=1024, description="Soft-prompt length."
    )
    init_text: str | None = Field(
        default=None,
        max_length=4096,
        description="Initialise the soft prompt from this text's token embeddings (else random).",
    )


class PrefixTuningSpec(Spec):
    """Prefix tuning: learned key/value prefixes in every layer."""

    num_virtual_tokens: WireInt = Field(default=20, ge=1, le=1024, description="Prefix length.")


class IA3Spec(Spec):
    """IA3: learned rescaling vectors on attention and feed-forward activations."""

    target_modules: list[ModuleName] | None = Field(
        default=None, max_length=64, description="Modules to rescale; default per architecture."
    )
    feedforward_modules: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Which of targetModules are feed-forward layers; default per architecture.",
    )


class MethodSpec(Spec):
    """How the model is adapted."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.freezeLayers) || self.type == 'full'",
                "freezeLayers applies only to type full",
                ".freezeLayers",
            ),
            cel(
                "!has(self.lora) || self.type in ['lora', 'qlora', 'dora']",
                "lora settings apply only to types lora, qlora, dora",
                ".lora",
            ),
            cel(
                "!has(self.quantization) || self.type == 'qlora'",
                "quantization applies only to type qlora",
                ".quantization",
            ),
            cel(
                "!has(self.promptTuning) || self.type == 'prompt-tuning'",
                "promptTuning applies only to type prompt-tuning",
                ".promptTuning",
            ),
            cel(
                "!has(self.prefixTuning) || self.type == 'prefix-tuning'",
                "prefixTuning applies only to type prefix-tuning",
                ".prefixTuning",
            ),
            cel(
                "!has(self.ia3) || self.type == 'ia3'",
                "ia3 settings apply only to type ia3",
                ".ia3",
            ),
        )
    )

    type: MethodType = Field(
        default=MethodType.LORA,
        description="full, lora, qlora (4-bit base + LoRA), dora, prompt-tuning, prefix-tuning, "
        "ia3, or bitfit (biases only).",
    )
    freeze_layers: WireInt | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="full only: keep the whole embedding stage (word, position and token-type "
        "embeddings, embedding norms) and the lowest N transformer layers frozen.",
    )
    lora: LoraSpec | None = Field(
        default=None, description="LoRA settings for lora/qlora/dora (defaults if omitted)."
    )
    quantization: QuantizationSpec | None = Field(
        default=None, description="4-bit quantization for qlora (nf4 + double quant if omitted)."
    )
    prompt_tuning: PromptTuningSpec | None = Field(
        default=None, description="prompt-tuning settings."
    )
    prefix_tuning: PrefixTuningSpec | None = Field(
        default=None, description="prefix-tuning settings."
    )
    ia3: IA3Spec | None = Field(default=None, description="ia3 settings.")

    @model_validator(mode="after")
    def _check(self) -> MethodSpec:
        t = MethodType(self.type)
        rules: list[tuple[str, bool, str]] = [
            (
                "freezeLayers",
                self.freeze_layers is not None and t != MethodType.FULL,
                "freezeLayers applies only to type full",
            ),
            (
                "lora",
                self.lora is not None and t not in LORA_METHODS,
                "lora settings apply only to types lora, qlora, dora",
            ),
            (
                "quantization",
                self.quantization is not None and t != MethodType.QLORA,
                "quantization applies only to type qlora",
            ),
            (
                "promptTuning",
                self.prompt_tuning is not None and t != MethodType.PROMPT_TUNING,
                "promptTuning applies only to type prompt-tuning",
            ),
            (
                "prefixTuning",
                self.prefix_tuning is not None and t != MethodType.PREFIX_TUNING,
                "prefixTuning applies only to type prefix-tuning",
            ),
            (
                "ia3",
                self.ia3 is not None and t != MethodType.IA3,
                "ia3 settings apply only to type ia3",
            ),
        ]
        for field, bad, message in rules:
            if bad:
                raise ValueError(f"spec.method.{field}: {message}")
        return self

    def resolved(self) -> MethodSpec:
        """A copy with the defaults of the chosen type filled in."""
        t = MethodType(self.type)
        update: dict[str, Any] = {}
        if t in LORA_METHODS and self.lora is None:
            update["lora"] = LoraSpec()
        if t == MethodType.QLORA and self.quantization is None:
            update["quantization"] = QuantizationSpec()
        if t == MethodType.PROMPT_TUNING and self.prompt_tuning is None:
            update["prompt_tuning"] = PromptTuningSpec()
        if t == MethodType.PREFIX_TUNING and self.prefix_tuning is None:
            update["prefix_tuning"] = PrefixTuningSpec()
        if t == MethodType.IA3 and self.ia3 is None:
            update["ia3"] = IA3Spec()
        return self.model_copy(update=update)


# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Optimizer(StrEnum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_TORCH_FUSED = "adamw_torch_fused"
    ADAMW_8BIT = "adamw_8bit"
    PAGED_ADAMW_8BIT = "paged_adamw_8bit"
    PAGED_ADAMW_32BIT = "paged_adamw_32bit"
    ADAFACTOR = "adafactor"
    SGD = "sgd"


class Strategy(StrEnum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class EarlyStoppingSpec(Spec):
    """Stop when the eval metric stops improving (needs dataset.validation)."""

    patience: WireInt = Field(
        default=3, ge=1, le=1000, description="Evaluations without improvement before stopping."
    )
    metric: str = Field(
        default="eval_loss",
        pattern=r"^eval_[a-z0-9_]+$",
        max_length=64,
        description="Metric to watch: eval_loss, eval_accuracy, eval_f1, ...",
    )
    threshold: WireFloat = Field(
        default=0.0, ge=0, description="Minimum change that counts as an improvement."
    )
    greater_is_better: WireBool | None = Field(
        default=None,
        description="Whether higher is better; default false for *loss metrics, true otherwise.",
    )


class Hyperparameters(Spec):
    """Training hyperparameters (the names follow transformers' TrainingArguments)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.warmupRatio) || !has(self.warmupSteps)",
                "set warmupRatio or warmupSteps, not both",
                ".warmupSteps",
            ),
            cel(
                "!has(self.evalStrategy) || self.evalStrategy != 'steps' || has(self.evalSteps)",
                "evalStrategy steps needs evalSteps",
                ".evalSteps",
            ),
            cel(
                "!has(self.saveStrategy) || self.saveStrategy != 'steps' || has(self.saveSteps)",
                "saveStrategy steps needs saveSteps",
                ".saveSteps",
            ),
            cel(
                "!has(self.earlyStopping) || (has(self.evalStrategy) && self.evalStrategy != 'no')",
                "earlyStopping needs evaluation (evalStrategy steps or epoch)",
                ".earlyStopping",
            ),
        )
    )

    epochs: WireFloat = Field(
        default=1.0, gt=0, le=1000, description="Passes over the training data (fractions allowed)."
    )
    max_steps: WireInt | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs when set."
    )
    learning_rate: WireFloat = Field(
        default=2e-4, gt=0, le=1, description="Peak learning rate (2e-4 suits LoRA; ~2e-5 full)."
    )
    lr_scheduler: Scheduler = Field(default=Scheduler.LINEAR, description="Learning-rate schedule.")
    warmup_ratio: WireFloat | None = Field(
        default=None, ge=0, le=1, description="Fraction of steps for linear warm-up."
    )
    warmup_steps: WireInt | None = Field(
        default=None, ge=0, le=10_000_000, description="Warm-up steps."
    )
    batch_size: WireInt = Field(
        default=4,
        ge=1,
        le=4096,
        description="Micro-batch size per device (per_device_train_batch_size).",
    )
    eval_batch_size: WireInt | None = Field(
        default=None, ge=1, le=4096, description="Per-device eval batch size; default batchSize."
    )
    gradient_accumulation_steps: WireInt = Field(
        default=1, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    weight_decay: WireFloat = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: WireFloat = Field(
        default=1.0, ge=0, le=1000, description="Gradient clipping norm (0 disables)."
    )
    seed: WireInt = Field(
        default=42, ge=0, le=2**32 - 1, description="Random seed (data order, init)."
    )
    precision: Precision = Field(
        default=Precision.AUTO,
        description="auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.",
    )
    gradient_checkpointing: WireBool = Field(
        default=False,
        description="Recompute activations in the backward pass: much less memory, ~20-30% slower.",
    )
    optimizer: Optimizer = Field(
        default=Optimizer.ADAMW_TORCH,
        description="Optimizer; paged_adamw_8bit is the QLoRA recipe's (needs a GPU).",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop early when the eval metric stops improving."
    )
    eval_strategy: Strategy = Field(
        default=Strategy.NO,
        description="When to evaluate: no, steps (every evalSteps) or epoch. Needs validation data.",
    )
    eval_steps: WireInt | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate every N steps."
    )
    save_strategy: Strategy = Field(
        default=Strategy.STEPS,
        description="When to checkpoint (to S3, for resume after eviction): no, steps, epoch.",
    )
    save_steps: WireInt | None = Field(
        default=500,
        ge=1,
        le=10_000_000,
        description="Checkpoint every N steps (saveStrategy steps).",
    )
    save_total_limit: WireInt = Field(
        default=2, ge=1, le=100, description="Checkpoints kept; older ones are deleted."
    )
    logging_steps: WireInt = Field(
        default=10, ge=1, le=10_000_000, description="Log (and report progress) every N steps."
    )
    group_by_length: WireBool = Field(
        default=False, description="Batch rows of similar length together (less padding)."
    )

    @model_validator(mode="after")
    def _check(self) -> Hyperparameters:
        h = "spec.hyperparameters"
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError(f"{h}.warmupSteps: set warmupRatio or warmupSteps, not both")
        if self.eval_strategy == Strategy.STEPS and self.eval_steps is None:
            raise ValueError(f"{h}.evalSteps: evalStrategy steps needs evalSteps")
        if self.save_strategy == Strategy.STEPS and self.save_steps is None:
            raise ValueError(f"{h}.saveSteps: saveStrategy steps needs saveSteps")
        if self.early_stopping is not None and self.eval_strategy == Strategy.NO:
            raise ValueError(
                f"{h}.earlyStopping: earlyStopping needs evaluation (evalStrategy steps or epoch)"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Resources and scheduling
# ---------------------------------------------------------------------------------------------


class Toleration(Spec):
    """A pod toleration (as core/v1 Toleration, with the same rules, so that a bad one is refused
    at apply time rather than when the operator creates the pod)."""

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

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        where = "spec.resources.tolerations"
        if not self.key and self.operator != "Exists":
            raise ValueError(f"{where}.operator: operator must be Exists when key is empty")
        if self.operator == "Exists" and self.value:
            raise ValueError(f"{where}.value: value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(
                f"{where}.tolerationSeconds: tolerationSeconds applies only to effect NoExecute"
            )
        return self


class DistributionStrategy(StrEnum):
    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"


# Methods whose trainable part is a set of virtual tokens: PEFT's prompt learning cannot be
# sharded by FSDP (the prompt encoder lives outside the wrapped layers).
PROMPT_METHODS = {MethodType.PROMPT_TUNING, MethodType.PREFIX_TUNING}


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

    model_config = ConfigDict(
        json_schema_extra=validations(
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
    affinity: JsonObject | None = Field(
        default=None, description="A core/v1 Affinity, passed through to the pod."
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

    @model_validator(mode="after")
    def _check(self) -> ResourcesSpec:
        ppn = self.distribution.processes_per_node
        if ppn is not None and self.gpus and ppn != self.gpus:
            raise ValueError(
                "spec.resources.distribution.processesPerNode: distribution.processesPerNode "
                "must equal gpus (one process per GPU, so no reserved GPU sits idle); leave it out"
            )
        return self


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

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.sse == ServerSideEncryption.KMS and self.kms_key_id is None:
            raise ValueError("spec.output.kmsKeyId: sse aws:kms needs kmsKeyId")
        if not (self.adapter or self.merged_model):
            raise ValueError("spec.output.adapter: write at least one of adapter, mergedModel")
        return self


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
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError("spec.tracking.reportTo: each reporter may appear only once")
        if Reporter.MLFLOW in self.report_to and self.mlflow is None:
            raise ValueError("spec.tracking.mlflow: reportTo mlflow needs mlflow settings")
        if Reporter.WANDB in self.report_to and self.wandb is None:
            raise ValueError("spec.tracking.wandb: reportTo wandb needs wandb settings")
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


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


class FineTuneJobSpec(Spec):
    """Desired state of a FineTuneJob: what to fine-tune, on what data, how, where the artifacts go."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.workloadPriorityClass) || has(self.queueName)",
                "workloadPriorityClass needs queueName (the Kueue LocalQueue the run waits in)",
                ".workloadPriorityClass",
            ),
            cel(
                "self.task != 'sequence-classification' || has(self.classification)",
                "task sequence-classification needs classification (numLabels or labelNames)",
                ".classification",
            ),
            cel(
                "self.task == 'sequence-classification' || !has(self.classification)",
                "classification applies only to task sequence-classification",
                ".classification",
            ),
            cel(
                "(self.task == 'sequence-classification') == (self.dataset.format == 'classification')",
                "dataset.format classification goes with task sequence-classification, and "
                "only with it",
                ".dataset.format",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.hyperparameters.earlyStopping) || "
                "has(self.dataset.validation)",
                "earlyStopping needs dataset.validation",
                ".hyperparameters.earlyStopping",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.hyperparameters.evalStrategy) || "
                "self.hyperparameters.evalStrategy == 'no' || has(self.dataset.validation)",
                "evalStrategy needs dataset.validation",
                ".hyperparameters.evalStrategy",
            ),
            cel(
                "!has(self.resources) || !has(self.resources.distribution) || "
                "!has(self.resources.distribution.strategy) || "
                "self.resources.distribution.strategy != 'fsdp' || !has(self.method) || "
                "!has(self.method.type) || "
                "!(self.method.type in ['prompt-tuning', 'prefix-tuning'])",
                "resources.distribution.strategy fsdp cannot shard prompt-tuning or "
                "prefix-tuning (their virtual tokens live outside the sharded layers): use ddp "
                "or auto",
                ".resources.distribution.strategy",
            ),
            # Transition rules (oldSelf): checked on update only, and only where the object
            # holding the rule exists before and after. They sit on the spec, which always
            # does, and the fields always exist too (task has a default, output.uri is
            # required); on a field's own schema a rule would be skipped when it is added or
            # removed. tests/integration/test_api_crd.py updates a live object to check them.
            cel(
                "self.task == oldSelf.task", "task is immutable: create a new FineTuneJob", ".task"
            ),
            cel(
                "self.output.uri == oldSelf.output.uri",
                "output.uri is immutable (earlier runs' artifacts live there): create a new "
                "FineTuneJob",
                ".output.uri",
            ),
        )
    )

    task: TaskType = Field(
        default=TaskType.CAUSAL_LM,
        description="causal-lm (supervised fine-tuning of a generative model) or "
        "sequence-classification. Immutable.",
    )
    classification: ClassificationSpec | None = Field(
        default=None, description="Labels, for task sequence-classification."
    )
    model: ModelSource = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training (and validation) data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Adaptation method.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training hyperparameters."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Compute resources and placement."
    )
    output: OutputSpec = Field(description="Where artifacts are written.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retry, deadline, suspend."
    )
    queue_name: ResourceName | None = Field(
        default=None,
        description="Kueue LocalQueue (in this namespace) the run waits in for quota. The Job is "
        "created suspended with the kueue.x-k8s.io/queue-name label and Kueue admits it; phase "
        "Queued until then. Unset: the namespace's default LocalQueue, if Kueue has one.",
    )
    workload_priority_class: ResourceName | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass of the run (needs queueName): orders the queue "
        "and decides which admitted run Kueue may preempt (a preempted run is Suspended, and "
        "resumes from its last checkpoint when admitted again).",
    )

    @model_validator(mode="after")
    def _check(self) -> FineTuneJobSpec:
        is_cls = self.task == TaskType.SEQUENCE_CLASSIFICATION
        if is_cls and self.classification is None:
            raise ValueError(
                "spec.classification: task sequence-classification needs classification "
                "(numLabels or labelNames)"
            )
        if not is_cls and self.classification is not None:
            raise ValueError(
                "spec.classification: classification applies only to task sequence-classification"
            )
        if is_cls != (self.dataset.format == DataFormat.CLASSIFICATION):
            raise ValueError(
                "spec.dataset.format: dataset.format classification goes with task "
                "sequence-classification, and only with it"
            )
        if (
            self.resources.distribution.strategy == DistributionStrategy.FSDP
            and MethodType(self.method.type) in PROMPT_METHODS
        ):
            raise ValueError(
                "spec.resources.distribution.strategy: resources.distribution.strategy fsdp "
                "cannot shard prompt-tuning or prefix-tuning (their virtual tokens live outside "
                "the sharded layers): use ddp or auto"
            )
        h = self.hyperparameters
        if h.early_stopping is not None and self.dataset.validation is None:
            raise ValueError(
                "spec.hyperparameters.earlyStopping: earlyStopping needs dataset.validation"
            )
        if h.eval_strategy != Strategy.NO and self.dataset.validation is None:
            raise ValueError(
                "spec.hyperparameters.evalStrategy: evalStrategy needs dataset.validation"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Progress (written by the trainer into status.progress)
# ---------------------------------------------------------------------------------------------


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
    s3_retry_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long S3 connection errors are retried inside the trainer before the "
        "attempt fails with StorageUnavailable (retryable).",
    )


# Where the operator mounts each PersistentVolumeClaim named by a `pvc` source (model.pvc,
# dataset.pvc, dataset.validation.pvc), read-only: <PVC_MOUNT_ROOT>/<claimName>. The trainer
# reads `pvc.path` below that (KUBETUNE_PVC_ROOT overrides the root, for tests).
PVC_MOUNT_ROOT = "/mnt/kubetune/pvc"


def pvc_mount_path(claim_name: str, root: str = PVC_MOUNT_ROOT) -> str:
    """The directory a claim is mounted at in the trainer pod."""
    return f"{root.rstrip('/')}/{claim_name}"


def render_text_template(template: str, row: dict[str, Any]) -> str:
    """The text of one row under `dataset.textTemplate` (the pattern has already refused
    attribute/index access). Raises KeyError naming a missing column."""
    return template.format_map(row)


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


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return m.group(1), m.group(2)
