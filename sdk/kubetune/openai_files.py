"""The OpenAI-compatible API's uploaded files, pure: JSONL validation that names the first bad
line, OpenAI's DPO rows -> the trainer's preference rows, and the File object."""

from __future__ import annotations

import json
from typing import Any

from kubetune.openai_mapping import ApiError


def validate_jsonl(data: bytes, method: str | None = "supervised") -> tuple[int, str]:
    """(rows, dataset format) of an uploaded training file, or ApiError naming the first bad
    line. One JSON object a line: chat rows ({"messages": [...]}) or prompt/completion rows for
    method supervised; OpenAI's preference rows ({"input": {"messages": [...]},
    "preferred_output": [...], "non_preferred_output": [...]}, format "preference") for method
    dpo; any of them for method None (an upload, whose method is not known yet)."""
    from kubetune_api.v1alpha1.rows import RowError, normalize_messages

    text = _utf8(data)
    rows, fmt = 0, None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad_line(n, f"not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise _bad_line(n, "must be a JSON object")
        kind = (
            "messages"
            if "messages" in row
            else "prompt-completion"
            if "prompt" in row
            else "preference"
            if "input" in row
            else None
        )
        if kind is None:
            raise _bad_line(
                n,
                'needs "messages" (chat) or "prompt" and "completion" (supervised), or '
                '"input", "preferred_output" and "non_preferred_output" (dpo)',
            )
        if method == "dpo" and kind != "preference":
            raise _bad_line(
                n,
                f'is {kind} but method dpo needs "input", "preferred_output" and '
                '"non_preferred_output"',
            )
        if method == "supervised" and kind == "preference":
            raise _bad_line(
                n, 'is a preference (dpo) row: use method {"type": "dpo"} or a supervised file'
            )
        if fmt is not None and kind != fmt:
            raise _bad_line(n, f"is {kind} but the lines before are {fmt}")
        fmt = kind
        try:
            if kind == "messages":
                normalize_messages(row["messages"], "messages", need_assistant=True)
            elif kind == "preference":
                _preference_row(row)
            elif not isinstance(row.get("completion"), str) or not row["completion"]:
                raise RowError("completion", "must be a non-empty string")
            elif not isinstance(row.get("prompt"), str):
                raise RowError("prompt", "must be a string")
        except RowError as e:
            raise _bad_line(n, f"{e.field}: {e.problem}") from e
        rows += 1
    if not rows or fmt is None:
        raise ApiError(
            400, "Invalid file: no training examples", param="file", code="invalid_file_format"
        )
    return rows, fmt


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400, f"Invalid file: not UTF-8 text ({e})", param="file", code="invalid_file_format"
        ) from e


def _preference_row(row: dict[str, Any]) -> dict[str, str]:
    """prompt/chosen/rejected text of one OpenAI preference row, or RowError naming the field.

    The trainer's preference rows are strings, so the input turns become one prompt: a lone
    user turn is its content as is; several turns (a system prompt, earlier exchanges) are
    joined as "System: ...", "User: ...", "Assistant: ..." paragraphs, so no turn is lost."""
    from kubetune_api.v1alpha1.rows import RowError, normalize_messages

    inp = row.get("input")
    if not isinstance(inp, dict):
        raise RowError("input", 'must be an object {"messages": [...]}')
    turns = normalize_messages(inp.get("messages"), "input.messages", need_assistant=False)
    if not any(t["role"] == "user" for t in turns):
        raise RowError("input.messages", "has no user turn")
    if len(turns) == 1:
        prompt = turns[0]["content"]
    else:
        prompt = "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns)
    if not prompt.strip():
        raise RowError("input.messages", "has no text: the prompt would be empty")
    out = {"prompt": prompt}
    for col, name in (("preferred_output", "chosen"), ("non_preferred_output", "rejected")):
        value = row.get(col)
        if (
            not isinstance(value, list)
            or len(value) != 1
            or not isinstance(value[0], dict)
            or value[0].get("role") != "assistant"
            or not isinstance(value[0].get("content"), str)
            or not value[0]["content"].strip()
        ):
            raise RowError(
                col, 'must be one assistant turn: [{"role": "assistant", "content": "..."}]'
            )
        out[name] = value[0]["content"]
    if out["chosen"].strip() == out["rejected"].strip():
        raise RowError("non_preferred_output", "is the same as preferred_output: nothing to prefer")
    return out


def dpo_rows(data: bytes) -> bytes:
    """An OpenAI preference (DPO) file as the trainer's preference rows: JSONL of
    {"prompt", "chosen", "rejected"} strings, one a line (pure; ApiError naming a bad line)."""
    from kubetune_api.v1alpha1.rows import RowError

    validate_jsonl(data, method="dpo")
    out = []
    for n, line in enumerate(_utf8(data).splitlines(), 1):
        if line.strip():
            try:
                out.append(json.dumps(_preference_row(json.loads(line)), ensure_ascii=False))
            except RowError as e:  # (validate_jsonl already refused it; kept for clarity)
                raise _bad_line(n, f"{e.field}: {e.problem}") from e
    return ("\n".join(out) + "\n").encode()


def _bad_line(n: int, problem: str) -> ApiError:
    return ApiError(
        400, f"Invalid file format: line {n}: {problem}", param="file", code="invalid_file_format"
    )


def file_object(file_id: str, meta: dict[str, str], size: int, created: int) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created,
        "filename": meta.get("filename", file_id + ".jsonl"),
        "purpose": meta.get("purpose", "fine-tune"),
        "status": "processed",
        "status_details": None,
    }
