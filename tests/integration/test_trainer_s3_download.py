"""The trainer's S3 downloads against the real MinIO, as local ranks of one pod do them: several
at once into the same path (torchrun ranks share the pod's work directory), and again when the
file is already there."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from trainer_fixtures import TrainerS3, trainer_s3, unique  # noqa: F401


def test_concurrent_downloads_of_one_object_to_one_path(
    trainer_s3: TrainerS3,  # noqa: F811
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
    trainer_s3: TrainerS3,  # noqa: F811
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
