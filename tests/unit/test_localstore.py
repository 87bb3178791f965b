"""The developers' local stand-in for S3 (`kubetune-train --output-dir`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_api.v1alpha1 import ArtifactsMissing
from kubetune_trainer.localstore import LocalS3


def test_round_trip_in_the_s3_layout(tmp_path: Path) -> None:
    store = LocalS3(tmp_path / "root")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    up = store.upload_dir(src, "s3://bucket/run-1/adapter")
    assert sorted(u.key for u in up) == ["a.txt", "sub/b.bin"]
    assert (tmp_path / "root" / "bucket" / "run-1" / "adapter" / "sub" / "b.bin").read_bytes() == (
        b"\x00\x01"
    )
    put = store.put_bytes("s3://bucket/run-1/manifest.json", b"{}")
    assert put.size == 2 and len(put.sha256) == 64
    keys = [o["Key"] for o in store.list_objects("s3://bucket/run-1/")]
    assert keys == ["run-1/adapter/a.txt", "run-1/adapter/sub/b.bin", "run-1/manifest.json"]
    assert store.head("s3://bucket/run-1/manifest.json") == {"ContentLength": 2}
    assert store.head("s3://bucket/nope") is None
    assert store.get_bytes("s3://bucket/run-1/adapter/a.txt") == b"alpha"
    got = store.download_prefix("s3://bucket/run-1/adapter", tmp_path / "dl")
    assert len(got) == 2 and (tmp_path / "dl" / "sub" / "b.bin").exists()
    assert store.delete_prefix("s3://bucket/run-1/adapter", keep=("sub/",)) == 1
    assert [o["Key"] for o in store.list_objects("s3://bucket/run-1/adapter/")] == [
        "run-1/adapter/sub/b.bin"
    ]
    store.client.delete_object(Bucket="bucket", Key="run-1/manifest.json")
    assert store.head("s3://bucket/run-1/manifest.json") is None


def test_verify_reports_missing_artifacts(tmp_path: Path) -> None:
    store = LocalS3(tmp_path)
    with pytest.raises(ArtifactsMissing):
        store.verify("s3://bucket/missing", 3, "0" * 64)
