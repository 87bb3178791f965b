"""Stage `data`: load rows with `datasets`, check and normalise them per dataset.format, split
off validation data.

Every row is checked by a pure function (`normalize_row`) that returns the model-ready fields
or names the offending field. With badRows fail (default) the first bad row stops the run with
a DatasetError naming the row index and field; with badRows skip such rows are dropped and
counted (metric `bad_rows_skipped`). Column names that do not exist fail before any row is
read, listing the columns that do.

Files are checked before `datasets` reads them (check_files): an empty file is named as such,
and JSON Lines that are not JSON objects (malformed lines) are counted with their first line
numbers. badRows covers malformed lines too: with `fail` they stop the run with that count and
those line numbers, with `skip` they are left out and counted with the other bad rows.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import (
    BadRowPolicy,
    ClassificationSpec,
    DataFormat,
    DatasetError,
    DatasetSpec,
    FieldMapping,
)
from kubetune_api.v1alpha1.rows import (  # noqa: F401 (the row contract; re-exported)
    ROLES,
    RowError,
    label_id,
    normalize_messages,
    normalize_row,
    render_text_template,
    template_fields,
)

from . import jsonfiles
from .sources import ResolvedData

log = logging.getLogger(__name__)

ERROR = "_kubetune_error"
SHOW_SKIPPED = 5


# -------------------------------------------------------------------------------- pure checks


def required_columns(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(column, spec field that names it) pairs the format reads."""
    f: FieldMapping = spec.fields
    fmt = DataFormat(spec.format)
    text_template = getattr(spec, "text_template", None)
    if fmt == DataFormat.TEXT:
        if text_template:
            return [(c, "dataset.textTemplate") for c in template_fields(text_template)]
        return [(f.text, "dataset.fields.text")]
    if fmt == DataFormat.PROMPT_COMPLETION:
        return [(f.prompt, "dataset.fields.prompt"), (f.completion, "dataset.fields.completion")]
    if fmt == DataFormat.MESSAGES:
        return [(f.messages, "dataset.fields.messages")]
    if fmt == DataFormat.PREFERENCE:
        return [
            (f.prompt, "dataset.fields.prompt"),
            (f.chosen, "dataset.fields.chosen"),
            (f.rejected, "dataset.fields.rejected"),
        ]
    return [(f.text, "dataset.fields.text"), (f.label, "dataset.fields.label")]


def check_columns(columns: list[str], spec: DatasetSpec, where: str) -> None:
    missing = [(c, src) for c, src in required_columns(spec) if c not in columns]
    if missing:
        col, src = missing[0]
        raise DatasetError(
            f"{where}: column {col!r} (from {src}) not found; the data has columns: "
            f"{', '.join(columns) or 'none'}"
        )


def _placeholder(fmt: DataFormat) -> dict[str, Any]:
    if fmt == DataFormat.TEXT:
        return {"text": ""}
    if fmt == DataFormat.PROMPT_COMPLETION:
        return {"prompt": "", "completion": ""}
    if fmt == DataFormat.MESSAGES:
        return {"messages": [{"role": "user", "content": ""}]}
    if fmt == DataFormat.PREFERENCE:
        return {"prompt": "", "chosen": "", "rejected": ""}
    return {"text": "", "label": 0}


# -------------------------------------------------------------------------------- loading


def _is_empty(path: Path, builder: str | None) -> bool:
    if path.stat().st_size == 0:
        return True
    if builder not in ("json", "csv", "text"):
        return False
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return not f.read(1 << 20).strip() and not f.read(1)
    except OSError:
        return False


def check_files(
    resolved: ResolvedData, bad_rows: BadRowPolicy, cache_dir: Path, what: str
) -> tuple[ResolvedData, int]:
    """Empty files and malformed JSON lines, before `datasets` reads the files. Returns the
    data to load (with `skip`, cleaned copies of files that had malformed lines) and how many
    malformed lines were skipped."""
    if resolved.kind != "files":
        return resolved, 0
    where = f"{what} {resolved.source}"

    def name(p: Path) -> str:
        return p.name if len(resolved.files) == 1 else str(p)

    empty = [p for p in resolved.files if _is_empty(p, resolved.builder)]
    if empty:
        raise DatasetError(
            f"{where}: {name(empty[0])} is empty (0 bytes or only whitespace, no rows)"
            + (f" ({len(empty) - 1} more empty files)" if len(empty) > 1 else "")
            + "; upload a file with at least one row, or point dataset at another file"
        )
    if resolved.builder != "json":
        return resolved, 0
    skipped = 0
    files: list[Path] = []
    found: list[tuple[Path, list[tuple[int, str]]]] = []
    for p in resolved.files:
        if jsonfiles.is_json_document(p):
            files.append(p)
            continue
        try:
            good, bad = jsonfiles.scan(p)
        except UnicodeDecodeError as e:
            raise DatasetError(
                f"{where}: {name(p)}: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from e
        except (OSError, EOFError) as e:
            raise DatasetError(f"{where}: {name(p)}: cannot read ({e})") from e
        if not bad:
            files.append(p)
            continue
        found.append((p, bad))
        skipped += len(bad)
        if bad_rows == BadRowPolicy.SKIP and good:
            clean = cache_dir / "clean" / what / f"{len(files)}-{p.name.removesuffix('.gz')}"
            clean.parent.mkdir(parents=True, exist_ok=True)
            clean.write_text("".join(good), encoding="utf-8")
            files.append(clean)
    if not found:
        return resolved, 0
    lines = "; ".join(
        f"{name(p)} line{'s' if len(bad) > 1 else ''} "
        + ", ".join(str(n) for n, _ in bad[:SHOW_SKIPPED])
        + (f" (+{len(bad) - SHOW_SKIPPED} more)" if len(bad) > SHOW_SKIPPED else "")
        for p, bad in found
    )
    first_n, first_problem = found[0][1][0]
    first = f"{name(found[0][0])} line {first_n}: {first_problem}"
    if bad_rows == BadRowPolicy.FAIL:
        raise DatasetError(
            f"{where}: {skipped} malformed JSON line{'s' if skipped > 1 else ''} ({lines}; the "
            f"first, {first}); fix the data or set dataset.badRows: skip, which leaves malformed "
            "lines out and counts them with the other bad rows"
        )
    if not files:
        raise DatasetError(
            f"{where}: no usable rows ({skipped} malformed JSON lines skipped: {lines}; the "
            f"first, {first})"
        )
    log.warning(
        "%s: skipping %d malformed JSON line%s (%s; the first, %s)",
        where,
        skipped,
        "s" if skipped > 1 else "",
        lines,
        first,
    )
    return replace(resolved, files=files), skipped


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return f"{type(e).__name__}: {e}"


def load_rows(resolved: ResolvedData, cache_dir: Path, what: str) -> Any:
    """A `datasets.Dataset` of the raw rows."""
    import datasets

    where = f"{what} {resolved.source}"
    try:
        if resolved.kind == "inline":
            return datasets.Dataset.from_list(resolved.rows or [])
        if resolved.kind == "hub":
            hub = resolved.hub
            return datasets.load_dataset(
                hub.name,
                hub.config,
                split=hub.split,
                revision=hub.revision,
                # A private dataset has its own token (dataset.tokenSecretRef); else the model's.
                token=os.environ.get("KUBETUNE_DATASET_HF_TOKEN")
                or os.environ.get("HF_TOKEN")
                or None,
                cache_dir=str(cache_dir),
            )
        return datasets.load_dataset(
            str(resolved.builder),
            data_files=[str(p) for p in resolved.files],
            split="train",
            cache_dir=str(cache_dir),
        )
    except DatasetError:
        raise
    except Exception as e:
        detail = None
        if resolved.builder == "json":
            for p in resolved.files:
                bad = jsonfiles.first_problem(p)
                if bad:
                    name = p.name if len(resolved.files) == 1 else str(p)
                    detail = f"{name}: {bad}"
                    break
        if resolved.builder in ("parquet", "csv") and detail is None:
            detail = _root_cause(e)
        raise DatasetError(f"{where}: cannot load ({detail or _root_cause(e)})") from e


@dataclass
class Prepared:
    train: Any
    eval: Any | None
    test: Any | None = None  # dataset.test: held out from training and validation
    bad_rows_skipped: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # for the manifest


def format_rows(
    ds: Any,
    spec: DatasetSpec,
    cls: ClassificationSpec | None,
    where: str,
    already_skipped: int = 0,
) -> tuple[Any, int]:
    """Check and normalise every row. Returns (dataset of model-ready columns, rows skipped,
    including `already_skipped` malformed lines left out before loading)."""
    check_columns(list(ds.column_names), spec, where)
    fmt = DataFormat(spec.format)
    if len(ds) == 0:
        if already_skipped:
            raise DatasetError(
                f"{where}: no usable rows ({already_skipped} malformed JSON lines skipped)"
            )
        raise DatasetError(f"{where}: no rows")

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        try:
            out = normalize_row(row, spec, cls)
            out[ERROR] = ""
        except RowError as e:
            out = _placeholder(fmt)
            out[ERROR] = str(e)
        except (KeyError, IndexError, ValueError, TypeError) as e:  # e.g. a bad textTemplate
            out = _placeholder(fmt)
            out[ERROR] = f"cannot format: {type(e).__name__}: {e}"
        return out

    num_proc = min(os.cpu_count() or 1, 8) if len(ds) > 200_000 else None
    mapped = ds.map(fn, remove_columns=list(ds.column_names), num_proc=num_proc)
    errors = mapped[ERROR]
    bad = [(i, msg) for i, msg in enumerate(errors) if msg]
    if bad:
        if spec.bad_rows == BadRowPolicy.FAIL:
            i, msg = bad[0]
            more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise DatasetError(
                f"{where}: row {i} (counting from 0): {msg}{more}; fix the data or set "
                "dataset.badRows: skip"
            )
        for i, msg in bad[:SHOW_SKIPPED]:
            log.warning("%s: skipping row %d: %s", where, i, msg)
        if len(bad) > SHOW_SKIPPED:
            log.warning("%s: ... and %d more bad rows skipped", where, len(bad) - SHOW_SKIPPED)
        keep = [i for i, msg in enumerate(errors) if not msg]
        mapped = mapped.select(keep)
    mapped = mapped.remove_columns([ERROR])
    total = len(bad) + already_skipped
    if len(mapped) == 0:
        raise DatasetError(f"{where}: no usable rows ({total} bad rows skipped)")
    return mapped, total


def prepare(
    spec: DatasetSpec,
    cls: ClassificationSpec | None,
    train_src: ResolvedData,
    eval_src: ResolvedData | None,
    cache_dir: Path,
    seed: int,
    test_src: ResolvedData | None = None,
) -> Prepared:
    policy = BadRowPolicy(spec.bad_rows)
    loadable, malformed = check_files(train_src, policy, cache_dir, "dataset")
    raw = load_rows(loadable, cache_dir, "dataset")
    train, skipped = format_rows(
        raw, spec, cls, f"dataset {train_src.source}", already_skipped=malformed
    )
    info: dict[str, Any] = {
        "train": {
            "source": train_src.source,
            "fingerprint": train_src.fingerprint(),
            "files": train_src.file_info,
            "rows": len(raw) + malformed,
        }
    }
    evald = testd = None
    val, test = spec.validation, spec.test
    val_fraction = val.split_fraction if val is not None else None
    test_fraction = test.split_fraction if test is not None else None
    split_seed = spec.shuffle_seed if spec.shuffle_seed is not None else seed
    if val_fraction is not None or test_fraction is not None:
        total = len(train)
        train, split_val, split_test = holdout_splits(
            train, val_fraction, test_fraction, split_seed
        )
        if split_val is not None:
            evald = split_val
            info["validation"] = {"splitFraction": val_fraction, "rows": len(evald)}
        if split_test is not None:
            testd = split_test
            info["test"] = {"splitFraction": test_fraction, "rows": len(testd)}
        log.info(
            "data: %d rows split into %d training rows%s%s",
            total,
            len(train),
            f", {len(split_val)} validation" if split_val is not None else "",
            f", {len(split_test)} test" if split_test is not None else "",
        )
    for what, part, resolved in (("validation", val, eval_src), ("test", test, test_src)):
        if part is None or part.split_fraction is not None or resolved is None:
            continue
        loadable_part, malformed_part = check_files(resolved, policy, cache_dir, what)
        raw_part = load_rows(loadable_part, cache_dir, what)
        rows, skipped_part = format_rows(
            raw_part, spec, cls, f"{what} {resolved.source}", already_skipped=malformed_part
        )
        skipped += skipped_part
        info[what] = {
            "source": resolved.source,
            "fingerprint": resolved.fingerprint(),
            "files": resolved.file_info,
            "rows": len(raw_part) + malformed_part,
        }
        if what == "validation":
            evald = rows
        else:
            testd = rows
    info["train"]["usedRows"] = len(train)
    if evald is not None:
        info["validation"]["usedRows"] = len(evald)
    if testd is not None:
        info["test"]["usedRows"] = len(testd)
    info["badRowsSkipped"] = skipped
    log.info(
        "data: %d training rows%s%s",
        len(train),
        f", {len(evald)} validation rows" if evald is not None else "",
        f", {skipped} bad rows skipped" if skipped else "",
    )
    return Prepared(train=train, eval=evald, test=testd, bad_rows_skipped=skipped, info=info)


def holdout_splits(
    rows: Any, val_fraction: float | None, test_fraction: float | None, seed: int
) -> tuple[Any, Any | None, Any | None]:
    """(train, validation, test) split off `rows` by fractions of all of them, seeded: the test
    rows first, then the validation rows from the rest, so the three are disjoint. Without a
    test fraction the validation split is the one earlier versions made (same seed, same rows)."""
    total = len(rows)
    n_test = round(total * test_fraction) if test_fraction is not None else 0
    n_val = round(total * val_fraction) if val_fraction is not None else 0
    for fraction, n, where in (
        (val_fraction, n_val, "dataset.validation.splitFraction"),
        (test_fraction, n_test, "dataset.test.splitFraction"),
    ):
        if fraction is not None and n < 1:
            raise DatasetError(
                f"{where} {fraction} of {total} rows leaves no {where.split('.')[1]} rows: "
                "raise it or give more rows"
            )
    if n_val + n_test >= total:
        raise DatasetError(
            f"dataset.validation/test splitFraction of {total} rows leaves no training rows "
            f"({n_val} validation, {n_test} test): lower them or give more rows"
        )
    train, val, test = rows, None, None
    if n_test:
        parts = train.train_test_split(test_size=n_test, seed=seed)
        train, test = parts["train"], parts["test"]
    if n_val:
        parts = train.train_test_split(test_size=n_val, seed=seed)
        train, val = parts["train"], parts["test"]
    return train, val, test


def tokenize_classification(ds: Any, tokenizer: Any, max_length: int) -> Any:
    """text -> input_ids/attention_mask (truncated), label -> labels."""

    def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return dict(enc)

    return ds.map(fn, batched=True, remove_columns=list(ds.column_names))
