"""The streaming transfer engine's pure parts, and its checks, with an in-memory fake client."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer import transfer
from kubetune_trainer.transfer import ChecksumMismatch, Expect


def test_parts_cover_the_file_exactly() -> None:
    assert transfer.parts(0, 8) == [(0, 0)]
    assert transfer.parts(8, 8) == [(0, 8)]
    assert transfer.parts(17, 8) == [(0, 8), (8, 8), (16, 1)]


def test_composite_is_s3s_formula() -> None:
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    want = base64.b64encode(hashlib.sha256(a + b).digest()).decode() + "-2"
    assert transfer.composite([a, b]) == want


def test_chain_hashes_parts_in_order_whatever_order_they_arrive() -> None:
    chunks = [os.urandom(1000) for _ in range(12)]
    chain = transfer.Chain()

    def feed(i: int) -> None:
        time.sleep(0.001 * ((7 * i) % 5))  # finish out of order
        chain.feed(i, chunks[i])

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(feed, range(12)))
    assert chain.hash.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_a_failed_chain_releases_its_waiters() -> None:
    chain = transfer.Chain()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            chain.feed(3, b"x")
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    chain.fail()
    t.join(5)
    assert not t.is_alive() and errors


class Store:
    """put_object / multipart / ranged get_object over a dict, as boto3's client names them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.gets = 0

    def put_object(self, Bucket: str, Key: str, Body: bytes, ChecksumSHA256: str, **kw: Any) -> Any:
        assert base64.b64decode(ChecksumSHA256) == hashlib.sha256(Body).digest()
        self.objects[Key], self.meta[Key] = Body, kw.get("Metadata", {})
        return {}

    def create_multipart_upload(self, Bucket: str, Key: str, **kw: Any) -> Any:
        self.uploads[Key] = {}
        self.meta[Key] = kw["Metadata"]
        return {"UploadId": Key}

    def upload_part(self, Body: bytes, PartNumber: int, UploadId: str, **kw: Any) -> Any:
        assert base64.b64decode(kw["ChecksumSHA256"]) == hashlib.sha256(Body).digest()
        self.uploads[UploadId][PartNumber] = Body
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **kw: Any) -> Any:
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(numbers)
        got = self.uploads.pop(Key)
        self.objects[Key] = b"".join(got[n] for n in numbers)
        return {}

    def abort_multipart_upload(self, **kw: Any) -> None:
        self.uploads.pop(kw["Key"], None)

    def get_object(self, Bucket: str, Key: str, Range: str, **kw: Any) -> Any:
        self.gets += 1
        a, b = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(self.objects[Key][a : b + 1])}


def retry(fn: Any, what: str) -> Any:
    return fn()


@pytest.mark.parametrize("size", [0, 100, 64 * 1024 + 5])
def test_round_trip_hashes_while_streaming(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    store = Store()
    tags: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        sent = transfer.upload(
            store,
            pool,
            src,
            "b",
            "k",
            part_size=16 * 1024,
            extra={},
            metadata=lambda d: {"sha256": d} if d else {},
            tag=tags.append,
        )
        assert store.objects["k"] == data
        assert sent.sha256 == hashlib.sha256(data).hexdigest()
        if size > 16 * 1024:  # multipart: the part size is recorded, no whole digest up front
            assert store.meta["k"] == {transfer.PART_SIZE_META: str(16 * 1024)}
            parts = [
                hashlib.sha256(data[o : o + n]).digest() for o, n in transfer.parts(size, 16 * 1024)
            ]
            assert sent.checksum == transfer.composite(parts)
            assert tags == [sent.sha256]
        expect = Expect(
            size=size,
            composite=sent.checksum if "-" in sent.checksum else None,
            sha256=None if "-" in sent.checksum else sent.sha256,
            part_size=16 * 1024,
        )
        got = transfer.download(
            store, pool, retry, "b", "k", tmp_path / "out", expect, part_size=4096
        )
    assert got == sent.sha256
    assert (tmp_path / "out").read_bytes() == data


def test_corrupt_bytes_are_a_checksum_mismatch(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    store = Store()
    store.objects["k"] = data[:-1] + bytes([data[-1] ^ 1])
    parts = [hashlib.sha256(data[o : o + n]).digest() for o, n in transfer.parts(len(data), 16384)]
    with ThreadPoolExecutor(4) as pool:
        for expect in (
            Expect(size=len(data), sha256=hashlib.sha256(data).hexdigest()),
            Expect(size=len(data), composite=transfer.composite(parts), part_size=16384),
        ):
            with pytest.raises(ChecksumMismatch, match="corrupt"):
                transfer.download(
                    store, pool, retry, "b", "k", tmp_path / "o", expect, part_size=8192
                )


def test_expect_reads_our_metadata_and_s3s_checksums() -> None:
    digest = hashlib.sha256(b"x").digest()
    full = {"ContentLength": 1, "ChecksumSHA256": base64.b64encode(digest).decode()}
    assert transfer.expect_from_head(full, lambda: None).sha256 == digest.hex()
    comp = {
        "ContentLength": 20,
        "ChecksumSHA256": "abc=-3",
        "Metadata": {"kubetune-part-size": "8"},
    }
    e = transfer.expect_from_head(comp, lambda: None)
    assert (e.composite, e.part_size) == ("abc=-3", 8)
    # parts of another tool: part 1's size from a HEAD; sizes that cannot be equal parts: no check
    assert transfer.expect_from_head({**comp, "Metadata": {}}, lambda: 7).part_size == 7
    assert transfer.expect_from_head({**comp, "Metadata": {}}, lambda: 5).composite is None
    assert transfer.expect_from_head({"ContentLength": 3}, lambda: None) == Expect(size=3)
    # a sha256 tag (set after a multipart upload) replaces the part digests; junk is ignored
    tag = hashlib.sha256(b"y").hexdigest()
    e = transfer.expect_from_head(comp, lambda: None, lambda: tag)
    assert (e.sha256, e.composite) == (tag, None)
    assert transfer.expect_from_head(comp, lambda: None, lambda: "junk").composite == "abc=-3"


class SlowFirstRange(Store):
    """The first range answers last, and one later range breaks off half way once: the ranges
    ahead are hashed by reading them back, the broken one resumes where it stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.broke = False
        self.ranges: list[str] = []

    def get_object(self, Bucket: str, Key: str, Range: str, **kw: Any) -> Any:
        self.ranges.append(Range)
        a, b = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        if a == 0:
            time.sleep(0.2)
        data = self.objects[Key][a : b + 1]
        if a == 3 * 8192 and not self.broke:
            self.broke = True
            return {"Body": Broken(data[:5000])}
        return {"Body": io.BytesIO(data)}


class Broken(io.BytesIO):
    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        if not n:
            raise ConnectionResetError("connection reset by peer")
        return n


def retry_once(fn: Any, what: str) -> Any:
    try:
        return fn()
    except ConnectionError:
        return fn()


@pytest.mark.parametrize("composite", [False, True])
def test_ranges_landing_out_of_order_and_a_resumed_range_hash_to_the_files_sha256(
    tmp_path: Path, composite: bool
) -> None:
    data = os.urandom(10 * 8192 + 17)
    store = SlowFirstRange()
    store.objects["k"] = data
    plan = transfer.parts(len(data), 8192)
    parts = [hashlib.sha256(data[o : o + n]).digest() for o, n in plan]
    expect = (
        Expect(size=len(data), composite=transfer.composite(parts), part_size=8192)
        if composite
        else Expect(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    )
    with ThreadPoolExecutor(4) as pool:
        got = transfer.download(
            store, pool, retry_once, "b", "k", tmp_path / "o", expect, part_size=8192
        )
    assert got == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "o").read_bytes() == data
    # the broken range was asked for again from the byte where it stopped, not from its start
    assert f"bytes={3 * 8192 + 5000}-{4 * 8192 - 1}" in store.ranges


def test_a_worker_error_fails_the_download_without_hanging(tmp_path: Path) -> None:
    data = os.urandom(6 * 8192)
    store = SlowFirstRange()
    store.objects["k"] = data
    with ThreadPoolExecutor(4) as pool, pytest.raises(ConnectionError):
        transfer.download(
            store,
            pool,
            retry,  # no retry: the broken range fails the download
            "b",
            "k",
            tmp_path / "o",
            Expect(size=len(data), sha256=hashlib.sha256(data).hexdigest()),
            part_size=8192,
        )


class FakeHTTPClientResponse(io.BytesIO):
    def isclosed(self) -> bool:
        return self.tell() == len(self.getvalue())


class FakeUrllib3:
    def __init__(self, data: bytes) -> None:
        self._fp = FakeHTTPClientResponse(data)
        self.headers: dict[str, str] = {}
        self.released = self.closed = False

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class FakeStreamingBody:
    def __init__(self, data: bytes) -> None:
        self._raw_stream = FakeUrllib3(data)

    def read(self, n: int = -1) -> bytes:
        raise AssertionError("the body is read into the buffer, not through read()")


def test_body_reads_into_the_buffer_and_returns_the_connection_only_when_read_to_its_end() -> None:
    whole = FakeStreamingBody(b"x" * 10)
    body = transfer._Body(whole)
    buf = memoryview(bytearray(4))
    got = b""
    while n := body.readinto(buf):
        got += bytes(buf[:n])
    body.done(True)
    assert got == b"x" * 10 and whole._raw_stream.released and not whole._raw_stream.closed
    cut = FakeStreamingBody(b"y" * 10)
    body = transfer._Body(cut)
    body.readinto(buf)
    body.done(False)
    assert cut._raw_stream.closed and not cut._raw_stream.released
