"""Row checks and formatting (kubetune_trainer.data): every bad row names its index and
field; skip drops and counts; missing columns list the columns that exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_api.v1alpha1 import ClassificationSpec, DatasetError, DatasetSpec
from kubetune_trainer.data import (
    RowError,
    check_columns,
    format_rows,
    label_id,
    load_rows,
    normalize_row,
    prepare,
    template_fields,
)
from kubetune_trainer.sources import ResolvedData
from kubetune_trainer.testing import synthetic


def ds_spec(**kw: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"inline": [{"text": "x"}], **kw})


CLS = ClassificationSpec(label_names=["neg", "pos", "neutral"])


def test_label_ids_names_digits_and_out_of_range() -> None:
    assert label_id(1, CLS, "label") == 1
    assert label_id("pos", CLS, "label") == 1
    assert label_id("2", CLS, "label") == 2
    assert label_id(2.0, CLS, "label") == 2
    with pytest.raises(RowError, match=r"label 3 out of range: expected 0\.\.2 \(3 classes\)"):
        label_id(3, CLS, "label")
    with pytest.raises(RowError, match="out of range"):
        label_id(-1, CLS, "label")
    with pytest.raises(RowError, match="unknown label 'happy'; labelNames are neg, pos, neutral"):
        label_id("happy", CLS, "label")
    with pytest.raises(RowError, match="integer class id"):
        label_id(1.5, CLS, "label")
    with pytest.raises(RowError, match="missing or null"):
        label_id(None, CLS, "label")
    with pytest.raises(RowError, match="class id or name"):
        label_id(True, CLS, "label")


def test_normalize_each_format() -> None:
    assert normalize_row({"text": "hi"}, ds_spec(), None) == {"text": "hi"}
    pc = ds_spec(format="prompt-completion")
    assert normalize_row({"prompt": "a", "completion": "b"}, pc, None) == {
        "prompt": "a",
        "completion": "b",
    }
    with pytest.raises(RowError, match="'completion': is empty"):
        normalize_row({"prompt": "a", "completion": " "}, pc, None)
    msgs = ds_spec(format="messages")
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert normalize_row({"messages": turns}, msgs, None) == {"messages": turns}
    assert normalize_row({"messages": json.dumps(turns)}, msgs, None) == {"messages": turns}
    with pytest.raises(RowError, match=r"'messages\[1\].role': must be one of"):
        normalize_row({"messages": [turns[0], {"role": "bot", "content": "x"}]}, msgs, None)
    with pytest.raises(RowError, match="no assistant turn"):
        normalize_row({"messages": turns[:1]}, msgs, None)
    # assistant-only loss off: a conversation without assistant turn is fine
    no_ao = ds_spec(format="messages", assistantOnlyLoss=False)
    assert normalize_row({"messages": turns[:1]}, no_ao, None)
    cls = ds_spec(format="classification")
    assert normalize_row({"text": "t", "label": "neutral"}, cls, CLS) == {"text": "t", "label": 2}
    with pytest.raises(RowError, match="'text': must be a string, got int"):
        normalize_row({"text": 5, "label": 0}, cls, CLS)


def test_text_template_and_its_columns() -> None:
    spec = ds_spec(textTemplate="Quote: {quote} Author: {author}")
    assert template_fields(spec.text_template or "") == ["quote", "author"]
    assert normalize_row({"quote": "q", "author": "a"}, spec, None) == {
        "text": "Quote: q Author: a"
    }
    with pytest.raises(RowError, match="'author': missing or null"):
        normalize_row({"quote": "q", "author": None}, spec, None)
    with pytest.raises(DatasetError, match=r"column 'author' \(from dataset.textTemplate\)"):
        check_columns(["quote"], spec, "dataset x")


def test_unknown_column_lists_the_real_ones() -> None:
    spec = ds_spec(format="classification", fields={"text": "body"})
    with pytest.raises(DatasetError) as e:
        check_columns(["text", "label"], spec, "dataset s3://b/d.jsonl")
    msg = str(e.value)
    assert "column 'body' (from dataset.fields.text) not found" in msg
    assert "columns: text, label" in msg


def test_format_rows_fail_names_row_and_field() -> None:
    import datasets

    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 7}, {"text": None, "label": 1}]
    spec = ds_spec(format="classification")
    with pytest.raises(DatasetError) as e:
        format_rows(datasets.Dataset.from_list(rows), spec, CLS, "dataset d")
    msg = str(e.value)
    assert "row 1 (counting from 0)" in msg and "'label'" in msg and "out of range" in msg
    assert "1 more bad rows" in msg and "badRows: skip" in msg


def test_format_rows_skip_counts() -> None:
    import datasets

    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 7}, {"text": None, "label": 1}]
    spec = ds_spec(format="classification", badRows="skip")
    out, skipped = format_rows(datasets.Dataset.from_list(rows), spec, CLS, "dataset d")
    assert skipped == 2 and len(out) == 1 and out[0] == {"text": "a", "label": 0}
    with pytest.raises(DatasetError, match="no usable rows"):
        format_rows(datasets.Dataset.from_list(rows[1:]), spec, CLS, "dataset d")


def test_corrupt_jsonl_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",\n')
    src = ResolvedData(source="s3://b/train.jsonl", kind="files", builder="json", files=[p])
    with pytest.raises(DatasetError) as e:
        load_rows(src, tmp_path / "cache", "dataset")
    assert "train.jsonl: line 3: invalid JSON" in str(e.value)


def test_prepare_split_fraction_and_fingerprint(tmp_path: Path) -> None:
    rows = synthetic.counting_rows(40, kind="prompt-completion")
    spec = DatasetSpec.model_validate(
        {"inline": rows, "format": "prompt-completion", "validation": {"splitFraction": 0.25}}
    )
    src = ResolvedData(source="inline (dataset)", kind="inline", rows=rows)
    p = prepare(spec, None, src, None, tmp_path / "cache", seed=1)
    assert p.eval is not None
    assert len(p.train) == 30 and len(p.eval) == 10
    assert p.info["validation"] == {"splitFraction": 0.25, "rows": 10, "usedRows": 10}
    assert len(p.info["train"]["fingerprint"]) == 64
    # same rows, same fingerprint; one row changed, another
    other = ResolvedData(source="inline (dataset)", kind="inline", rows=[*rows[:-1], rows[0]])
    assert src.fingerprint() == ResolvedData(**{**src.__dict__}).fingerprint()
    assert src.fingerprint() != other.fingerprint()
    tiny = DatasetSpec.model_validate(
        {"inline": rows[:2], "validation": {"splitFraction": 0.1}, "format": "prompt-completion"}
    )
    with pytest.raises(DatasetError, match="leaves no validation"):
        prepare(
            tiny, None, ResolvedData(source="i", kind="inline", rows=rows[:2]), None, tmp_path, 1
        )


def _jsonl(tmp_path: Path, text: str, name: str = "train.jsonl") -> ResolvedData:
    p = tmp_path / name
    p.write_text(text)
    return ResolvedData(source=f"s3://b/{name}", kind="files", builder="json", files=[p])


def test_empty_file_is_named_as_empty(tmp_path: Path) -> None:
    from kubetune_api.v1alpha1 import BadRowPolicy
    from kubetune_trainer.data import check_files

    for text in ("", "\n  \n"):
        src = _jsonl(tmp_path, text)
        with pytest.raises(DatasetError) as e:
            check_files(src, BadRowPolicy.SKIP, tmp_path / "cache", "dataset")
        assert "train.jsonl is empty" in str(e.value)
        assert "StopIteration" not in str(e.value)


def test_malformed_json_lines_fail_counted_with_their_line_numbers(tmp_path: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(10)]
    rows[2] = '{"prompt": "p2",'  # line 3
    rows[6] = "[1, 2]"  # line 7: JSON, but not an object
    src = _jsonl(tmp_path, "\n".join(rows) + "\n")
    spec = DatasetSpec.model_validate(
        {"s3Uri": "s3://bucket/train.jsonl", "format": "prompt-completion"}
    )
    with pytest.raises(DatasetError) as e:
        prepare(spec, None, src, None, tmp_path / "cache", seed=1)
    msg = str(e.value)
    assert "2 malformed JSON lines" in msg and "train.jsonl lines 3, 7" in msg, msg
    assert "dataset.badRows: skip" in msg


def test_bad_rows_skip_skips_malformed_lines_and_counts_them(tmp_path: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(10)]
    rows[2] = '{"prompt": "p2",'
    rows[6] = "[1, 2]"
    rows[8] = json.dumps({"prompt": "p8", "completion": None})  # a bad row, not a bad line
    src = _jsonl(tmp_path, "\n".join(rows) + "\n")
    spec = DatasetSpec.model_validate(
        {"s3Uri": "s3://bucket/train.jsonl", "format": "prompt-completion", "badRows": "skip"}
    )
    p = prepare(spec, None, src, None, tmp_path / "cache", seed=1)
    assert len(p.train) == 7
    assert p.bad_rows_skipped == 3  # two malformed lines + one bad row
    assert p.info["badRowsSkipped"] == 3 and p.info["train"]["rows"] == 10
    assert src.files[0].read_text().count("\n") == 10  # the downloaded file is left as it was
    only_bad = _jsonl(tmp_path, "{oops\n[1]\n", name="bad.jsonl")
    with pytest.raises(DatasetError, match=r"no usable rows \(2 malformed JSON lines"):
        prepare(spec, None, only_bad, None, tmp_path / "cache2", seed=1)


def test_one_malformed_line_message_names_file_line_and_problem(tmp_path: Path) -> None:
    src = _jsonl(tmp_path, '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    spec = DatasetSpec.model_validate(
        {"s3Uri": "s3://bucket/train.jsonl", "format": "prompt-completion"}
    )
    with pytest.raises(DatasetError) as e:
        prepare(spec, None, src, None, tmp_path / "cache", seed=1)
    msg = str(e.value)
    assert "1 malformed JSON line (train.jsonl line 2;" in msg, msg
    assert "train.jsonl line 2: invalid JSON" in msg, msg


def test_preference_rows_name_the_bad_row_and_field() -> None:
    import datasets

    good = {"prompt": "q", "chosen": "yes", "rejected": "no"}
    rows = [
        good,
        {"prompt": "q", "chosen": "same", "rejected": " same "},
        {"prompt": "q", "chosen": "", "rejected": "no"},
        {"prompt": "q", "chosen": "yes", "rejected": None},
    ]
    spec = ds_spec(format="preference")
    with pytest.raises(DatasetError) as e:
        format_rows(datasets.Dataset.from_list(rows), spec, None, "dataset d")
    msg = str(e.value)
    assert "row 1 (counting from 0)" in msg and "'rejected'" in msg and "same as chosen" in msg
    assert "2 more bad rows" in msg

    skip = ds_spec(format="preference", badRows="skip")
    out, skipped = format_rows(datasets.Dataset.from_list(rows), skip, None, "dataset d")
    assert skipped == 3 and out[0] == good

    renamed = ds_spec(format="preference", fields={"chosen": "good"})
    with pytest.raises(DatasetError, match=r"column 'good' \(from dataset.fields.chosen\)"):
        format_rows(datasets.Dataset.from_list([good]), renamed, None, "dataset d")
