"""Several processes, as `accelerate launch -m kubetune_trainer` runs it on a multi-GPU node:
here two CPU processes under torchrun (gloo). Rank 0 alone checkpoints, uploads, writes the
termination message and tells the story in the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, trainer_s3, unique  # noqa: F401


@pytest.mark.slow
def test_two_processes_train_one_set_of_artifacts(
    trainer_s3: TrainerS3,  # noqa: F811
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
