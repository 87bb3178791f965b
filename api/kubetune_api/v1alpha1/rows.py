"""The row contract of each dataset.format (pure): what one row must look like, and the
model-ready fields it becomes, or a RowError naming the offending field. The trainer checks
every row with it; `kubetune estimate`, dry runs and the OpenAI-compatible API's file upload
check samples with the same code."""

from __future__ import annotations

import json
import math
import string
from typing import Any

from .dataset import DataFormat, DatasetSpec
from .model import ClassificationSpec

ROLES = {"system", "user", "assistant", "tool"}


def render_text_template(template: str, row: dict[str, Any]) -> str:
    """The text of one row under `dataset.textTemplate` (the pattern has already refused
    attribute/index access). Raises KeyError naming a missing column."""
    return template.format_map(row)


class RowError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


def template_fields(template: str) -> list[str]:
    """Placeholders of a str.format template ("Quote: {quote}" -> ["quote"])."""
    out = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name != "":
            out.append(name.split(".")[0].split("[")[0])
    return out


def _string(row: dict[str, Any], col: str, allow_empty: bool = False) -> str:
    if col not in row or row[col] is None:
        raise RowError(col, "missing or null")
    v = row[col]
    if not isinstance(v, str):
        raise RowError(col, f"must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RowError(col, "is empty")
    return v


def label_id(value: Any, cls: ClassificationSpec, col: str) -> int:
    """A label as a class id: an integer in range, a digit string, or one of labelNames."""
    n = cls.count
    names = cls.label_names or []
    if value is None:
        raise RowError(col, "missing or null")
    if isinstance(value, bool):
        raise RowError(col, f"must be a class id or name, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise RowError(col, f"must be an integer class id, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        else:
            known = f"; labelNames are {', '.join(names)}" if names else " (no labelNames set)"
            raise RowError(col, f"unknown label {value!r}{known}")
    if not isinstance(value, int):
        raise RowError(col, f"must be a class id or name, got {type(value).__name__}")
    if not 0 <= value < n:
        raise RowError(col, f"label {value} out of range: expected 0..{n - 1} ({n} classes)")
    return value


def normalize_messages(value: Any, col: str, need_assistant: bool) -> list[dict[str, str]]:
    if value is None:
        raise RowError(col, "missing or null")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise RowError(col, "must be a list of {role, content} turns (not JSON text)") from e
    if not isinstance(value, list) or not value:
        raise RowError(col, "must be a non-empty list of {role, content} turns")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowError(f"{col}[{i}]", "must be an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise RowError(f"{col}[{i}].role", f"must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise RowError(f"{col}[{i}].content", "must be a string")
        out.append({"role": str(role), "content": content})
    if need_assistant and not any(t["role"] == "assistant" for t in out):
        raise RowError(col, "has no assistant turn (nothing to learn with assistantOnlyLoss)")
    return out


def normalize_row(
    row: dict[str, Any], spec: DatasetSpec, cls: ClassificationSpec | None
) -> dict[str, Any]:
    """Model-ready fields of one row, or RowError naming the field."""
    f = spec.fields
    fmt = DataFormat(spec.format)
    if fmt == DataFormat.TEXT:
        text_template = getattr(spec, "text_template", None)
        if text_template:
            for col in template_fields(text_template):
                if row.get(col) is None:
                    raise RowError(col, "missing or null (used by dataset.textTemplate)")
            text = render_text_template(text_template, row)
        else:
            text = _string(row, f.text)
        if not text.strip():
            raise RowError(f.text, "is empty")
        return {"text": text}
    if fmt == DataFormat.PROMPT_COMPLETION:
        return {
            "prompt": _string(row, f.prompt, allow_empty=True),
            "completion": _string(row, f.completion),
        }
    if fmt == DataFormat.MESSAGES:
        return {
            "messages": normalize_messages(
                row.get(f.messages), f.messages, spec.assistant_only_loss
            )
        }
    if fmt == DataFormat.PREFERENCE:
        chosen, rejected = _string(row, f.chosen), _string(row, f.rejected)
        if chosen.strip() == rejected.strip():
            raise RowError(f.rejected, f"is the same as {f.chosen}: nothing to prefer")
        return {"prompt": _string(row, f.prompt), "chosen": chosen, "rejected": rejected}
    assert cls is not None
    return {"text": _string(row, f.text), "label": label_id(row.get(f.label), cls, f.label)}
