"""The model cache's entries: filled once, reused after sha256 verification, refilled when a
file no longer matches its record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer import modelcache


def filler(calls: list[Path]) -> Any:
    def download(dest: Path) -> list[dict[str, Any]]:
        calls.append(dest)
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        (dest / "model.safetensors").write_bytes(b"w" * 100)
        return [
            {"rel": "config.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
            {"rel": "model.safetensors", "size": 100, "sha256": None},  # hashed at store
        ]

    return download


def test_second_fetch_is_a_verified_hit_and_a_new_revision_is_a_new_entry(tmp_path: Path) -> None:
    calls: list[Path] = []
    entry, hit = modelcache.fetch(tmp_path, "s3://b/m/", "rev1", filler(calls))
    assert not hit and (entry / "model.safetensors").read_bytes() == b"w" * 100
    again, hit = modelcache.fetch(tmp_path, "s3://b/m/", "rev1", filler(calls))
    assert (again, hit, len(calls)) == (entry, True, 1)
    other, hit = modelcache.fetch(tmp_path, "s3://b/m/", "rev2", filler(calls))
    assert other != entry and not hit and len(calls) == 2
    assert not list((tmp_path / "s3").glob("*.tmp-*"))  # nothing half-written left behind


def test_a_file_that_no_longer_matches_its_sha256_is_downloaded_again(tmp_path: Path) -> None:
    calls: list[Path] = []
    entry, _ = modelcache.fetch(tmp_path, "s3://b/m/", "rev1", filler(calls))
    (entry / "model.safetensors").write_bytes(b"x" * 100)  # same size, other bytes
    assert modelcache.problem(entry, "s3://b/m/", "rev1") == (
        "model.safetensors: sha256 differs from the record"
    )
    entry2, hit = modelcache.fetch(tmp_path, "s3://b/m/", "rev1", filler(calls))
    assert (entry2, hit, len(calls)) == (entry, False, 2)
    assert (entry / "model.safetensors").read_bytes() == b"w" * 100


def test_a_download_killed_midway_leaves_no_entry(tmp_path: Path) -> None:
    def dies(dest: Path) -> list[dict[str, Any]]:
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        modelcache.fetch(tmp_path, "s3://b/m/", "rev1", dies)
    assert [p.name for p in (tmp_path / "s3").iterdir() if not p.name.endswith(".lock")] == []
    _, hit = modelcache.fetch(tmp_path, "s3://b/m/", "rev1", filler([]))
    assert not hit
