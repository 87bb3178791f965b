"""Storage identity, S3 retries and refusals, without S3 (fakes at the client edge)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from kubetune_api.v1alpha1 import (
    StorageAccessDenied,
    StorageConflict,
    StorageUnavailable,
    run_prefix,
)
from kubetune_trainer import s3 as s3_mod
from kubetune_trainer.checkpoints import MARKER, CheckpointStore
from kubetune_trainer.s3 import S3, RetryingClient, call_with_retry

UID = "0b7c1c9e-1111-4222-8333-444455556666"
OTHER = "0b7c1c9e-9999-4222-8333-444455556666"  # same first 8 characters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(s3_mod.time, "monotonic", c.monotonic)
    return c


def refused() -> Exception:
    return EndpointConnectionError(endpoint_url="http://minio:9000/b/k")


def denied(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, "GetObject")


def test_run_prefix_holds_the_uid8() -> None:
    assert run_prefix("s3://b/out/", "ns", "job", UID, 2) == "s3://b/out/ns/job/0b7c1c9e/run-2/"
    with pytest.raises(ValueError, match="uid"):
        run_prefix("s3://b/out", "ns", "job", "", 1)


def test_connection_errors_are_waited_out_within_the_window(clock: Clock) -> None:
    calls = iter([refused(), refused(), refused(), "ok"])

    def fn() -> Any:
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    assert call_with_retry(fn, "s3://b/k", 600, clock.sleep) == "ok"
    assert clock.slept == [1.0, 2.0, 4.0]


def test_connection_errors_past_the_window_are_storage_unavailable(clock: Clock) -> None:
    def fn() -> Any:
        raise refused()

    with pytest.raises(StorageUnavailable) as e:
        call_with_retry(fn, "s3://b/k", 60, clock.sleep)
    assert e.value.retryable and e.value.exit_code == 20
    assert "s3RetrySeconds 60" in e.value.message and "s3://b/k" in e.value.message
    assert 60 <= sum(clock.slept) <= 75
    assert max(clock.slept) <= 15


@pytest.mark.parametrize(
    "code", ["AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"]
)
def test_refused_credentials_are_access_denied_at_once(clock: Clock, code: str) -> None:
    def fn() -> Any:
        raise denied(code)

    with pytest.raises(StorageAccessDenied) as e:
        call_with_retry(fn, "s3://data/train.jsonl", 600, clock.sleep)
    assert clock.slept == []
    assert e.value.message.startswith("AccessDenied: S3 refused access to s3://data/train.jsonl")
    assert not e.value.retryable and e.value.exit_code == 15


def test_other_errors_pass_through_untouched(clock: Clock) -> None:
    def fn() -> Any:
        raise denied("NoSuchKey")

    with pytest.raises(ClientError):
        call_with_retry(fn, "s3://b/k", 600, clock.sleep)
    assert clock.slept == []


def test_retrying_client_names_the_object_of_positional_calls(clock: Clock) -> None:
    class Raw:
        def upload_file(self, filename: str, bucket: str, key: str, **kw: Any) -> None:
            raise denied("AccessDenied")

    with pytest.raises(StorageAccessDenied, match=re.escape("s3://out/ns/job/model.bin")):
        RetryingClient(Raw(), 600, clock.sleep).upload_file("/tmp/x", "out", "ns/job/model.bin")


class FakeS3(S3):
    """An in-memory S3: key -> (bytes, metadata)."""

    def __init__(self, owner: str | None) -> None:  # no boto3
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.owner_uid = owner
        self.retry_seconds = 0.0
        self.deleted: list[str] = []
        store = self

        class Client:
            def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
                for o in Delete["Objects"]:
                    store.deleted.append(o["Key"])
                    store.objects.pop(o["Key"], None)

        self.client = Client()

    def put(self, key: str, data: bytes, uid: str | None) -> None:
        self.objects[key] = (data, {s3_mod.OWNER_META: uid} if uid else {})

    def list_objects(self, uri: str) -> list[dict[str, Any]]:
        _, prefix = uri.split("://", 1)[1].split("/", 1)
        return [
            {"Key": k, "Size": len(v[0])} for k, v in self.objects.items() if k.startswith(prefix)
        ]

    def head(self, uri: str) -> dict[str, Any] | None:
        key = uri.split("://", 1)[1].split("/", 1)[1]
        if key not in self.objects:
            return None
        return {"ContentLength": len(self.objects[key][0]), "Metadata": self.objects[key][1]}

    def get_bytes(self, uri: str) -> bytes:
        return self.objects[uri.split("://", 1)[1].split("/", 1)[1]][0]


def test_cleanup_deletes_only_when_every_object_is_this_uids() -> None:
    s = FakeS3(UID)
    s.put("out/run-1/adapter/a.bin", b"mine", UID)
    s.put("out/run-1/checkpoints/checkpoint-3/x", b"kept", UID)
    s.put("out/run-1/metrics.json", b"theirs", OTHER)
    with pytest.raises(StorageConflict) as e:
        s.delete_prefix("s3://b/out/run-1", keep=("checkpoints/",))
    assert "s3://b/out/run-1/metrics.json" in e.value.message and UID in e.value.message
    assert s.deleted == [] and len(s.objects) == 3
    s.put("out/run-1/metrics.json", b"mine too", UID)
    assert s.delete_prefix("s3://b/out/run-1", keep=("checkpoints/",)) == 2
    assert list(s.objects) == ["out/run-1/checkpoints/checkpoint-3/x"]


def test_objects_without_an_owner_are_not_ours_either() -> None:
    s = FakeS3(UID)
    s.put("out/run-1/manifest.json", b"{}", None)
    with pytest.raises(StorageConflict):
        s.delete_prefix("s3://b/out/run-1")
    assert s.deleted == []


def test_resume_refuses_a_checkpoint_of_another_uid() -> None:
    s = FakeS3(UID)
    prefix = "s3://b/out/run-1/checkpoints/"
    for step, uid in ((3, UID), (6, OTHER)):
        s.put(f"out/run-1/checkpoints/checkpoint-{step}/w.bin", b"w", uid)
        s.put(
            f"out/run-1/checkpoints/checkpoint-{step}/{MARKER}",
            json.dumps({"step": step, "uid": uid}).encode(),
            uid,
        )
    store = CheckpointStore(s, prefix, keep=2)
    with pytest.raises(StorageConflict, match="checkpoint-6/COMPLETE names FineTuneJob uid"):
        store.latest()
    s.objects.pop(f"out/run-1/checkpoints/checkpoint-6/{MARKER}")
    assert store.latest() == 3


def test_operator_maps_the_storage_exit_codes_to_reasons() -> None:
    from kubetune_api.v1alpha1 import Reason
    from kubetune_operator.render import NON_RETRYABLE_EXIT_CODES
    from kubetune_operator.status import EXIT_REASONS

    assert EXIT_REASONS[15] == Reason.STORAGE_ACCESS_DENIED == "StorageAccessDenied"
    assert EXIT_REASONS[16] == Reason.STORAGE_CONFLICT
    assert EXIT_REASONS[20] == Reason.STORAGE_UNAVAILABLE
    assert {15, 16} <= set(NON_RETRYABLE_EXIT_CODES) and 20 not in NON_RETRYABLE_EXIT_CODES
    codes = [c for c in EXIT_REASONS]
    assert len(codes) == len(set(codes))


def test_pruning_never_touches_another_uids_checkpoint() -> None:
    s = FakeS3(UID)
    for step, uid in ((3, OTHER), (6, UID), (9, UID)):
        s.put(f"out/ckpt/checkpoint-{step}/w.bin", b"w", uid)
        s.put(
            f"out/ckpt/checkpoint-{step}/{MARKER}",
            json.dumps({"step": step, "uid": uid}).encode(),
            uid,
        )
    deleted_markers: list[str] = []
    s.client.delete_object = lambda Bucket, Key: deleted_markers.append(Key)  # type: ignore[attr-defined]
    store = CheckpointStore(s, "s3://b/out/ckpt/", keep=2)
    with pytest.raises(StorageConflict):
        store.prune()
    assert deleted_markers == [] and s.deleted == []


def test_s3_retry_seconds_travels_from_the_operator_setting_to_the_trainer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubetune_api.v1alpha1 import FineTuneJobSpec
    from kubetune_operator.render import Owner, Run, trainer_config
    from kubetune_operator.settings import OperatorSettings

    monkeypatch.setenv("KUBETUNE_S3_RETRY_SECONDS", "90")
    settings = OperatorSettings()
    assert settings.s3_retry_seconds == 90
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hubId": "org/m"},
            "dataset": {"s3Uri": "s3://data/train.jsonl"},
            "output": {"uri": "s3://out/prefix"},
        }
    )
    cfg = trainer_config(
        spec, Owner("ns", "job", UID), Run(number=1, generation=1, spec_hash="h"), settings
    )
    assert cfg.s3_retry_seconds == 90
    assert cfg.job.uid == UID and cfg.run_prefix == "s3://out/prefix/ns/job/0b7c1c9e/run-1/"
