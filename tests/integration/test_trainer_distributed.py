"""Several processes, as `accelerate launch -m kubetune_trainer` runs it on a multi-GPU node:
here two CPU processes under torchrun (gloo). Rank 0 alone checkpoints, uploads, writes the
termination message and tells the story in the log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique


@pytest.mark.slow
def test_two_processes_train_one_set_of_artifacts(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(
        trainer_s3, "lora", hyperparameters={"maxSteps": 4, "evalSteps": 4, "saveSteps": 2}
    )
    cfg = harness.trainer_config(spec, name=unique("ddp"), work_dir=tmp_path / "w")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    term = tmp_path / "termination-log"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "kubetune_trainer",
            "--config",
            str(tmp_path / "config.json"),
        ],
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(term)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    t = json.loads(term.read_text())
    assert t["outcome"] == "Succeeded" and t["metrics"]["train_steps"] == 4
    # one story in the log, one upload of each checkpoint and artifact set
    assert out.count("before training:") == 1
    assert out.count("checkpoint 4 uploaded") == 1
    assert out.count("uploaded ") >= 1 and out.count("manifest sha256") == 1
    manifest = trainer_s3.json(t["artifacts"]["manifestUri"])
    assert {"adapter/adapter_model.safetensors", "merged/model.safetensors"} <= {
        f["path"] for f in manifest["files"]
    }


def _run(cmd: list[str], tmp: Path, spec: dict[str, Any], name: str) -> tuple[int, str, Path]:
    cfg = harness.trainer_config(spec, name=unique(name), work_dir=tmp / "w")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg))
    term = tmp / "termination-log"
    proc = subprocess.run(
        [*cmd, "--config", str(tmp / "config.json")],
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(term)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr, term


def _losses(out: str) -> dict[int, float]:
    """Training loss per step from the progress lines (`step 2/4 epoch 0.50 loss 7.1 ...`)."""
    return {
        int(step): float(loss)
        for step, loss in re.findall(r"\bstep (\d+)/\d+ epoch [0-9.]+ loss ([0-9.]+)", out)
    }


@pytest.mark.slow
def test_launcher_runs_two_processes_and_keeps_the_global_batch(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """What the pod runs for `gpus: 2` (`kubetune-train --config C --nproc-per-node 2`), on
    CPU: two processes share the asked global batch (8 = 4 per process x 2), and the losses
    per step match a single process training on the same global batch."""
    hp = {"maxSteps": 4, "evalSteps": 4, "saveSteps": 2, "loggingSteps": 1}
    spec = causal_spec(trainer_s3, "lora", hyperparameters=hp)
    launcher = harness.trainer_command()
    code, out, term = _run([*launcher, "--nproc-per-node", "2"], tmp_path / "ddp", spec, "ddp2")
    assert code == 0, out[-4000:]
    t = json.loads(term.read_text())
    assert t["outcome"] == "Succeeded" and t["metrics"]["train_steps"] == 4
    assert "global batch 8 = 4 per device x 2 processes x 1 accumulation" in out
    assert out.count("manifest sha256") == 1
    manifest = trainer_s3.json(t["artifacts"]["manifestUri"])
    dist = manifest["speed"]["distribution"]
    assert dist["strategy"] == "ddp" and dist["world_size"] == 2
    assert dist["batch"]["globalBatchSize"] == 8 and dist["batch"]["kept"]

    code, single_out, _ = _run(launcher, tmp_path / "one", spec, "one")
    assert code == 0, single_out[-4000:]
    ddp, one = _losses(out), _losses(single_out)
    assert set(ddp) == set(one) == {1, 2, 3, 4}, (ddp, one)
    # The same rows make up each step's global batch, but summed in another order (and the
    # loss is averaged per rank before the mean): equal within a tolerance, not bit for bit.
    for step in ddp:
        assert abs(ddp[step] - one[step]) <= 0.05 * one[step], (ddp, one)


@pytest.mark.slow
def test_launcher_keeps_non_retryable_exit_codes(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """torchrun exits 1 whatever its processes exit with; the launcher gives the pod the
    trainer's own code, so a bad dataset stays non-retryable (exit 11, docs/design.md)."""
    spec = causal_spec(trainer_s3, "lora")
    spec["dataset"]["s3Uri"] = trainer_s3.uri("datasets/does-not-exist.jsonl")
    code, out, term = _run(
        [*harness.trainer_command(), "--nproc-per-node", "2"], tmp_path, spec, "bad"
    )
    assert code == 11, out[-3000:]
    assert json.loads(term.read_text())["reason"] == "DatasetError"
