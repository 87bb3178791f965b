"""Storage identity follows the FineTuneJob's uid, not its name (issue 12, floor 1).

Delete and re-create with the same name is a new object with a new uid: it trains from step 0
under its own prefix, and the old object's checkpoints, artifacts and manifest stay byte for
byte. An object whose prefix holds another uid's checkpoint (a uid8 collision) refuses to resume
from, overwrite or delete it (StorageConflict, exit 16)."""

from __future__ import annotations

import uuid
from pathlib import Path

from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique


def snapshot(ts: TrainerS3, uri: str) -> dict[str, bytes]:
    """Every object under `uri` (key -> bytes)."""
    bucket = ts.bucket
    return {
        o["Key"]: ts.s3.get_bytes(f"s3://{bucket}/{o['Key']}")
        for o in ts.s3.list_objects(uri.rstrip("/") + "/")
    }


def spec_for(ts: TrainerS3, lr: float) -> dict:
    return causal_spec(
        ts,
        "lora",
        dataset={"validation": None},
        hyperparameters={
            "learningRate": lr,
            "evalStrategy": "no",
            "evalSteps": None,
            "maxSteps": 6,
            "saveSteps": 6,
        },
        output={"checkpoints": True},
    )


def test_recreated_object_trains_from_zero_and_keeps_the_old_artifacts(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    name = unique("recreate")
    job_root = trainer_s3.uri("output", "default", name)
    uid_old, uid_new = str(uuid.uuid4()), str(uuid.uuid4())

    # the first object: trains to its maxSteps, uploads, keeps its final checkpoint
    cfg_old = harness.trainer_config(
        spec_for(trainer_s3, 0.003), name=name, uid=uid_old, work_dir=tmp_path / "w1"
    )
    assert f"/{name}/{uid_old[:8]}/run-1/" in cfg_old["runPrefix"]
    old = harness.run(cfg_old, tmp_path / "old")
    assert old.returncode == 0, old.output[-4000:]
    before = snapshot(trainer_s3, job_root)
    old_prefix_key = cfg_old["runPrefix"].split("://", 1)[1].split("/", 1)[1]
    assert any(k.endswith("/COMPLETE") for k in before), sorted(before)
    assert old_prefix_key + "manifest.json" in before
    old_manifest = trainer_s3.json(cfg_old["runPrefix"] + "manifest.json")
    assert old_manifest["job"]["uid"] == uid_old

    # deleted and re-created with the same name: a new uid, another learning rate, run 1 again
    cfg_new = harness.trainer_config(
        spec_for(trainer_s3, 0.01), name=name, uid=uid_new, work_dir=tmp_path / "w2"
    )
    new = harness.run(cfg_new, tmp_path / "new")
    assert new.returncode == 0, new.output[-4000:]
    assert not new.lines("without training"), new.output[-3000:]
    assert not new.lines("resuming from"), new.output[-3000:]
    assert new.lines("starting at step 0"), new.output[-3000:]
    metrics = new.termination["metrics"]  # type: ignore[index]
    assert "resumed_from_step" not in metrics and metrics["train_steps"] == 6

    # the old object's files are all still there, byte for byte
    after = snapshot(trainer_s3, job_root)
    for key, data in before.items():
        assert after.get(key) == data, f"{key} changed or vanished"
    new_manifest = trainer_s3.json(cfg_new["runPrefix"] + "manifest.json")
    assert new_manifest["job"]["uid"] == uid_new
    assert new_manifest["config"]["spec"]["hyperparameters"]["learningRate"] == 0.01
    old_adapter = before[old_prefix_key + "adapter/adapter_model.safetensors"]
    new_adapter = trainer_s3.s3.get_bytes(
        cfg_new["runPrefix"] + "adapter/adapter_model.safetensors"
    )
    assert new_adapter != old_adapter, "the new object must have trained, not copied the old one"

    # a uid that shares the old one's first 8 characters lands on the old prefix: it must
    # refuse the other uid's checkpoint and leave everything as it was
    uid_clash = uid_old[:8] + str(uuid.uuid4())[8:]
    cfg_clash = harness.trainer_config(
        spec_for(trainer_s3, 0.01), name=name, uid=uid_clash, work_dir=tmp_path / "w3"
    )
    assert cfg_clash["runPrefix"] == cfg_old["runPrefix"]
    clash = harness.run(cfg_clash, tmp_path / "clash")
    assert clash.returncode == 16, clash.output[-4000:]
    assert clash.termination is not None
    assert clash.termination["reason"] == "StorageConflict"
    assert uid_old in clash.termination["message"], clash.termination["message"]
    assert clash.termination["retryable"] is False
    final = snapshot(trainer_s3, job_root)
    for key, data in before.items():
        assert final.get(key) == data, f"{key} changed or vanished after the clash"
