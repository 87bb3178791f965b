"""Wrong S3 credentials are reported as AccessDenied naming the URI (issue 12, floor 6), not as a
dataset error, and fail at once (not retryable: the next pod has the same credentials)."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique


def test_wrong_secret_key_is_access_denied_naming_the_uri(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(trainer_s3, "lora")
    cfg = harness.trainer_config(spec, name=unique("denied"), work_dir=tmp_path / "w")
    for env in (
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        {"AWS_ACCESS_KEY_ID": "nobody"},
    ):
        res = harness.run(cfg, tmp_path / next(iter(env)), env, timeout=120)
        assert res.returncode == 15, res.output[-3000:]
        t = res.termination
        assert t is not None and t["reason"] == "StorageAccessDenied", t
        assert t["retryable"] is False
        msg = t["message"]
        assert msg.startswith("AccessDenied"), msg
        assert spec["dataset"]["s3Uri"] in msg, msg  # names the object it could not read
        assert "DatasetError" not in msg and "not-the-secret" not in msg
        assert res.seconds < 60, res.seconds
