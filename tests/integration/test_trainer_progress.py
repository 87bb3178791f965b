"""The trainer patches status.progress of its FineTuneJob through the real API server (CRD
from crds/), rate-limited; an unreachable or missing object never stops training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainer_fixtures import TrainerS3, causal_spec, train, unique

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.wait_crd_established("finetunejobs.kubetune.io")


def test_trainer_patches_progress(
    cluster: Any,
    crd: None,
    namespace: str,
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    name = unique("progress")
    spec = causal_spec(
        trainer_s3,
        hyperparameters={"maxSteps": 20, "loggingSteps": 2, "evalSteps": 10, "saveSteps": 10},
    )
    # suspended, so an operator watching the cluster would not start its own run of it
    obj = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**spec, "runPolicy": {"suspend": True}},
    }
    api = cluster.custom()
    api.create_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", obj)
    _, run = train(
        spec, name, tmp_path, namespace=namespace, report_progress=True,
        progress_interval_seconds=0.5,
    )  # fmt: skip
    assert "could not report progress" not in run.output
    got = api.get_namespaced_custom_object(
        "kubetune.io", "v1alpha1", namespace, "finetunejobs", name
    )
    progress = got["status"]["progress"]
    print(f"\n[progress] {progress}")
    assert progress["run"] == 1
    assert progress["stage"] == "done"
    assert progress["step"] == progress["totalSteps"] == 20
    assert progress["epoch"] > 0 and progress["loss"] > 0 and progress["learningRate"] > 0
    assert progress["evalLoss"] > 0 and progress["tokensPerSecond"] > 0
    assert "etaSeconds" in progress and progress["updatedAt"].endswith("Z")
    # the trainer wrote only status.progress (spec untouched, its own field manager)
    assert got["spec"]["runPolicy"]["suspend"] is True
    managers = {m["manager"] for m in got["metadata"].get("managedFields", [])}
    assert "kubetune-trainer" in managers


def test_progress_failures_do_not_stop_training(
    cluster: Any,
    crd: None,
    namespace: str,
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(trainer_s3, hyperparameters={"maxSteps": 4})
    _, run = train(
        spec, unique("no-such-job"), tmp_path, namespace=namespace, report_progress=True,
        progress_interval_seconds=0,
    )  # fmt: skip
    assert run.lines("could not report progress") and run.lines("(HTTP 404)")
