"""JSON and JSON Lines data files (.gz too), checked before `datasets` reads them: the first
malformed line of a file (what the error names), or the good and the bad lines of one when
dataset.badRows lets the run skip the bad ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def _line_problem(line: str) -> str | None:
    """What is wrong with one line of a JSON Lines file (a blank line is fine)."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError as e:
        return f"invalid JSON ({e})"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object (one JSON object per line)"
    return None


def open_text(path: Path) -> Any:
    """The file as UTF-8 text, gunzipped on the fly for .gz."""
    return (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8")


def first_problem(path: Path) -> str | None:
    try:
        with open_text(path) as f:
            if path.name.lower().endswith((".json", ".json.gz")):
                head = f.read(1)
                if head == "[" or head == "{":
                    f.seek(0)
                    try:
                        json.load(f)
                        return None
                    except ValueError as e:
                        return f"invalid JSON ({e})"
                f.seek(0)
            for n, line in enumerate(f, start=1):
                problem = _line_problem(line)
                if problem:
                    return f"line {n}: {problem}"
    except UnicodeDecodeError as e:
        return f"not UTF-8 text ({e.reason} at byte {e.start})"
    except OSError as e:
        return f"cannot read ({e})"
    return None


def is_json_document(path: Path) -> bool:
    """A .json file that is one JSON document (an array or an object), not JSON Lines."""
    if not path.name.lower().endswith(".json"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            if f.read(1) not in ("[", "{"):
                return False
            f.seek(0)
            json.load(f)
        return True
    except (ValueError, OSError):
        return False


def scan(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """(the good lines, [(line number from 1, problem)] of malformed ones) of a JSON Lines
    file; blank lines are neither."""
    good: list[str] = []
    bad: list[tuple[int, str]] = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            problem = _line_problem(line)
            if problem:
                bad.append((n, problem))
            elif line.strip():
                good.append(line if line.endswith("\n") else line + "\n")
    return good, bad
