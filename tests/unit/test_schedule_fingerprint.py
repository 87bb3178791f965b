"""The data fingerprint of the datasetChange trigger (kubetune_operator.fingerprint) over an
in-memory S3 client: one object by ETag, a prefix by keys+ETags, a key that is no object read
as a prefix (as the trainer reads shards), and errors that carry the S3 code and URI only."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_operator.fingerprint import (
    Unreadable,
    fingerprint,
    normalise_uri,
    uri_allowed,
    watch_prefixes,
)
from kubetune_operator.settings import OperatorSettings
from pydantic import ValidationError


class ClientError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(f"An error occurred ({code}) with key AKIASECRET signature abc")
        self.response = {"Error": {"Code": code}}


class FakeS3:
    def __init__(self, objects: dict[str, tuple[str, int]], deny: bool = False) -> None:
        self.objects = objects  # "bucket/key" -> (etag, size)
        self.deny = deny

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if self.deny:
            raise ClientError("403")
        if f"{Bucket}/{Key}" not in self.objects:
            raise ClientError("404")
        etag, size = self.objects[f"{Bucket}/{Key}"]
        return {"ETag": etag, "ContentLength": size}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        s3 = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str) -> Any:
                if s3.deny:
                    raise ClientError("AccessDenied")
                keys = sorted(k for k in s3.objects if k.startswith(f"{Bucket}/{Prefix}"))
                contents = [{"Key": k.split("/", 1)[1], "ETag": s3.objects[k][0],
                             "Size": s3.objects[k][1]} for k in keys]  # fmt: skip
                return [{"Contents": contents[:1]}, {"Contents": contents[1:]}]

        return Pages()


def test_one_object_by_its_etag() -> None:
    s3 = FakeS3({"data/train.jsonl": ('"e1"', 10)})
    first = fingerprint(s3, ["s3://data/train.jsonl"])
    assert first.startswith("sha256:") and first == fingerprint(s3, ["s3://data/train.jsonl"])
    s3.objects["data/train.jsonl"] = ('"e2"', 10)
    assert fingerprint(s3, ["s3://data/train.jsonl"]) != first


def test_a_prefix_by_its_keys_and_etags() -> None:
    s3 = FakeS3({"data/p/a.jsonl": ('"a"', 1), "data/p/b.jsonl": ('"b"', 1),
                 "data/other/c.jsonl": ('"c"', 1)})  # fmt: skip
    first = fingerprint(s3, ["s3://data/p/"])
    s3.objects["data/other/c.jsonl"] = ('"c2"', 1)  # outside the prefix: no change
    assert fingerprint(s3, ["s3://data/p/"]) == first
    s3.objects["data/p/c.jsonl"] = ('"new"', 1)  # a new shard
    second = fingerprint(s3, ["s3://data/p/"])
    assert second != first
    del s3.objects["data/p/c.jsonl"]
    assert fingerprint(s3, ["s3://data/p/"]) == first
    # a key that is no object is read as a prefix of shards
    assert fingerprint(s3, ["s3://data/p"]) != first  # the URI is part of it
    assert fingerprint(s3, ["s3://data/p"]) == fingerprint(s3, ["s3://data/p"])


def test_errors_name_the_code_and_uri_and_nothing_else() -> None:
    with pytest.raises(Unreadable) as e:
        fingerprint(FakeS3({}, deny=True), ["s3://data/train.jsonl"])
    assert str(e.value) == "403 reading s3://data/train.jsonl"
    with pytest.raises(Unreadable) as e:
        fingerprint(FakeS3({}, deny=True), ["s3://data/p/"])
    assert str(e.value) == "AccessDenied reading s3://data/p/"
    assert "AKIA" not in str(e.value) and "signature" not in str(e.value)
    with pytest.raises(Unreadable, match="nothing under s3://data/empty/"):
        fingerprint(FakeS3({}), ["s3://data/empty/"])


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("s3://data/team-a/train/", True),
        ("s3://data/team-a/train.jsonl", True),
        ("s3://data/team-a", True),  # the prefix itself, read as a folder
        ("s3://data/team-a/", True),
        ("s3://data/team-ab/x.jsonl", False),  # a folder boundary, not a string prefix
        ("s3://data-b/team-a/x", False),  # a bucket boundary
        ("s3://data/team-a/../team-b/x", False),  # no dot segments
        ("s3://data/team-a/./x", False),
        ("s3://data/team-a/..", False),
        ("s3://data", False),  # the whole bucket is wider than the prefix
        ("https://data/team-a/x", False),
    ],
)
def test_a_watched_uri_must_be_under_an_allowed_prefix(uri: str, allowed: bool) -> None:
    assert uri_allowed(uri, ["s3://data/team-a/"]) is allowed
    assert uri_allowed(uri, ["s3://data/team-a"]) is allowed  # trailing slash or not


def test_a_bucket_prefix_allows_the_bucket_only() -> None:
    assert uri_allowed("s3://data/x/y", ["s3://data"])
    assert uri_allowed("s3://data", ["s3://data/"])
    assert not uri_allowed("s3://data-b/x", ["s3://data"])
    assert not uri_allowed("s3://data/x", [])
    assert normalise_uri("s3://data/a//b/") == "s3://data/a//b"


def test_a_namespace_gets_its_own_entry_else_the_wildcard_with_its_name() -> None:
    allowed = {"*": ["s3://data/{namespace}/"], "team-b": ["s3://b/"], "locked": []}
    assert watch_prefixes(allowed, "team-a") == ["s3://data/team-a/"]
    assert watch_prefixes(allowed, "team-b") == ["s3://b/"]  # not the wildcard's too
    assert watch_prefixes(allowed, "locked") == []
    assert watch_prefixes({}, "team-a") == []  # the default: nothing


def test_watch_prefixes_come_from_json_and_bad_ones_stop_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBETUNE_SCHEDULE_WATCH_PREFIXES", '{"*": ["s3://data/{namespace}/"]}')
    assert OperatorSettings().schedule_watch_prefixes == {"*": ["s3://data/{namespace}/"]}
    monkeypatch.setenv("KUBETUNE_SCHEDULE_WATCH_PREFIXES", '{"*": ["s3://data/../"]}')
    with pytest.raises(ValidationError, match=r"schedules\.watchPrefixes"):
        OperatorSettings()
