"""Experiment tracking as the seeds do it, against real components: the trainer reports to a
real MLflow tracking server started on loopback (`mlflow server`, SQLite backend), and to
Weights & Biases in offline mode (the wandb client writes its run files locally; no W&B server
runs here). The trainer image carries the clients (mlflow-skinny, wandb)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    exe = Path(sys.executable).with_name("mlflow")
    db, artifacts = f"sqlite:///{root}/mlflow.db", str(root / "artifacts")
    argv = [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", db, "--default-artifact-root", artifacts]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def test_trainer_logs_params_metrics_and_run_to_mlflow(
    mlflow_server: str,
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    name, experiment = unique("mlflow"), unique("kubetune-tests")
    spec = causal_spec(
        trainer_s3,
        hyperparameters={"maxSteps": 6, "loggingSteps": 2, "evalSteps": 6, "saveSteps": 6},
        tracking={
            "reportTo": ["mlflow"],
            "mlflow": {"trackingUri": mlflow_server, "experiment": experiment},
        },
    )
    cfg = harness.trainer_config(spec, name=name, namespace="team-a", work_dir=tmp_path / "w")
    run = harness.run(cfg, tmp_path / "run", env={"MLFLOW_TRACKING_TOKEN": "s3cr3t-token"})
    assert run.returncode == 0, run.output[-4000:]

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.info.run_name == f"team-a-{name}-run-1"
    lr = spec["hyperparameters"]["learningRate"]
    assert float(r.data.params["learning_rate"]) == pytest.approx(lr)
    assert r.data.tags["kubetune.job"] == name and r.data.tags["kubetune.namespace"] == "team-a"
    # the artifacts the run produced, found from the tracker
    assert r.data.tags["kubetune.adapterUri"] == run.termination["artifacts"]["adapterUri"]
    losses = client.get_metric_history(r.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 4, 6]  # logging_first_step, then every 2
    assert all(m.value > 0 for m in losses)
    # the evaluation after training lands in the same run (it used to open a second one)
    assert r.data.metrics["eval_loss"] == pytest.approx(run.termination["metrics"]["eval_loss"])
    # the token authenticates the client; it is no parameter, tag or metric of the run
    assert "s3cr3t-token" not in json.dumps([r.data.params, r.data.tags])
    assert "s3cr3t-token" not in run.output


def test_trainer_writes_a_wandb_run_offline(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    name = unique("wandb")
    spec = causal_spec(
        trainer_s3,
        hyperparameters={"maxSteps": 4, "loggingSteps": 2, "evalSteps": 4, "saveSteps": 4},
        tracking={
            "reportTo": ["wandb"],
            "wandb": {"project": "kubetune-tests", "apiKeySecretRef": {"name": "w", "key": "k"}},
        },
    )
    cfg = harness.trainer_config(spec, name=name, work_dir=tmp_path / "w")
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": "x" * 40}
    run = harness.run(cfg, tmp_path / "run", env=env)
    assert run.returncode == 0, run.output[-4000:]
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(wandb_dir.rglob("*"))[:20]
    # wandb 0.31 keeps an offline run in one binary transaction log (protobuf records) and has
    # no public reader for it; the keys of what was logged are plain bytes in it.
    (log_file,) = runs[0].glob("run-*.wandb")
    data = log_file.read_bytes()
    for key in (
        b"train/loss",
        b"eval/loss",
        b"kubetune.job",
        b"kubetune.adapterUri",
        name.encode(),
    ):
        assert key in data, key
    shutil.rmtree(wandb_dir, ignore_errors=True)
