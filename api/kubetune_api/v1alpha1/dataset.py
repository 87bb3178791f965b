"""`spec.dataset`: where the rows come from, their format, mapping and validation split."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
)

from ._base import (
    HUB_ID_PATTERN,
    TEXT_TEMPLATE_PATTERN,
    JsonObject,
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
# Dataset
# ---------------------------------------------------------------------------------------------


class DataFormat(StrEnum):
    TEXT = "text"
    PROMPT_COMPLETION = "prompt-completion"
    MESSAGES = "messages"
    CLASSIFICATION = "classification"
    PREFERENCE = "preference"


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


def _column(default: str, description: str) -> Any:
    """A column name in the data (at most 128 characters), defaulting to `default`."""
    return Field(default=default, max_length=128, description=description)


class FieldMapping(Spec):
    """Column names in the data, for when they differ from the defaults."""

    text: str = _column("text", "Text column (text, classification).")
    prompt: str = _column("prompt", "Prompt column (prompt-completion).")
    completion: str = _column("completion", "Completion column (prompt-completion).")
    messages: str = _column(
        "messages", "Column holding a list of {role, content} turns (messages)."
    )
    label: str = _column("label", "Label column (classification).")
    chosen: str = _column("chosen", "Preferred response column (preference).")
    rejected: str = _column("rejected", "Dispreferred response column (preference).")


class ValidationSpec(Spec):
    """Held-out data for evaluation: a separate source, or a fraction split off the training data."""

    api_path = "spec.dataset.validation"

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


class HoldoutSpec(ValidationSpec):
    """Test data, held out from training and validation: a separate source, or a fraction split
    off the training rows (seeded, disjoint from the validation split). The base model is scored
    on it before training and the tuned model after."""

    api_path = "spec.dataset.test"


class DatasetSpec(DataSource):
    """Training data and how to turn it into model inputs."""

    api_path = "spec.dataset"

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
            cel(
                "!has(self.tokenSecretRef) || has(self.hub) || "
                "(has(self.validation) && has(self.validation.hub)) || "
                "(has(self.test) && has(self.test.hub))",
                "tokenSecretRef applies only to a Hub dataset (hub, validation.hub or test.hub)",
                ".tokenSecretRef",
            ),
            cel(
                "!has(self.test) || !has(self.test.splitFraction) || !has(self.validation) || "
                "!has(self.validation.splitFraction) || "
                "self.test.splitFraction + self.validation.splitFraction < 0.9",
                "test.splitFraction + validation.splitFraction must stay below 0.9 (most rows "
                "train): lower one of them",
                ".test.splitFraction",
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
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token for a gated or private Hub "
        "dataset (hub, validation.hub, test.hub); the model's token (model.tokenSecretRef) is separate.",
    )
    validation: ValidationSpec | None = Field(
        default=None,
        description="Evaluation data. Without it, evaluation, early stopping and final eval "
        "metrics are off.",
    )
    test: HoldoutSpec | None = Field(
        default=None,
        description="Test data for the final scores (spec.evaluation) and the promotion gate "
        "(output.promote): a separate source, or splitFraction of the training rows, held out "
        "from training and from validation.",
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
