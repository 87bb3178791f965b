"""Experiment tracking: the reporters' environment, and one tracker run per kubetune run.

transformers' callbacks open a tracker run lazily, and its MLflow callback ends the run at
`on_train_end`, so the evaluation after training (the metrics users look for) opened a second,
unnamed MLflow run; a W&B run ended only at interpreter exit. `run_scope` opens the run before
training, so the callbacks log into it and leave it open, tags it with the job, and ends it after
the final evaluation and the upload with the outcome: one run per kubetune run, finished before
the pod ends, carrying the artifact URIs. Only the main process tracks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import ConfigError, Reporter, TrainerConfig, TrainerError

log = logging.getLogger(__name__)


def tracking_env(cfg: TrainerConfig, tensorboard_dir: Path) -> list[str]:
    """Set the reporters' environment; returns transformers' report_to list."""
    tr = cfg.spec.tracking
    report_to = [str(r) for r in tr.report_to]
    if Reporter.TENSORBOARD in tr.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir)
    if tr.mlflow is not None:
        os.environ["MLFLOW_TRACKING_URI"] = tr.mlflow.tracking_uri
        if tr.mlflow.experiment:
            os.environ["MLFLOW_EXPERIMENT_NAME"] = tr.mlflow.experiment
    if tr.wandb is not None:
        os.environ["WANDB_PROJECT"] = tr.wandb.project
        if tr.wandb.entity:
            os.environ["WANDB_ENTITY"] = tr.wandb.entity
        if tr.wandb.base_url:
            os.environ["WANDB_BASE_URL"] = tr.wandb.base_url
    return report_to


def run_name(cfg: TrainerConfig) -> str:
    """The tracker run's name: the spec's, else `<namespace>-<job>-run-<n>`."""
    return cfg.spec.tracking.run_name or f"{cfg.job.namespace}-{cfg.job.name}-run-{cfg.job.run}"


def job_tags(cfg: TrainerConfig) -> dict[str, str]:
    """Tags that find the run from the FineTuneJob and back."""
    return {
        "kubetune.namespace": cfg.job.namespace,
        "kubetune.job": cfg.job.name,
        "kubetune.run": str(cfg.job.run),
        "kubetune.task": str(cfg.spec.task),
        "kubetune.method": str(cfg.spec.method.type),
        "kubetune.model": cfg.spec.model.display(),
    }


REACH_TIMEOUT_SECONDS = 5.0


def check_reachable(field: str, url: str, timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """Fail in seconds, not minutes of client retries, when nothing listens at a tracking
    server's address: a non-retryable ConfigError naming the field (the address is wrong or
    unreachable from the cluster; retrying would not help). Only http(s) URLs are checked."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise ConfigError(f"{field}: invalid port in {parts.hostname!r}: {e}") from None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(
            f"{field}: tracking server {parts.hostname}:{port} is unreachable "
            f"({type(e).__name__}: {e}); fix the address or remove the tracking section"
        ) from None


@contextlib.contextmanager
def _starting(field: str, what: str) -> Iterator[None]:
    """A tracker that cannot start a run fails the job before training, naming the spec field;
    retryable, since a tracking server is often only briefly away."""
    try:
        yield
    except Exception as e:
        raise TrainerError(f"{field}: cannot start {what}: {type(e).__name__}: {e}") from e


class TrackedRun:
    """The open tracker runs of this process (MLflow, W&B), for what the pipeline adds later."""

    def __init__(self) -> None:
        self.mlflow: Any = None  # the mlflow module while its run is open
        self.wandb: Any = None  # the wandb Run

    def record_artifacts(self, uris: dict[str, str]) -> None:
        """The uploaded artifacts' URIs, as MLflow tags and W&B summary values."""
        values = {f"kubetune.{k}": v for k, v in uris.items() if v}
        if self.mlflow is not None:
            self.mlflow.set_tags(values)
        if self.wandb is not None:
            self.wandb.summary.update(values)


@contextlib.contextmanager
def run_scope(cfg: TrainerConfig, report_to: list[str]) -> Iterator[TrackedRun]:
    """Open the MLflow and W&B runs named in `report_to` for the block; end them with its
    outcome (FINISHED / FAILED, W&B exit code 0 / 1). TensorBoard needs no run."""
    tracked = TrackedRun()
    name, tags = run_name(cfg), job_tags(cfg)
    ok = False
    try:
        mlflow_spec, wandb_spec = cfg.spec.tracking.mlflow, cfg.spec.tracking.wandb
        if Reporter.MLFLOW in report_to and mlflow_spec is not None:
            check_reachable("tracking.mlflow.trackingUri", mlflow_spec.tracking_uri)
        if Reporter.WANDB in report_to and wandb_spec is not None and wandb_spec.base_url:
            check_reachable("tracking.wandb.baseUrl", wandb_spec.base_url)
        if Reporter.MLFLOW in report_to:
            with _starting("tracking.mlflow.trackingUri", "an MLflow run"):
                import mlflow

                experiment = cfg.spec.tracking.mlflow and cfg.spec.tracking.mlflow.experiment
                if experiment:
                    mlflow.set_experiment(experiment)
                run = mlflow.start_run(run_name=name, tags=tags)
            tracked.mlflow = mlflow
            log.info("MLflow run %s (%s) at %s", run.info.run_id, name, mlflow.get_tracking_uri())
        if Reporter.WANDB in report_to:
            with _starting("tracking.wandb", "a W&B run"):
                import wandb

                # W&B tags are short labels (64 characters at most); the job goes into the config.
                tracked.wandb = wandb.init(
                    name=name, tags=[f"job:{cfg.job.name}"[:64]], config={"kubetune": tags}
                )
            log.info("W&B run %s (%s)", tracked.wandb.id, name)
        yield tracked
        ok = True
    finally:
        if tracked.mlflow is not None:
            tracked.mlflow.end_run(status="FINISHED" if ok else "FAILED")
        if tracked.wandb is not None:
            tracked.wandb.finish(exit_code=0 if ok else 1)
