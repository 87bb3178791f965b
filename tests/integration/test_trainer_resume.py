"""Kill -9 the trainer once a checkpoint is complete in S3, start it again with the same
config (as the Job's next pod would): it resumes at that checkpoint's step, not at 0."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from kubetune_trainer.checkpoints import steps_in_listing
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique

MAX_STEPS = 240
SAVE_STEPS = 20


def _complete_steps(ts: TrainerS3, prefix: str) -> set[int]:
    key_prefix = prefix.split("://", 1)[1].split("/", 1)[1]
    keys = [o["Key"][len(key_prefix) :] for o in ts.s3.list_objects(prefix)]
    return steps_in_listing(keys)[1]


@pytest.mark.slow
def test_sigkill_then_resume_from_latest_complete_checkpoint(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={"validation": None},
        hyperparameters={
            "maxSteps": MAX_STEPS,
            "batchSize": 16,
            "loggingSteps": 10,
            "evalStrategy": "no",
            "evalSteps": None,
            "saveSteps": SAVE_STEPS,
            "saveTotalLimit": 2,
        },
    )
    cfg = harness.trainer_config(spec, name=unique("resume"), work_dir=tmp_path / "w")
    ckpt_prefix = cfg["runPrefix"] + "checkpoints/"

    # first pod: SIGKILL as soon as one checkpoint is complete in S3
    t0 = time.monotonic()
    proc, term, log = harness.start(cfg, tmp_path / "run1")
    deadline = time.monotonic() + 300
    while not _complete_steps(trainer_s3, ckpt_prefix):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    first = harness.finish(proc, term, log, t0, timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert first.termination is None  # killed: no chance to write one
    complete = _complete_steps(trainer_s3, ckpt_prefix)
    resume_at = max(complete)
    assert 0 < resume_at < MAX_STEPS, complete
    last_logged = max(int(m) for m in re.findall(rf"step (\d+)/{MAX_STEPS}", first.output))
    print(
        f"\n[resume] killed after step {last_logged}; complete checkpoints in S3: {sorted(complete)}"
    )

    # second pod: same config, fresh work dir (a new pod has an empty emptyDir)
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["workDir"] = str(tmp_path / "w2")
    second = harness.run(cfg2, tmp_path / "run2")
    assert second.returncode == 0, second.output[-4000:]
    assert second.lines(f"checkpoint-{resume_at} (step {resume_at})"), second.output[-3000:]
    assert second.lines(f"training: {MAX_STEPS} steps planned, starting at step {resume_at}")
    steps = [int(m) for m in re.findall(rf"step (\d+)/{MAX_STEPS}", second.output)]
    assert min(steps) > resume_at, "the second run must not redo steps before the checkpoint"
    metrics = second.termination["metrics"]  # type: ignore[index]
    assert metrics["resumed_from_step"] == resume_at
    assert metrics["train_steps"] == MAX_STEPS
    # the final trainer_state in S3 continues the first run's history
    state = trainer_s3.json(f"{ckpt_prefix}checkpoint-{MAX_STEPS}/trainer_state.json")
    assert state["global_step"] == MAX_STEPS
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged[0] < resume_at < logged[-1]  # history from before the kill is kept
    # saveTotalLimit holds in S3 too
    assert len(_complete_steps(trainer_s3, ckpt_prefix)) <= 2
    print(f"[resume] second run: steps {min(steps)}..{max(steps)}, resumed_from_step {resume_at}")
