"""Building blocks of the API: names, patterns, wire types, the Spec base model and
the CEL helpers every sub-spec uses.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic.alias_generators import to_camel

from . import _cel

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


def check_name_length(metadata: dict[str, Any], limit: int, why: str) -> None:
    """metadata.name at most `limit` characters: the objects the operator names after it need
    room for their suffix (`why` says which). The CRD says the same with `maxLength` on
    metadata.name (kubetune_api.build.crd)."""
    name = metadata.get("name")
    if isinstance(name, str) and len(name) > limit:
        raise ValueError(f"metadata.name: metadata.name must be at most {limit} characters ({why})")


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
    nested defaults are applied to it (on real objects the nested defaults are always there).

    The models evaluate the same rule in Python (`Spec._cel_rules`): it is written only here."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Spec(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields refused (as the CRD's
    structural schema prunes them, the Python side refuses them so a typo is not silently lost),
    and the CEL rules of the model's `x-kubernetes-validations` evaluated on its wire form."""

    # Where the model sits in a FineTuneJob (e.g. "spec.method"): its rules' messages start there.
    # "" for a model used at several places; its messages then name the field relative to it.
    api_path: ClassVar[str] = ""

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

    @model_validator(mode="after")
    def _cel_rules(self) -> Self:
        problems = _cel.failures(self, self.api_path)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
