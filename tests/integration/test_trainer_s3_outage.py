"""S3 outages are waited out inside the trainer (issue 12, floor 5).

A TCP proxy (s3proxy.py) stands between the trainer and the cluster's real MinIO; the test
switches it off and on. A 25 s outage costs no retry (one attempt, exit 0); an outage longer
than s3RetrySeconds fails the attempt as StorageUnavailable (retryable, exit 20); a 4-minute
outage during the upload ends in success once S3 is back, and at no moment is there a manifest
that covers a missing or partial file."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.testing import harness
from s3proxy import S3Proxy
from trainer_fixtures import TrainerS3, causal_spec, unique


@pytest.fixture
def proxy(cluster: Any) -> Any:
    p = S3Proxy(cluster.s3_endpoint)
    p.up()
    yield p
    p.down()


def small_spec(ts: TrainerS3) -> dict[str, Any]:
    return causal_spec(
        ts,
        "lora",
        dataset={"validation": None},
        hyperparameters={"evalStrategy": "no", "evalSteps": None, "maxSteps": 6, "saveSteps": 6},
        output={"checkpoints": True},
    )


def manifest_covers_only_complete_files(ts: TrainerS3, prefix: str) -> bool | None:
    """None when there is no manifest; else whether every file it lists is in S3 with that
    size and sha256 (read from MinIO directly, not through the proxy)."""
    head = ts.s3.head(prefix + "manifest.json")
    if head is None:
        return None
    doc = json.loads(ts.s3.get_bytes(prefix + "manifest.json"))
    for f in doc["files"]:
        data = ts.s3.get_bytes(prefix + f["path"])
        if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            return False
    return True


def test_short_outage_costs_no_retry_and_a_long_one_is_storage_unavailable(
    trainer_s3: TrainerS3,
    proxy: S3Proxy,
    tmp_path: Path,
) -> None:
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url}

    # S3 is down when the pod starts and comes back 25 s later: the same attempt goes on
    proxy.down()
    cfg = harness.trainer_config(
        small_spec(trainer_s3), name=unique("blip"), work_dir=tmp_path / "w"
    )
    t0 = time.monotonic()
    proc, term, log = harness.start(cfg, tmp_path / "blip", env)
    time.sleep(25)
    assert proc.poll() is None, log.read_text()[-3000:]
    proxy.up()
    res = harness.finish(proc, term, log, t0, timeout=600)
    assert res.returncode == 0, res.output[-4000:]
    assert res.lines("S3 unreachable"), res.output[-3000:]
    assert manifest_covers_only_complete_files(trainer_s3, cfg["runPrefix"]) is True
    print(f"\n[s3-outage] 25 s outage at start: succeeded in one attempt in {res.seconds:.0f}s")

    # longer than s3RetrySeconds: the attempt fails as StorageUnavailable, retryable
    proxy.down()
    cfg2 = harness.trainer_config(
        small_spec(trainer_s3), name=unique("down"), work_dir=tmp_path / "w2", s3_retry_seconds=5
    )
    gone = harness.run(cfg2, tmp_path / "down", env, timeout=300)
    assert gone.returncode == 20, gone.output[-4000:]
    assert gone.termination is not None
    assert gone.termination["reason"] == "StorageUnavailable"
    assert gone.termination["retryable"] is True
    assert "s3RetrySeconds 5" in gone.termination["message"]
    assert gone.seconds < 120, gone.seconds
    print(f"[s3-outage] outage > s3RetrySeconds 5: StorageUnavailable after {gone.seconds:.0f}s")


@pytest.mark.slow
def test_four_minute_outage_during_upload_ends_succeeded(
    trainer_s3: TrainerS3,
    proxy: S3Proxy,
    tmp_path: Path,
) -> None:
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url}
    cfg = harness.trainer_config(
        small_spec(trainer_s3), name=unique("outage"), work_dir=tmp_path / "w"
    )
    prefix = cfg["runPrefix"]
    t0 = time.monotonic()
    proc, term, log = harness.start(cfg, tmp_path / "run", env)
    # the outage begins once training is over and the final checkpoint is in S3 (stage save:
    # everything from here to the manifest is the upload)
    harness.wait_for_log(proc, log, "stage save", 400)  # training is over
    proxy.down()
    down_at = time.monotonic()
    while time.monotonic() - down_at < 240:
        assert proc.poll() is None, (
            "the trainer gave up during the outage:\n" + (log.read_text()[-3000:])
        )
        # no manifest may cover a missing or partial file, at any moment
        assert manifest_covers_only_complete_files(trainer_s3, prefix) is not False
        time.sleep(5)
    proxy.up()
    res = harness.finish(proc, term, log, t0, timeout=600)
    assert res.returncode == 0, res.output[-4000:]
    assert res.lines("S3 unreachable"), res.output[-3000:]
    assert res.termination is not None and res.termination["outcome"] == "Succeeded"
    assert manifest_covers_only_complete_files(trainer_s3, prefix) is True
    assert res.termination["artifacts"]["manifestUri"] == prefix + "manifest.json"
    print(f"\n[s3-outage] 240 s outage during upload: Succeeded after {res.seconds:.0f}s")


def test_upload_that_outlasts_the_window_is_finished_by_the_next_attempt_without_training(
    trainer_s3: TrainerS3,
    proxy: S3Proxy,
    tmp_path: Path,
) -> None:
    """A finished training never fails for lack of S3: the attempt whose upload outlasted
    s3RetrySeconds ends StorageUnavailable (retryable), and the next pod (same config, same
    uid) loads the COMPLETE final checkpoint, skips training and uploads."""
    env = {"AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url}
    cfg = harness.trainer_config(
        small_spec(trainer_s3), name=unique("reupload"), work_dir=tmp_path / "w", s3_retry_seconds=5
    )
    prefix = cfg["runPrefix"]
    t0 = time.monotonic()
    proc, term, log = harness.start(cfg, tmp_path / "a1", env)
    harness.wait_for_log(proc, log, "stage save", 400)  # training is over
    proxy.down()
    first = harness.finish(proc, term, log, t0, timeout=300)
    assert first.returncode == 20, first.output[-3000:]
    assert first.termination is not None and first.termination["retryable"] is True
    assert manifest_covers_only_complete_files(trainer_s3, prefix) is None  # no manifest

    proxy.up()
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["workDir"] = str(tmp_path / "w2")  # a new pod: an empty emptyDir
    second = harness.run(cfg2, tmp_path / "a2", env)
    assert second.returncode == 0, second.output[-4000:]
    assert second.lines("without training"), second.output[-3000:]
    assert not second.lines("step 2/6"), "the second attempt must not train"
    assert second.termination["metrics"]["resumed_from_step"] == 6  # type: ignore[index]
    assert manifest_covers_only_complete_files(trainer_s3, prefix) is True
