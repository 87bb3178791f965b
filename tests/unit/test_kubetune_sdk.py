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


# -- flags for the common case -------------------------------------------------------------


def test_submit_flags_build_a_valid_spec_for_each_kind_of_source() -> None:
    from kubetune.cli import spec_from_flags

    job = load_job(
        spec_from_flags(
            name="j",
            model="s3://bkt/models/tiny/",
            data="s3://bkt/d/train.jsonl",
            output="s3://bkt/out",
            method="qlora",
            epochs=2,
            batch_size=4,
        )
    )
    assert job.spec.model.s3_uri == "s3://bkt/models/tiny/"
    assert job.spec.dataset.s3_uri == "s3://bkt/d/train.jsonl"
    assert job.spec.method.type == "qlora" and job.spec.hyperparameters.batch_size == 4
    hub = load_job(
        spec_from_flags(
            name="j", model="org/model", data="pvc://claim/data/train.jsonl", output="s3://bkt/out"
        )
    )
    assert hub.spec.model.hub_id == "org/model"
    assert hub.spec.dataset.pvc is not None and hub.spec.dataset.pvc.claim_name == "claim"
    assert hub.spec.dataset.pvc.path == "/data/train.jsonl"


def test_submit_flags_bad_method_names_the_field() -> None:
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "--name",
            "j",
            "--model",
            "org/m",
            "--data",
            "s3://bkt/d.jsonl",
            "--output",
            "s3://bkt/o",
            "--method",
            "lorax",
        ],
    )
    assert result.exit_code == EXIT_BAD_INPUT
    assert "spec.method.type" in result.output


# -- watch's bar reads status only ------------------------------------------------------------


def test_progress_fields_show_step_loss_throughput_and_eta() -> None:
    from kubetune.cli import progress_fields

    doc = _example() | {
        "status": {
            "phase": "Running",
            "progress": {
                "step": 12,
                "totalSteps": 30,
                "loss": 2.5,
                "tokensPerSecond": 1234.5,
                "etaSeconds": 75,
                "stage": "train",
            },
        }
    }
    f = progress_fields(load_job(doc))
    assert (f["phase"], f["completed"], f["total"]) == ("Running", 12, 30)
    assert "loss 2.5000" in f["info"] and "1,234 tok/s" in f["info"] and "eta 1:15" in f["info"]
    pending = progress_fields(load_job(_example()))
    assert pending["phase"] == "Pending" and pending["total"] is None


# -- artifacts: verification against the manifest --------------------------------------------


def test_verify_dir_names_the_corrupted_and_the_missing_file(tmp_path: Path) -> None:
    import hashlib

    from kubetune.client import verify_dir

    (tmp_path / "adapter").mkdir()
    good, bad = tmp_path / "adapter" / "a.bin", tmp_path / "adapter" / "b.bin"
    good.write_bytes(b"weights")
    bad.write_bytes(b"weightz")
    manifest = {
        "files": [
            {"path": "adapter/a.bin", "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()},
            {"path": "adapter/b.bin", "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()},
            {"path": "metrics.json", "size": 2, "sha256": "00"},
        ]
    }
    problems = verify_dir(tmp_path, manifest)
    assert len(problems) == 2
    assert problems[0].startswith("adapter/b.bin: sha256")
    assert problems[1] == "metrics.json: missing"
    del manifest["files"][1:]
    assert verify_dir(tmp_path, manifest) == []


def test_wait_for_other_kstatus_condition_ignores_a_stale_generation() -> None:
    cond = {
        "type": "Suspended",
        "status": "True",
        "reason": "Suspended",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    doc = _example()
    doc["metadata"] = doc["metadata"] | {"generation": 2}
    doc["status"] = {"phase": "Running", "observedGeneration": 1, "conditions": [cond]}
    client, fake = _client(doc)
    with pytest.raises(TimeoutError):
        client.wait("x", timeout=0, poll=0, condition="Suspended")
    fake.obj["status"]["observedGeneration"] = 2
    assert client.wait("x", timeout=1, poll=0, condition="Suspended")


def test_rank0_pod_is_the_newest_index_0_pod_of_the_current_run() -> None:
    """A run of several pods (an Indexed Job): logs follow completion index 0, the newest
    attempt of it, never another rank's pod."""
    from types import SimpleNamespace

    doc = _example() | {"status": {"phase": "Running", "jobName": "j-run-2"}}
    client, _ = _client(doc)
    index = "batch.kubernetes.io/job-completion-index"

    def pod(name: str, idx: str, created: str) -> Any:
        meta = SimpleNamespace(name=name, annotations={index: idx}, creation_timestamp=created)
        return SimpleNamespace(metadata=meta)

    pods = [
        pod("j-run-2-0-old", "0", "2026-01-01T00:00:00Z"),
        pod("j-run-2-1-new", "1", "2026-01-01T00:09:00Z"),
        pod("j-run-2-0-new", "0", "2026-01-01T00:05:00Z"),
    ]
    seen: list[str] = []

    def list_pods(ns: str, label_selector: str) -> Any:
        seen.append(label_selector)
        return SimpleNamespace(items=pods)

    client.core = SimpleNamespace(list_namespaced_pod=list_pods)  # type: ignore[assignment]
    assert client.rank0_pod("x") == "j-run-2-0-new"
    assert seen == ["job-name=j-run-2"]
