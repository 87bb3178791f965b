"""CUDA out of memory is not retried at the same settings: the trainer exits 17
(`GpuOutOfMemory`, in the podFailurePolicy's non-retryable 10-19 range) and the message names
the fields to change, keeping the global batch. CI has no GPU, so the pipeline raises torch's
own `torch.cuda.OutOfMemoryError` here, as it does on a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_api.v1alpha1 import GpuOutOfMemory
from kubetune_trainer import oom, pipeline
from kubetune_trainer.__main__ import main
from kubetune_trainer.testing import harness

SPEC = {
    "model": {"hubId": "org/model"},
    "dataset": {"inline": [{"text": "hello"}], "maxSeqLength": 2048},
    "method": {"type": "lora"},
    "hyperparameters": {"batchSize": 8, "gradientAccumulationSteps": 2, "maxSteps": 5},
    "output": {"uri": "s3://bucket/out"},
}


def test_cuda_oom_fails_at_once_naming_the_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")

    def out_of_memory(cfg: object) -> dict[str, object]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "run", out_of_memory)
    term = tmp_path / "term"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(term))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(harness.trainer_config(SPEC, name="oom", work_dir=tmp_path / "w")))

    assert main(["--config", str(cfg)]) == 17
    t = json.loads(term.read_text())
    assert (t["reason"], t["retryable"]) == ("GpuOutOfMemory", False)
    msg = t["message"]
    assert "hyperparameters.batchSize 8" in msg and "dataset.maxSeqLength 2048" in msg
    # Half the micro-batch, double the accumulation: the same 16 rows per optimizer step.
    assert "batchSize 4 and hyperparameters.gradientAccumulationSteps 4" in msg
    assert "method.type qlora" in msg


def test_other_errors_stay_retryable() -> None:
    assert oom.is_gpu_oom(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"))
    assert not oom.is_gpu_oom(RuntimeError("device-side assert triggered"))
    assert GpuOutOfMemory.exit_code in range(10, 20)


def test_the_operator_reads_exit_17_as_gpu_out_of_memory_and_fails_the_job_at_once() -> None:
    from kubetune_operator import render, status

    assert status.EXIT_REASONS[17] == "GpuOutOfMemory"
    assert 17 in render.NON_RETRYABLE_EXIT_CODES
