"""Unit tests run in the same pytest session as the integration suite, whose `cluster` fixture
exports the local cluster's environment (KUBETUNE_S3_ENDPOINT, ...) into os.environ. The
operator's settings read KUBETUNE_* from the environment, so without this a unit test's outcome
would depend on whether an integration test ran before it."""

from __future__ import annotations

import os

import pytest
from kubetune_operator.settings import OperatorSettings

PREFIX = "KUBETUNE_"


@pytest.fixture(autouse=True)
def _no_operator_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = set(OperatorSettings.model_fields)
    for name in list(os.environ):
        if name.startswith(PREFIX) and name[len(PREFIX) :].lower() in fields:
            monkeypatch.delenv(name)
