"""The kubetune CLI as a subprocess against the real API server: submit, list, suspend,
resume, cancel (suspend + kubetune.io/cancelled-at), and the exit codes for missing and
invalid objects. (No operator here: the phases are the operator's tests' business.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.wait_crd_established("finetunejobs.kubetune.io")


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args], text=True, capture_output=True, timeout=60
    )


def test_cli_lifecycle_on_the_real_api_server(cluster: Any, crd: None, namespace: str) -> None:
    example = REPO / "examples" / "chat-messages-sft.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]

    r = kubetune("submit", "-f", str(example), "-n", namespace)
    assert r.returncode == 0, r.stderr
    assert f"finetunejob.kubetune.io/{name} created" in r.stdout

    r = kubetune("list", "-n", namespace)
    assert r.returncode == 0 and name in r.stdout

    def suspend_and_annotations() -> tuple[Any, dict[str, str]]:
        out = cluster.kubectl("get", "finetunejob", name, "-o", "json", namespace=namespace)
        obj = json.loads(out.stdout)
        return obj["spec"].get("runPolicy", {}).get("suspend"), obj["metadata"].get(
            "annotations", {}
        )

    assert kubetune("suspend", name, "-n", namespace).returncode == 0
    assert suspend_and_annotations()[0] is True
    assert kubetune("resume", name, "-n", namespace).returncode == 0
    assert suspend_and_annotations()[0] is False
    assert kubetune("cancel", name, "-n", namespace).returncode == 0
    suspended, annotations = suspend_and_annotations()
    assert suspended is True and "kubetune.io/cancelled-at" in annotations

    r = kubetune("get", "does-not-exist", "-n", namespace)
    assert r.returncode == 4 and "not found" in r.stderr


def test_cli_refuses_a_bad_spec_before_the_api_server(
    cluster: Any, crd: None, namespace: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load((REPO / "examples" / "chat-messages-sft.yaml").read_text())
    doc["spec"]["model"] = {"name": 42}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = kubetune("submit", "-f", str(bad), "-n", namespace)
    assert r.returncode == 2
    assert "spec.model" in r.stderr
    out = cluster.kubectl("get", "finetunejobs", "-o", "name", namespace=namespace)
    assert out.stdout.strip() == ""
