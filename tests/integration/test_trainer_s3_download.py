"""The trainer's S3 downloads against the real MinIO, as local ranks of one pod do them: several
at once into the same path (torchrun ranks share the pod's work directory), and again when the
file is already there."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums
from kubetune_trainer.s3 import S3, ChecksumMismatch, split_s3_uri
from trainer_fixtures import TrainerS3, unique


def test_concurrent_downloads_of_one_object_to_one_path(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * 2**20 + 17)
    uri = trainer_s3.uri(unique("shared"), "train.jsonl")
    trainer_s3.put(uri, data)
    dest = tmp_path / "data" / "train.jsonl"
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            trainer_s3.s3.download_file(uri, dest)  # no size: every thread really downloads
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    for _ in range(3):
        dest.unlink(missing_ok=True)
        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["train.jsonl"]  # no partial files


def test_a_complete_file_is_not_downloaded_again(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    uri = trainer_s3.uri(unique("skip"), "train.jsonl")
    trainer_s3.put(uri, b"a" * 1000)
    dest = tmp_path / "train.jsonl"
    trainer_s3.s3.download_file(uri, dest, size=1000)
    assert dest.read_bytes() == b"a" * 1000
    # Same size on the server now: the local file counts as complete and stays.
    trainer_s3.put(uri, b"b" * 1000)
    trainer_s3.s3.download_file(uri, dest, size=1000)
    assert dest.read_bytes() == b"a" * 1000
    # A different size (or no size) downloads.
    head: Any = trainer_s3.s3.head(uri)
    trainer_s3.s3.download_file(uri, dest, size=int(head["ContentLength"]) + 1)
    assert dest.read_bytes() == b"b" * 1000


def test_a_corrupt_object_is_detected_on_download(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """An object whose bytes no longer match the sha256 it records (bit rot, a bad copy) fails
    the download with ChecksumMismatch, and leaves no file (complete or partial) behind."""
    data = os.urandom(2**20)
    uri = trainer_s3.uri(unique("corrupt"), "model.safetensors")
    bucket, key = split_s3_uri(uri)
    bad = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    trainer_s3.s3.client.put_object(
        Bucket=bucket, Key=key, Body=bad, Metadata={"sha256": hashlib.sha256(data).hexdigest()}
    )
    dest = tmp_path / "m" / "model.safetensors"
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        trainer_s3.s3.download_file(uri, dest)
    assert list(dest.parent.iterdir()) == []


def test_multipart_round_trip_hashes_while_streaming(
    trainer_s3: TrainerS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file of several parts: the digest upload_file reports is the file's sha256 (computed
    while the parts stream); S3 reports the full-object CRC64-NVME of the bytes; the download
    checks that CRC and returns the sha256 recorded with it (tags), or, where the tags are
    gone, computes the sha256 again."""
    monkeypatch.setenv("KUBETUNE_S3_PART_MIB", "5")
    s3 = S3()
    data = os.urandom(12 * 2**20 + 3)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = trainer_s3.uri(unique("multipart"), "big.bin")
    up = s3.upload_file(src, uri)
    assert up.sha256 == hashlib.sha256(data).hexdigest()
    head: Any = s3.head(uri)
    crc = checksums.crc64nvme(data)
    assert head["ChecksumCRC64NVME"] == base64.b64encode(crc.to_bytes(8, "big")).decode()
    assert head["ChecksumType"] == "FULL_OBJECT"
    expect = s3.expect(uri)
    assert (expect.sha256, expect.crc64nvme, expect.sha256_bound) == (up.sha256, crc, True)
    out = tmp_path / "down" / "big.bin"
    assert s3.download_file(uri, out) == up.sha256
    assert out.read_bytes() == data
    # without the tags (credentials that may not tag): the sha256 is computed again
    bucket, key = split_s3_uri(uri)
    s3.client.delete_object_tagging(Bucket=bucket, Key=key)
    expect = s3.expect(uri)
    assert (expect.sha256, expect.crc64nvme, expect.sha256_bound) == (None, crc, False)
    out.unlink()
    assert s3.download_file(uri, out) == up.sha256
    assert out.read_bytes() == data


def test_objects_with_sha256_part_checksums_still_download(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """Objects written with S3's SHA-256 part checksums (by earlier kubetune versions, or by
    another tool) are checked against their composite checksum."""
    data = os.urandom(11 * 2**20)
    uri = trainer_s3.uri(unique("sha-parts"), "old.bin")
    bucket, key = split_s3_uri(uri)
    raw = trainer_s3.s3.client
    upload_id = raw.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")[
        "UploadId"
    ]
    done = []
    for n, off in enumerate(range(0, len(data), 5 * 2**20), start=1):
        part = data[off : off + 5 * 2**20]
        digest = base64.b64encode(hashlib.sha256(part).digest()).decode()
        r = raw.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=n,
            Body=part,
            ChecksumSHA256=digest,
        )
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": digest})
    raw.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    expect = trainer_s3.s3.expect(uri)
    assert expect.crc64nvme is None and str(expect.composite).endswith("-3")
    out = tmp_path / "old.bin"
    assert trainer_s3.s3.download_file(uri, out) == hashlib.sha256(data).hexdigest()
    assert out.read_bytes() == data
