"""Streaming S3 transfers: every byte is read once and hashed while it passes.

Upload of a file: parts of `part_size` are read with pread by the worker threads of a shared
pool; each worker hashes its part (the part's SHA-256, sent as the part's S3 checksum, which the
server verifies on arrival) and then, in part order, feeds the part into the file's SHA-256 (a
chain: part i waits until part i-1 is in). That file digest is what the manifest records. No
pre-pass over the file, no re-read for the verification: the composite checksum S3 reports is
compared with the one computed from the part digests.

Download of a file: ranged GETs (aligned to the object's parts when it has a composite
checksum) by the same pool, each written in place with pwrite and fed, in order, into the
file's SHA-256; then the digest is checked against what the object records: our `sha256`
metadata, S3's full-object SHA-256, or (multipart) the composite of the per-part digests. A
mismatch is `ChecksumMismatch`.

Several files are in flight at once (a pool of file threads above the part pool); a small file
is one request. Memory: at most (part pool size) x part_size bytes of buffers.

Pure helpers (part plans, the composite checksum, the ordered chain) are unit-tested.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

MiB = 1024 * 1024
PART_SIZE_META = "kubetune-part-size"
# A multipart object's whole-file sha256 is known only once every part is sent, after its
# metadata is fixed: it goes into this object tag, so a download checks one digest, not the
# part digests as well.
SHA256_TAG = "kubetune-sha256"


class ChecksumMismatch(Exception):
    """The bytes read do not match the digest the object records."""


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def parts(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part; one empty part for an empty file."""
    if size == 0:
        return [(0, 0)]
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


def composite(part_digests: list[bytes]) -> str:
    """S3's COMPOSITE SHA-256 of a multipart object: base64(sha256(part digests))-<parts>."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


class Chain:
    """Feeds parts into one running hash in part order, whatever order they arrive in. A part
    waits for its predecessor; parts are submitted in order to a FIFO pool, so the predecessor
    has always started (no deadlock). `fail()` releases every waiter."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self._next = 0
        self._failed = False
        self._cv = threading.Condition()

    def feed(self, index: int, data: bytes | memoryview) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._next == index or self._failed)
            if self._failed:
                raise RuntimeError("transfer aborted")
        self.hash.update(data)  # outside the lock: hashlib releases the GIL on large data
        with self._cv:
            self._next = index + 1
            self._cv.notify_all()

    def fail(self) -> None:
        with self._cv:
            self._failed = True
            self._cv.notify_all()


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            raise OSError(f"file shrank while uploading (read {got} of {length} bytes)")
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _run_parts(pool: ThreadPoolExecutor, chain: Chain, fns: list[Callable[[], Any]]) -> list[Any]:
    futures: list[Future[Any]] = [pool.submit(fn) for fn in fns]
    results: list[Any] = []
    try:
        for f in futures:
            results.append(f.result())
    except BaseException:
        chain.fail()
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # wait: no worker may still write after we return
        raise
    return results


@dataclass(frozen=True)
class Sent:
    size: int
    sha256: str  # hex, of the whole file
    checksum: str  # what S3 should report: base64 full-object digest, or composite "...-N"


Retry = Callable[[Callable[[], Any], str], Any]


def upload(
    client: Any,
    pool: ThreadPoolExecutor,
    path: str | os.PathLike[str],
    bucket: str,
    key: str,
    *,
    part_size: int,
    extra: dict[str, Any],
    metadata: Callable[[str | None], dict[str, str]],
    tag: Callable[[str], None] | None = None,
) -> Sent:
    """Upload one file, hashing while streaming. `metadata(sha256 or None)` gives the object's
    metadata (the digest is known up front only for a single-request upload). Every request
    body is in memory, so the caller's retrying client can resend it after a broken
    connection."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if size <= part_size:
            data = _pread(fd, size, 0)
            digest = hashlib.sha256(data).digest()
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=b64(digest),
                Metadata=metadata(digest.hex()),
                **extra,
            )
            return Sent(size=size, sha256=digest.hex(), checksum=b64(digest))
        meta = metadata(None)
        meta[PART_SIZE_META] = str(part_size)
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata=meta, **extra
        )["UploadId"]
        chain = Chain()

        def send(i: int, off: int, length: int) -> tuple[dict[str, Any], bytes]:
            data = _pread(fd, length, off)
            digest = hashlib.sha256(data).digest()
            chain.feed(i, data)
            resp = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=i + 1,
                Body=data,
                ChecksumSHA256=b64(digest),
            )
            part = {"PartNumber": i + 1, "ETag": resp["ETag"], "ChecksumSHA256": b64(digest)}
            return part, digest

        plan = parts(size, part_size)
        try:
            done = _run_parts(
                pool,
                chain,
                [partial(send, i, o, n) for i, (o, n) in enumerate(plan)],
            )
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [p for p, _ in done]},
            )
        except BaseException:
            # One try, not the retrying client's wait (S3 may be what failed); the original
            # error is the one to report, and S3's lifecycle rules clear what is left.
            with contextlib.suppress(Exception):
                raw = getattr(client, "raw", client)
                raw.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        digest_hex = chain.hash.hexdigest()
        if tag is not None:
            tag(digest_hex)
        return Sent(size=size, sha256=digest_hex, checksum=composite([d for _, d in done]))


@dataclass(frozen=True)
class Expect:
    """What an object records about its bytes (from HEAD)."""

    size: int
    etag: str | None = None
    sha256: str | None = None  # hex: our metadata, or S3's full-object SHA-256
    composite: str | None = None  # S3's composite checksum "...-N"
    part_size: int | None = None  # the parts' size when `composite` is set


def expect_from_head(
    head: dict[str, Any],
    part_one: Callable[[], int | None],
    tagged: Callable[[], str | None] = lambda: None,
) -> Expect:
    """The digests a HEAD (ChecksumMode=ENABLED) reports. For a composite checksum without our
    sha256 metadata, `tagged()` gives the sha256 tag (then the part digests need not be
    computed) and `part_one()` the size of part 1 (HEAD with PartNumber=1), asked only when
    there is no tag and no recorded part size."""
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    size = int(head.get("ContentLength", 0))
    etag = head.get("ETag")
    sha = meta.get("sha256")
    server = head.get("ChecksumSHA256")
    if server and "-" not in server and not sha:
        sha = base64.b64decode(server).hex()
    comp = server if server and "-" in server else None
    part_size = None
    if comp and not sha:
        t = tagged()
        if t and len(t) == 64 and all(c in "0123456789abcdef" for c in t):
            sha, comp = t, None
    if comp:
        raw = meta.get(PART_SIZE_META)
        part_size = int(raw) if raw and raw.isdigit() else part_one()
        n = int(comp.rsplit("-", 1)[1])
        if not part_size or not (n - 1) * part_size < size <= n * part_size:
            comp, part_size = None, None  # parts of unequal sizes: cannot recompute
    return Expect(size=size, etag=etag, sha256=sha, composite=comp, part_size=part_size)


def download(
    client: Any,
    pool: ThreadPoolExecutor,
    retry: Retry,
    bucket: str,
    key: str,
    dest: str | os.PathLike[str],
    expect: Expect,
    *,
    part_size: int,
) -> str:
    """Download one object into `dest` (a new file), hashing while streaming; returns the hex
    sha256. ChecksumMismatch when it differs from what the object records."""
    uri = f"s3://{bucket}/{key}"
    step = expect.part_size or part_size
    plan = parts(expect.size, step)
    cond = {"IfMatch": expect.etag} if expect.etag else {}
    chain = Chain()
    part_digests: list[bytes | None] = [None] * len(plan)

    def get(off: int, length: int) -> bytes:
        def once() -> bytes:
            if length == 0:
                return b""
            rng = f"bytes={off}-{off + length - 1}"
            body = client.get_object(Bucket=bucket, Key=key, Range=rng, **cond)["Body"]
            data = bytes(body.read())
            if len(data) != length:
                raise ConnectionError(f"short read: {len(data)} of {length} bytes")
            return data

        return bytes(retry(once, uri))

    with open(dest, "wb") as f:
        fd = f.fileno()
        if expect.size:
            os.ftruncate(fd, expect.size)

        def fetch(i: int, off: int, length: int) -> None:
            data = get(off, length)
            _pwrite(fd, data, off)
            if expect.composite:
                part_digests[i] = hashlib.sha256(data).digest()
            chain.feed(i, data)

        if len(plan) == 1:
            try:
                fetch(0, *plan[0])
            except BaseException:
                chain.fail()
                raise
        else:
            _run_parts(pool, chain, [partial(fetch, i, o, n) for i, (o, n) in enumerate(plan)])
    digest = chain.hash.hexdigest()
    if expect.sha256 and digest != expect.sha256:
        raise ChecksumMismatch(
            f"{uri}: the downloaded bytes have sha256 {digest}, the object records "
            f"{expect.sha256}: the object is corrupt"
        )
    if expect.composite:
        got = composite([d for d in part_digests if d is not None])
        if got != expect.composite:
            raise ChecksumMismatch(
                f"{uri}: the downloaded parts' SHA-256 checksum {got} differs from S3's "
                f"{expect.composite}: the object is corrupt"
            )
    return digest
