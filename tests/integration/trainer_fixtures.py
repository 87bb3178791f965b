"""Shared fixtures and spec builders for the trainer's integration tests (test_trainer_*.py).

Tiny models and synthetic datasets are built locally (cached under ~/.cache/kubetune/models)
and uploaded to the cluster's real MinIO under a per-session prefix; the trainer runs as a
subprocess (`kubetune-train --config ...`) against it. The `trainer_s3` fixture is registered in
tests/integration/conftest.py; import the builders from here.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.s3 import S3, join
from kubetune_trainer.testing import fixtures, harness

LABELS = ["sports", "weather", "finance", "cooking"]


@dataclass
class TrainerS3:
    bucket: str
    base: str  # s3://bucket/trainer-tests/<session>
    s3: S3

    def uri(self, *parts: str) -> str:
        return join(self.base, *parts)

    def download(self, uri: str, dest: Path) -> Path:
        self.s3.download_prefix(uri, dest)
        return dest

    def json(self, uri: str) -> Any:
        return json.loads(self.s3.get_bytes(uri))

    def put(self, uri: str, data: bytes) -> None:
        self.s3.put_bytes(uri, data, content_type="application/octet-stream")


@pytest.fixture(scope="session")
def trainer_s3(cluster: Any) -> Iterator[TrainerS3]:
    """Tiny models and datasets in MinIO under a fresh prefix for this session, removed
    afterwards (KUBETUNE_KEEP_TEST_ARTIFACTS=1 keeps them for a look)."""
    prefix = f"trainer-tests/{uuid.uuid4().hex[:8]}"
    fixtures.upload(cluster.s3_bucket, prefix)
    ts = TrainerS3(bucket=cluster.s3_bucket, base=f"s3://{cluster.s3_bucket}/{prefix}", s3=S3())
    yield ts
    if os.environ.get("KUBETUNE_KEEP_TEST_ARTIFACTS") != "1":
        ts.s3.delete_prefix(ts.base)


# Six optimizer steps, an eval and a log every few: long enough to checkpoint twice, short enough
# for a CPU.
SHORT_RUN: dict[str, Any] = {
    "maxSteps": 6,
    "learningRate": 0.003,
    "lrScheduler": "constant",
    "loggingSteps": 2,
    "evalStrategy": "steps",
    "evalSteps": 6,
    "saveStrategy": "steps",
    "saveSteps": 3,
}


def _tiny_spec(
    ts: TrainerS3,
    model: str,
    dataset: str,
    data_format: str,
    max_seq_length: int,
    batch_size: int,
    method_type: str,
    **top: Any,
) -> dict[str, Any]:
    """A SHORT_RUN spec on one of the fixtures' tiny models and datasets (train + validation)."""
    return {
        **top,
        "model": {"s3Uri": ts.uri("models", model) + "/"},
        "dataset": {
            "s3Uri": ts.uri("datasets", dataset, "train.jsonl"),
            "format": data_format,
            "maxSeqLength": max_seq_length,
            "validation": {"s3Uri": ts.uri("datasets", dataset, "validation.jsonl")},
        },
        "method": {"type": method_type},
        "hyperparameters": {**SHORT_RUN, "batchSize": batch_size},
        "output": {"uri": ts.uri("output"), "mergedDtype": "float32"},
    }


def causal_spec(ts: TrainerS3, method_type: str = "lora", **overrides: Any) -> dict[str, Any]:
    """The counting task (prompt-completion) on the tiny Llama."""
    spec = _tiny_spec(
        ts, "tiny-llama", "counting", "prompt-completion", 64, 8, method_type, task="causal-lm"
    )
    return merge(spec, overrides)


def classification_spec(
    ts: TrainerS3, method_type: str = "full", **overrides: Any
) -> dict[str, Any]:
    """The topics task (keywords decide the class) on the tiny BERT."""
    spec = _tiny_spec(
        ts,
        "tiny-bert",
        "topics",
        "classification",
        32,
        16,
        method_type,
        task="sequence-classification",
        classification={"labelNames": LABELS},
    )
    return merge(spec, overrides)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into a copy of `base` (a None value deletes the key)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def train(
    spec: dict[str, Any],
    name: str,
    tmp: Path,
    returncode: int = 0,
    env: dict[str, str] | None = None,
    **config: Any,
) -> tuple[dict[str, Any], harness.TrainerRun]:
    """Run kubetune-train on `spec` as job `name` (work and run dirs under `tmp`; `config`: more
    harness.trainer_config arguments) and check it exited `returncode`: the config it ran, and
    the run."""
    cfg = harness.trainer_config(spec, name=name, work_dir=tmp / "w", **config)
    run = harness.run(cfg, tmp / "run", env=env)
    assert run.returncode == returncode, run.output[-4000:]
    return cfg, run
