"""Unit tier for the kubetune SDK/CLI: input validation and the patches sent (fake API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune import CANCELLED_ANNOTATION, Client, JobFailed
from kubetune.cli import EXIT_BAD_INPUT, app
from kubetune.client import load_job
from pydantic import ValidationError
from typer.testing import CliRunner

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


class FakeCustom:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.patches: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *a: Any) -> dict[str, Any]:
        return self.obj

    def patch_namespaced_custom_object(self, *a: Any) -> dict[str, Any]:
        self.patches.append(a[-1])
        return self.obj


def _client(obj: dict[str, Any]) -> tuple[Client, FakeCustom]:
    c = Client.__new__(Client)
    c.namespace = "team-a"
    fake = FakeCustom(obj)
    c.custom = fake  # type: ignore[assignment]
    return c, fake


def _example() -> dict[str, Any]:
    for p in EXAMPLES:
        for doc in yaml.safe_load_all(p.read_text()):
            if doc and doc.get("kind") == "FineTuneJob":
                return doc
    raise AssertionError(f"no FineTuneJob in {[str(p) for p in EXAMPLES]}")


def test_load_job_names_the_bad_field() -> None:
    doc = _example()
    doc["spec"]["model"] = {"name": 5, "bogus": 1}
    with pytest.raises(ValidationError) as e:
        load_job(doc)
    assert "model" in str(e.value)


def test_cancel_suspends_and_marks() -> None:
    client, fake = _client(_example())
    client.cancel("x")
    (patch,) = fake.patches
    assert patch["spec"]["runPolicy"]["suspend"] is True
    assert CANCELLED_ANNOTATION in patch["metadata"]["annotations"]


def test_resume_unsuspends() -> None:
    client, fake = _client(_example())
    client.resume("x")
    assert fake.patches == [{"spec": {"runPolicy": {"suspend": False}}}]


def test_wait_raises_on_failed() -> None:
    doc = _example() | {"status": {"phase": "Failed", "message": "GpuOutOfMemory"}}
    client, _ = _client(doc)
    with pytest.raises(JobFailed, match="GpuOutOfMemory"):
        client.wait("x", timeout=1, poll=0)


def test_wait_returns_on_succeeded() -> None:
    doc = _example() | {"status": {"phase": "Succeeded"}}
    client, _ = _client(doc)
    assert client.wait("x", timeout=1, poll=0).status.phase == "Succeeded"  # type: ignore[union-attr]


def test_cli_submit_bad_file_exits_2_naming_field(tmp_path: Path) -> None:
    doc = _example()
    doc["spec"]["model"] = {"name": 5}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["submit", "-f", str(f)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "spec.model" in result.output


def test_cli_submit_flags_missing_names_them() -> None:
    result = CliRunner().invoke(app, ["submit", "--model", "m"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--data" in result.output and "--output" in result.output
