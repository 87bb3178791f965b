"""The chart's part of FineTuneSchedule: both CRDs ship in crds/, the operator's Role grants the
schedule verbs (tests/unit/test_chart_rbac.py checks them against what the operator does in the
middle tier), and only an explicit `schedules.s3CredentialsSecret` gives the operator S3
credentials, as two secretKeyRefs and nothing else; `schedules.watchPrefixes` reaches the
operator's settings (default: nothing may be watched)."""

from __future__ import annotations

from typing import Any

import pytest
from helmlib import CHART, render
from kubetune_operator.settings import OperatorSettings
from test_chart_render import container


def test_both_crds_ship_with_the_chart() -> None:
    names = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert names == ["kubetune.io_finetunejobs.yaml", "kubetune.io_finetuneschedules.yaml"]


def test_the_operator_gets_s3_credentials_only_when_asked() -> None:
    refs = [e for e in container(render())["env"] if "secretKeyRef" in (e.get("valueFrom") or {})]
    assert refs == []
    env = container(render({"schedules": {"s3CredentialsSecret": "watch-s3"}}))["env"]
    refs = [e for e in env if "secretKeyRef" in (e.get("valueFrom") or {})]
    assert refs == [
        {"name": "AWS_ACCESS_KEY_ID",
         "valueFrom": {"secretKeyRef": {"name": "watch-s3", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": "watch-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
    ]  # fmt: skip


def test_watch_prefixes_reach_the_operator_as_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def setting(values: dict[str, Any]) -> dict[str, list[str]]:
        env = {e["name"]: e["value"] for e in container(render(values))["env"] if "value" in e}
        monkeypatch.setenv(
            "KUBETUNE_SCHEDULE_WATCH_PREFIXES", env["KUBETUNE_SCHEDULE_WATCH_PREFIXES"]
        )
        return OperatorSettings().schedule_watch_prefixes

    assert setting({}) == {}  # the default: no schedule watches data
    allowed = {"*": ["s3://datasets/{namespace}/"], "team-llm": ["s3://llm-data/"]}
    assert setting({"schedules": {"watchPrefixes": allowed}}) == allowed
