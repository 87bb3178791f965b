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


def test_crc64_is_crc64_nvme_and_concatenates() -> None:
    # the CRC-64/NVME check value (the CRC of "123456789"), as S3 computes it
    assert transfer.crc64(b"123456789") == 0xAE8B14860A799888
    assert transfer.crc64(b"56789", transfer.crc64(b"1234")) == 0xAE8B14860A799888
    blocks = [os.urandom(n) for n in (0, 1, 1000, 65536)]
    want = transfer.crc64(b"".join(blocks))
    assert transfer.crc64_concat([(transfer.crc64(b), len(b)) for b in blocks]) == want
    assert (
        transfer.crc64_b64(0xAE8B14860A799888)
        == base64.b64encode(bytes.fromhex("ae8b14860a799888")).decode()
    )


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


def crc_of(data: bytes) -> str:
    """S3's CRC64-NVME header value, from awscrt itself (not the code under test)."""
    from awscrt import checksums

    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def refuse() -> None:
    from botocore.exceptions import ClientError

    error = {"Code": "InvalidArgument", "Message": "Unsupported checksum algorithm CRC64NVME"}
    raise ClientError({"Error": error}, "PutObject")


def sha_of(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class Store:
    """put_object / multipart / ranged get_object over a dict, as boto3's client names them;
    every checksum a request carries is checked, as S3 does. `crc=False`: a store without
    CRC64-NVME, which refuses it as an unknown checksum (InvalidArgument)."""

    def __init__(self, crc: bool = True) -> None:
        self.objects: dict[str, bytes] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.algorithm: dict[str, str] = {}
        self.gets = 0
        self.crc = crc

    def _check(self, data: bytes, kw: dict[str, Any]) -> None:
        if "ChecksumCRC64NVME" in kw:
            if not self.crc:
                refuse()
            assert kw["ChecksumCRC64NVME"] == crc_of(data)
        else:
            assert kw["ChecksumSHA256"] == sha_of(data)

    def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> Any:
        self._check(Body, kw)
        self.objects[Key], self.meta[Key] = Body, kw.get("Metadata", {})
        return {}

    def create_multipart_upload(self, Bucket: str, Key: str, **kw: Any) -> Any:
        if kw["ChecksumAlgorithm"] == "CRC64NVME":
            if not self.crc:
                refuse()
            assert kw["ChecksumType"] == "FULL_OBJECT"
        self.algorithm[Key] = kw["ChecksumAlgorithm"]
        self.uploads[Key] = {}
        self.meta[Key] = kw["Metadata"]
        return {"UploadId": Key}

    def upload_part(self, Body: bytes, PartNumber: int, UploadId: str, **kw: Any) -> Any:
        assert f"Checksum{self.algorithm[UploadId]}" in kw
        self._check(Body, kw)
        self.uploads[UploadId][PartNumber] = Body
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **kw: Any) -> Any:
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(numbers)
        got = self.uploads.pop(Key)
        self.objects[Key] = b"".join(got[n] for n in numbers)
        if self.algorithm[Key] == "CRC64NVME":
            assert kw["ChecksumCRC64NVME"] == crc_of(self.objects[Key])  # the full object's
        else:
            assert "ChecksumCRC64NVME" not in kw  # composite: S3 builds it from the parts
        return {}

    def abort_multipart_upload(self, **kw: Any) -> None:
        self.uploads.pop(kw["Key"], None)

    def get_object(self, Bucket: str, Key: str, Range: str, **kw: Any) -> Any:
        self.gets += 1
        a, b = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(self.objects[Key][a : b + 1])}


def upload_to(
    store: Store, pool: ThreadPoolExecutor, src: Path, tags: list[Any], **kw: Any
) -> transfer.Sent:
    """transfer.upload of `src` to b/k in 16 KiB parts, metadata and tags as S3 gives them."""
    return transfer.upload(
        store,
        pool,
        src,
        "b",
        "k",
        part_size=16 * 1024,
        extra={},
        metadata=lambda d: {"sha256": d} if d else {},
        tag=lambda digest, crc: tags.append((digest, crc)),
        **kw,
    )


def retry(fn: Any, what: str) -> Any:
    return fn()


@pytest.mark.parametrize("size", [0, 100, 64 * 1024 + 5])
def test_round_trip_hashes_while_streaming(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upload: the file's sha256 computed once while the parts stream, S3's CRC64-NVME on every
    request and the full object's on completion. Download: the CRC checked range by range, in
    parallel, nothing read back; the digest returned is the recorded sha256 (metadata or tag),
    or, for an object that records none (another tool's upload), computed in order."""
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    store = Store()
    tags: list[tuple[str, str | None]] = []
    with ThreadPoolExecutor(4) as pool:
        sent = upload_to(store, pool, src, tags)
        assert store.objects["k"] == data
        assert sent.sha256 == hashlib.sha256(data).hexdigest()
        assert sent.checksum == crc_of(data)
        if size > 16 * 1024:  # multipart: the part size is recorded, no whole digest up front
            assert store.meta["k"] == {transfer.PART_SIZE_META: str(16 * 1024)}
            assert tags == [(sent.sha256, sent.checksum)]
        else:  # one request: the sha256 and the CRC computed with it, in the metadata
            assert store.meta["k"] == {"sha256": sent.sha256, transfer.CRC_META: sent.checksum}
        crc = int.from_bytes(base64.b64decode(sent.checksum), "big")
        recorded = Expect(size=size, sha256=sent.sha256, crc64nvme=crc, sha256_bound=True)
        unrecorded = Expect(size=size, crc64nvme=crc)

        def no_read_back(*a: Any) -> int:
            raise AssertionError("read back from the file")

        with monkeypatch.context() as m:
            m.setattr(transfer.os, "preadv", no_read_back)
            got = transfer.download(
                store, pool, retry, "b", "k", tmp_path / "out", recorded, part_size=4096
            )
        assert got == sent.sha256
        assert (tmp_path / "out").read_bytes() == data
        got = transfer.download(
            store, pool, retry, "b", "k", tmp_path / "out2", unrecorded, part_size=4096
        )
    assert got == sent.sha256
    assert (tmp_path / "out2").read_bytes() == data


def test_corrupt_bytes_are_a_checksum_mismatch(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    store = Store()
    store.objects["k"] = data[:-1] + bytes([data[-1] ^ 1])
    parts = [hashlib.sha256(data[o : o + n]).digest() for o, n in transfer.parts(len(data), 16384)]
    with ThreadPoolExecutor(4) as pool:
        for expect in (
            Expect(size=len(data), sha256=hashlib.sha256(data).hexdigest()),
            Expect(size=len(data), composite=transfer.composite(parts), part_size=16384),
            Expect(
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                composite=transfer.composite(parts),
                part_size=16384,
            ),
            Expect(  # S3's CRC of the good bytes, recorded with their sha256
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                crc64nvme=transfer.crc64(data),
                sha256_bound=True,
            ),
            Expect(  # new bytes under old metadata: S3's CRC is theirs, the sha256 is not
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                crc64nvme=transfer.crc64(store.objects["k"]),
            ),
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
    # a sha256 tag (set after a multipart upload of old) replaces the part digests; junk is
    # ignored
    tag = hashlib.sha256(b"y").hexdigest()
    e = transfer.expect_from_head(comp, lambda: None, lambda: {transfer.SHA256_TAG: tag})
    assert (e.sha256, e.composite) == (tag, None)
    junk = transfer.expect_from_head(comp, lambda: None, lambda: {transfer.SHA256_TAG: "junk"})
    assert junk.composite == "abc=-3"
    # S3's full-object CRC64-NVME: the sha256 from our metadata, or our tags; it stands for the
    # bytes only when recorded with this very CRC (bound)
    b64crc = "rosUhgp5mIg="  # CRC64-NVME of "123456789"
    crc = {"ContentLength": 9, "ChecksumCRC64NVME": b64crc, "ChecksumType": "FULL_OBJECT"}
    meta = {"sha256": tag, transfer.CRC_META: b64crc}
    e = transfer.expect_from_head({**crc, "Metadata": meta}, lambda: None)
    assert (e.crc64nvme, e.sha256, e.sha256_bound) == (0xAE8B14860A799888, tag, True)
    tags = {transfer.SHA256_TAG: tag, transfer.CRC_TAG: b64crc}
    assert transfer.expect_from_head(crc, lambda: None, lambda: tags).sha256_bound
    # new bytes under the old metadata (S3's CRC is of the new bytes), or a sha256 alone
    stale = {**crc, "ChecksumCRC64NVME": "AAAAAAAAAAE=", "Metadata": meta}
    e = transfer.expect_from_head(stale, lambda: None)
    assert (e.sha256, e.sha256_bound) == (tag, False)
    e = transfer.expect_from_head({**crc, "Metadata": {"sha256": tag}}, lambda: None)
    assert (e.sha256, e.sha256_bound) == (tag, False)
    assert transfer.expect_from_head(crc, lambda: None, dict).sha256 is None
    # a composite CRC (parts of another tool) cannot be recombined: not used
    composite_crc = {**crc, "ChecksumType": "COMPOSITE"}
    assert transfer.expect_from_head(composite_crc, lambda: None).crc64nvme is None


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


@pytest.mark.parametrize("size", [100, 64 * 1024 + 5])
def test_sha256_part_checksums_for_stores_without_crc(tmp_path: Path, size: int) -> None:
    """algorithm=SHA256: S3's SHA-256 (composite for multipart) on every request, the file's
    sha256 still once in order; the download checks it against the composite or the metadata."""
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    store = Store(crc=False)
    tags: list[tuple[str, str | None]] = []
    with ThreadPoolExecutor(4) as pool:
        sent = upload_to(store, pool, src, tags, algorithm=transfer.SHA256_ALGORITHM)
        assert store.objects["k"] == data and sent.sha256 == hashlib.sha256(data).hexdigest()
        if size > 16 * 1024:
            plan = transfer.parts(size, 16 * 1024)
            digests = [hashlib.sha256(data[o : o + n]).digest() for o, n in plan]
            assert sent.checksum == transfer.composite(digests)
            assert tags == [(sent.sha256, None)]  # no CRC to record it with
            expect = Expect(size=size, composite=sent.checksum, part_size=16 * 1024)
        else:
            assert sent.checksum == sha_of(data)
            assert store.meta["k"] == {"sha256": sent.sha256}
            expect = Expect(size=size, sha256=sent.sha256)
        got = transfer.download(
            store, pool, retry, "b", "k", tmp_path / "o", expect, part_size=4096
        )
    assert got == sent.sha256 and (tmp_path / "o").read_bytes() == data


def s3_on(store: Store) -> Any:
    """kubetune_trainer.s3.S3 over a fake store (no boto3), uploading with CRC64-NVME first."""
    from kubetune_trainer import s3 as s3_mod

    s3 = s3_mod.S3.__new__(s3_mod.S3)
    s3.client, s3.extra, s3.owner_uid, s3.part_size = store, {}, None, 1 << 20
    s3.concurrency, s3._parts, s3._pool_lock = 2, None, threading.Lock()
    s3._tagging_off, s3.checksum_algorithm = False, transfer.CRC_ALGORITHM
    return s3


def test_s3_falls_back_to_sha256_when_the_store_refuses_crc(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first upload the store refuses for its CRC64-NVME is sent again with SHA-256 part
    checksums, and so is every later one (said once); a checksum mismatch is not a refusal."""
    import logging

    from botocore.exceptions import ClientError
    from kubetune_trainer import s3 as s3_mod

    store = Store(crc=False)

    def head_object(Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        data = store.objects[Key]
        return {"ContentLength": len(data), "ChecksumSHA256": sha_of(data)}

    store.head_object = head_object  # type: ignore[attr-defined]
    s3 = s3_on(store)
    (tmp_path / "a").write_bytes(b"first")
    (tmp_path / "b").write_bytes(b"second")
    with caplog.at_level(logging.WARNING):
        first = s3.upload_file(tmp_path / "a", "s3://bkt/a")
        second = s3.upload_file(tmp_path / "b", "s3://bkt/b")
    assert (first.sha256, second.sha256) == tuple(
        hashlib.sha256(x).hexdigest() for x in (b"first", b"second")
    )
    assert store.objects == {"a": b"first", "b": b"second"}
    assert s3.checksum_algorithm == transfer.SHA256_ALGORITHM
    assert sum("refused S3's CRC64-NVME" in r.message for r in caplog.records) == 1
    mismatch = {"Code": "XAmzContentChecksumMismatch", "Message": "checksum mismatch"}
    assert not s3_mod.refuses_crc(ClientError({"Error": mismatch}, "PutObject"))
    monkeypatch.setenv("KUBETUNE_S3_CHECKSUM", "sha256")
    assert s3_mod.checksum_algorithm() == transfer.SHA256_ALGORITHM
    monkeypatch.delenv("KUBETUNE_S3_CHECKSUM")
    assert s3_mod.checksum_algorithm() == transfer.CRC_ALGORITHM


def test_files_refused_at_once_all_fall_back_and_it_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """upload_dir sends files at once: each file refused with CRC64-NVME is sent again with
    SHA-256, also when another file switched the algorithm meanwhile."""
    import logging

    both_tried = threading.Barrier(2, timeout=10)

    class RefusesTogether(Store):
        def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> Any:
            if "ChecksumCRC64NVME" in kw:
                both_tried.wait()  # neither file is refused before both sent with the CRC
            return super().put_object(Bucket, Key, Body, **kw)

    store = RefusesTogether(crc=False)
    store.head_object = lambda Bucket, Key, **kw: {  # type: ignore[attr-defined]
        "ContentLength": len(store.objects[Key]),
        "ChecksumSHA256": sha_of(store.objects[Key]),
    }
    s3 = s3_on(store)
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(2) as files:
        list(files.map(lambda n: s3.upload_file(tmp_path / n, f"s3://bkt/{n}"), ["a", "b"]))
    assert store.objects == {"a": b"a" * 10, "b": b"b" * 10}
    assert sum("refused S3's CRC64-NVME" in r.message for r in caplog.records) == 1
