"""The suite's own layout: pytest imports test modules by basename (rootdir-relative, no
packages), so two test files with the same name in tests/unit and tests/integration make the
whole run stop at collection ("import file mismatch")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert sorted(n for n, count in names.items() if count > 1) == []
