"""Everything under tests/integration needs the local cluster: mark it `integration`.

The shared fixtures are registered here, once, for every integration test: `operators` and
`op_identity` (operator_harness.py), `trainer_s3` (trainer_fixtures.py); `cluster`, `namespace`,
`s3` and `tiny_fixtures` come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from operator_harness import op_identity_fixture, operators_fixture
from trainer_fixtures import trainer_s3

__all__ = ["op_identity_fixture", "operators_fixture", "trainer_s3"]  # fixtures, by import

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
