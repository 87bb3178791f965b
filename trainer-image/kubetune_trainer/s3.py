"""S3 I/O at the edges: downloads of model/data sources, checksummed uploads of artifacts.

Endpoint, region and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; docs/design.md), with the spec's
output.endpoint/region as a fallback. Files move through transfer.py: several files in flight,
large ones in parallel parts, every byte read once and its SHA-256 computed while it streams
(docs/design.md, "Data movement").

Every upload carries an S3 SHA-256 checksum per request (the server verifies each part), and a
single-request object also the file's hex SHA-256 as metadata; after the upload a HEAD checks
the size and the checksum S3 computed. Every download is checked against the digest the object
records (ChecksumMismatch when it differs).

Ownership: every object the trainer writes carries the FineTuneJob's metadata.uid as object
metadata (`kubetune-uid`). Deleting under a prefix (cleanup of an earlier attempt, checkpoint
pruning) first checks that every object there names this uid, and fails with StorageConflict,
deleting nothing, when one does not.

Outages: each call on `S3.client` retries connection errors (refused, reset, timeouts) for up to
`retry_seconds` (TrainerConfig.s3RetrySeconds, default 600) from the first failure, then fails
the attempt with StorageUnavailable (retryable). S3 refusing the credentials or the request
(AccessDenied and friends) fails at once with StorageAccessDenied, naming the URI.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.s3uri import split_s3_uri
from kubetune_api.v1alpha1 import (
    ArtifactsMissing,
    StorageAccessDenied,
    StorageConflict,
)

from . import transfer
from .s3retry import (  # noqa: F401 (errors and retries; re-exported)
    DEFAULT_RETRY_SECONDS,
    DENIED_CODES,
    RetryingClient,
    _chain,
    _target,
    call_with_retry,
    denied_code,
    is_connection_error,
)
from .transfer import ChecksumMismatch, Expect

__all__ = ["S3", "ChecksumMismatch", "Uploaded", "join", "sha256_file", "split_s3_uri"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SHA256_META = "sha256"
OWNER_META = "kubetune-uid"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def composite_sha256(path: str | os.PathLike[str], part_size: int) -> str:
    """The S3 COMPOSITE SHA-256 of a multipart upload with parts of `part_size`: base64 of
    sha256(concatenated part digests), suffixed with -<parts>."""
    parts = []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(part_size), b""):
            parts.append(hashlib.sha256(chunk).digest())
    return f"{base64.b64encode(hashlib.sha256(b''.join(parts)).digest()).decode()}-{len(parts)}"


def join(prefix: str, *parts: str) -> str:
    """s3://b/p + a/b -> s3://b/p/a/b (one slash between parts)."""
    out = prefix.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


@dataclass(frozen=True)
class Uploaded:
    uri: str
    key: str  # path relative to the uploaded directory
    size: int
    sha256: str


# Measured with bench/transfer_bench.py (docs/benchmarks.md); KUBETUNE_S3_CONCURRENCY,
# KUBETUNE_S3_FILES, KUBETUNE_S3_PART_MIB, KUBETUNE_S3_GET_MIB and KUBETUNE_S3_CRC_GET_MIB
# override them. get_mib: the ranges an ordered SHA-256 follows; crc_get_mib: the ranges of a
# download checked by CRC64-NVME alone (no order, so fewer, larger requests).
TRANSFER_DEFAULTS = {"concurrency": 16, "files": 8, "part_mib": 32, "get_mib": 8, "crc_get_mib": 64}


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def checksum_algorithm() -> str:
    """S3's checksum for uploads: CRC64-NVME unless KUBETUNE_S3_CHECKSUM=sha256 (a store known
    not to accept it; refusal is also detected at the first upload: `refuses_crc`)."""
    want = os.environ.get("KUBETUNE_S3_CHECKSUM", "crc64nvme").strip().lower()
    return transfer.SHA256_ALGORITHM if want == "sha256" else transfer.CRC_ALGORITHM


def refuses_crc(e: BaseException) -> bool:
    """A store's answer that it does not support the CRC64-NVME checksum (not a mismatch,
    which is an error of the bytes and is raised)."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    err = e.response.get("Error", {})
    code, message = str(err.get("Code", "")), str(err.get("Message", "")).lower()
    unsupported = code in ("InvalidArgument", "InvalidRequest", "NotImplemented", "BadRequest")
    return unsupported and any(w in message for w in ("checksum", "crc64", "crc-64"))


class S3:
    """A thin client: one boto3 client (thread-safe) and one transfer configuration."""

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        kms_key_id: str | None = None,
        owner_uid: str | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.concurrency = max(
            1, _env_int("KUBETUNE_S3_CONCURRENCY", TRANSFER_DEFAULTS["concurrency"])
        )
        self.files_in_flight = max(1, _env_int("KUBETUNE_S3_FILES", TRANSFER_DEFAULTS["files"]))
        endpoint = (
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or endpoint
        )
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or region
        cfg = Config(
            # Few attempts here: connection errors are waited out by RetryingClient for
            # s3RetrySeconds, and throttling (503 SlowDown) still gets botocore's backoff.
            retries={"max_attempts": 4, "mode": "standard"},
            max_pool_connections=self.concurrency + self.files_in_flight,
            connect_timeout=10,
            read_timeout=120,
            # Path-style works with every S3-compatible server (MinIO, Ceph) and with AWS.
            # Unsigned payloads: every request carries its own SHA-256 checksum, which S3
            # verifies, so signing would only hash each byte once more (botocore does not sign
            # payloads over https by default either).
            s3={"addressing_style": "path", "payload_signing_enabled": False}
            if endpoint
            else {"payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.owner_uid = owner_uid
        self.retry_seconds = retry_seconds
        self.client: Any = RetryingClient(
            boto3.client(
                "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=cfg
            ),
            retry_seconds,
        )
        self.part_size = (
            max(5, _env_int("KUBETUNE_S3_PART_MIB", TRANSFER_DEFAULTS["part_mib"])) * MiB
        )
        # Ranges of a download: small, so the in-order hash follows close behind the ranges
        # in flight (transfer.download).
        self.download_part_size = (
            max(1, _env_int("KUBETUNE_S3_GET_MIB", TRANSFER_DEFAULTS["get_mib"])) * MiB
        )
        self.crc_part_size = (
            max(1, _env_int("KUBETUNE_S3_CRC_GET_MIB", TRANSFER_DEFAULTS["crc_get_mib"])) * MiB
        )
        self.checksum_algorithm = checksum_algorithm()
        self._parts: ThreadPoolExecutor | None = None
        self._tagging_off = False
        self._pool_lock = threading.Lock()
        self.extra: dict[str, Any] = {}
        if sse and sse != "none":
            self.extra["ServerSideEncryption"] = sse
            if kms_key_id:
                self.extra["SSEKMSKeyId"] = kms_key_id

    # ------------------------------------------------------------------ reading

    def list_objects(self, uri: str) -> list[dict[str, Any]]:
        """Objects whose key starts with the URI's key (as given: add a '/' for a folder)."""
        bucket, prefix = split_s3_uri(uri)
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self.client.list_objects_v2(**kwargs)
            out.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def head(self, uri: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            return dict(self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        return bytes(
            call_with_retry(
                lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read(),
                uri,
                self.retry_seconds,
                time.sleep,
            )
        )

    def owner_of(self, uri: str) -> str | None:
        """The FineTuneJob uid an object was written by (its kubetune-uid metadata), or None."""
        head = self.head(uri)
        meta = {k.lower(): v for k, v in ((head or {}).get("Metadata") or {}).items()}
        return meta.get(OWNER_META)

    def _metadata(self, digest: str | None) -> dict[str, str]:
        meta = {SHA256_META: digest} if digest else {}
        if self.owner_uid:
            meta[OWNER_META] = self.owner_uid
        return meta

    def check_owned(self, uri: str, keep: tuple[str, ...] = ()) -> list[str]:
        """Keys under `uri/` (except those under `keep`), after checking that each names this
        trainer's uid; StorageConflict (naming the first foreign object) when one does not."""
        bucket, key_prefix = split_s3_uri(uri.rstrip("/") + "/")
        keys = [
            o["Key"]
            for o in self.list_objects(uri.rstrip("/") + "/")
            if not o["Key"][len(key_prefix) :].startswith(keep or ("\0",))
        ]
        if self.owner_uid is None:
            return keys
        foreign = [k for k in keys if self.owner_of(f"s3://{bucket}/{k}") != self.owner_uid]
        if foreign:
            raise StorageConflict(
                f"{len(foreign)} object(s) under {uri} were not written by this FineTuneJob "
                f"(uid {self.owner_uid}), e.g. s3://{bucket}/{foreign[0]}: refusing to use, "
                "overwrite or delete them. Another object wrote to this prefix; give this job "
                "its own output.uri"
            )
        return keys

    def _pool(self) -> ThreadPoolExecutor:
        """The part workers shared by every transfer of this client (files in flight submit
        their parts here; part workers never submit, so nothing waits on itself)."""
        with self._pool_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="s3-part"
                )
            return self._parts

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_retry(fn, what, self.retry_seconds, time.sleep)

    def expect(self, uri: str) -> Expect:
        """What the object records about its bytes (size, ETag, sha256, composite checksum)."""
        bucket, key = split_s3_uri(uri)
        head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")

        def part_one() -> int | None:
            h = self.client.head_object(Bucket=bucket, Key=key, PartNumber=1)
            return int(h["ContentLength"]) if int(h.get("PartsCount") or 1) > 1 else None

        def tagged() -> dict[str, str]:
            from botocore.exceptions import ClientError

            try:
                tags = self.client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
            except (ClientError, StorageAccessDenied):
                return {}  # not allowed or not supported: the download hashes in order
            return {t["Key"]: t["Value"] for t in tags}

        return transfer.expect_from_head(dict(head), part_one, tagged)

    def _tag_sha256(self, bucket: str, key: str, digest: str, crc: str | None) -> None:
        """Tag a multipart object with its sha256 and the CRC64-NVME computed with it
        (transfer.SHA256_TAG, CRC_TAG). Where the credentials may not tag objects
        (s3:PutObjectTagging) or the server has no tagging, downloads hash in order; said
        once."""
        from botocore.exceptions import ClientError

        if self._tagging_off:
            return
        try:
            self.client.put_object_tagging(
                Bucket=bucket,
                Key=key,
                Tagging={
                    "TagSet": [
                        {"Key": transfer.SHA256_TAG, "Value": digest},
                        *([{"Key": transfer.CRC_TAG, "Value": crc}] if crc else []),
                    ]
                },
            )
        except (ClientError, StorageAccessDenied) as e:
            self._tagging_off = True
            log.info(
                "cannot tag s3://%s/%s with its sha256 (%s); downloads of multipart objects "
                "compute it again instead",
                bucket,
                key,
                type(e).__name__,
            )

    def download_file(
        self, uri: str, dest: str | os.PathLike[str], size: int | None = None
    ) -> str | None:
        """Download one object to `dest`; returns its sha256 (computed while streaming and
        checked against what the object records: ChecksumMismatch when it differs, after one
        more try). With `size` (the object's), a file of that size already at `dest` is kept
        (another local rank fetched it, or a retry in the same pod): then None. The bytes go to
        a temporary name of this process and thread and are renamed into place, so ranks that
        fetch the same object at once never rename each other's partial file."""
        bucket, key = split_s3_uri(uri)
        target = Path(dest)
        if size is not None and target.is_file() and target.stat().st_size == size:
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.part-{os.getpid()}-{threading.get_ident()}")
        try:
            for attempt in (1, 2):
                expect = self.expect(uri)
                try:
                    digest = transfer.download(
                        self.client.raw,
                        self._pool(),
                        self._retry,
                        bucket,
                        key,
                        tmp,
                        expect,
                        part_size=self.download_part_size,
                        crc_part_size=self.crc_part_size,
                    )
                    break
                except ChecksumMismatch as e:
                    if attempt == 2:
                        raise
                    log.warning("%s; downloading it once more", e)
            os.replace(tmp, target)
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def download_prefix(
        self, uri: str, dest: str | os.PathLike[str], skip: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Download every object under `uri/` into `dest`, keeping relative paths, several
        files at once. Returns the listed objects (Key, Size, ETag; and Sha256 for each one
        downloaded). Objects whose relative path is in `skip` are left."""
        prefix = uri.rstrip("/") + "/"
        bucket, key_prefix = split_s3_uri(prefix)
        objects = [o for o in self.list_objects(prefix) if not o["Key"].endswith("/")]
        skipped = set(skip)
        todo = [o for o in objects if o["Key"][len(key_prefix) :] not in skipped]
        dest = Path(dest)

        def fetch(obj: dict[str, Any]) -> None:
            rel = obj["Key"][len(key_prefix) :]
            digest = self.download_file(f"s3://{bucket}/{obj['Key']}", dest / rel, size=obj["Size"])
            if digest is not None:
                obj["Sha256"] = digest

        # Largest first: the big files' parts fill the part pool while small files go by.
        todo.sort(key=lambda o: -int(o["Size"]))
        with ThreadPoolExecutor(max_workers=min(self.files_in_flight, max(1, len(todo)))) as pool:
            list(pool.map(fetch, todo))
        return objects

    # ------------------------------------------------------------------ writing

    def upload_file(
        self, path: str | os.PathLike[str], uri: str, sha256: str | None = None, rel: str = ""
    ) -> Uploaded:
        """Upload one file, its SHA-256 computed while it streams (one read of the file), with
        S3's CRC64-NVME on every request (SHA-256 part checksums where the store refuses
        it); then verify size and checksum by HEAD. A given `sha256` that differs from the
        streamed one (the file changed) is an error."""
        bucket, key = split_s3_uri(uri)

        def send(algorithm: str) -> transfer.Sent:
            return transfer.upload(
                self.client,
                self._pool(),
                path,
                bucket,
                key,
                part_size=self.part_size,
                extra=self.extra,
                metadata=lambda digest: self._metadata(digest),
                tag=lambda digest, crc: self._tag_sha256(bucket, key, digest, crc),
                algorithm=algorithm,
            )

        tried = self.checksum_algorithm  # the files of upload_dir go up at once: decide on
        try:  # the algorithm this file used, not one another file has switched to since
            sent = send(tried)
        except Exception as e:
            if tried == transfer.SHA256_ALGORITHM or not refuses_crc(e):
                raise
            with self._pool_lock:
                if self.checksum_algorithm != transfer.SHA256_ALGORITHM:
                    log.warning(
                        "the object store refused S3's CRC64-NVME checksum (%s); this trainer "
                        "uploads with SHA-256 part checksums from now on "
                        "(KUBETUNE_S3_CHECKSUM=sha256 says so up front)",
                        e,
                    )
                    self.checksum_algorithm = transfer.SHA256_ALGORITHM
            sent = send(transfer.SHA256_ALGORITHM)
        if sha256 is not None and sha256 != sent.sha256:
            raise ArtifactsMissing(f"{path} changed while it was uploaded to {uri}")
        self.verify(uri, sent.size, sent.sha256, checksum=sent.checksum)
        return Uploaded(
            uri=uri, key=rel or os.path.basename(key), size=sent.size, sha256=sent.sha256
        )

    def verify(
        self,
        uri: str,
        size: int,
        sha256: str,
        path: str | os.PathLike[str] | None = None,
        checksum: str | None = None,
    ) -> None:
        """HEAD the object: size, our sha256 metadata and the server's SHA-256 checksum must
        match (`checksum`: the full-object or composite checksum computed while uploading; for
        a multipart object without it, the composite is recomputed from `path`)."""
        head = self.head(uri)
        if head is None:
            raise ArtifactsMissing(f"uploaded object {uri} is not there on HEAD")
        if int(head.get("ContentLength", -1)) != size:
            raise ArtifactsMissing(
                f"uploaded object {uri} has {head.get('ContentLength')} bytes, expected {size}"
            )
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if meta.get(SHA256_META) not in (None, sha256):
            raise ArtifactsMissing(f"uploaded object {uri}: sha256 metadata does not match")
        crc = head.get("ChecksumCRC64NVME")
        if crc:  # what transfer.upload writes; S3 checked it against the bytes on arrival
            if checksum is not None and crc != checksum:
                raise ArtifactsMissing(f"uploaded object {uri}: S3 CRC64-NVME checksum mismatch")
            return
        server = head.get("ChecksumSHA256")
        if not server:
            return
        if checksum is not None:
            expected = checksum
        elif "-" not in server:
            expected = base64.b64encode(bytes.fromhex(sha256)).decode()
        elif path is not None and int(server.rsplit("-", 1)[1]) == -(-size // self.part_size):
            expected = composite_sha256(path, self.part_size)
        else:
            return  # parts of an unknown size: S3 verified each part on arrival
        if server != expected:
            raise ArtifactsMissing(f"uploaded object {uri}: S3 SHA-256 checksum mismatch")

    def put_bytes(self, uri: str, data: bytes, content_type: str = "application/json") -> Uploaded:
        bucket, key = split_s3_uri(uri)
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
            Metadata=self._metadata(digest),
            **self.extra,
        )
        self.verify(uri, len(data), digest)
        return Uploaded(uri=uri, key=os.path.basename(key), size=len(data), sha256=digest)

    def upload_dir(
        self, local: str | os.PathLike[str], uri: str, digests: dict[str, str] | None = None
    ) -> list[Uploaded]:
        """Upload every file under `local` to `uri/<relative path>`, several files at once
        (largest first); returns them in path order, each with its streamed sha256."""
        root = Path(local)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        digests = digests or {}

        def put(p: Path) -> Uploaded:
            rel = p.relative_to(root).as_posix()
            return self.upload_file(p, join(uri, rel), digests.get(str(p)), rel=rel)

        by_size = sorted(files, key=lambda p: -p.stat().st_size)
        with ThreadPoolExecutor(max_workers=min(self.files_in_flight, max(1, len(files)))) as pool:
            done = dict(zip(by_size, pool.map(put, by_size), strict=True))
        return [done[p] for p in files]

    def delete_prefix(self, uri: str, keep: tuple[str, ...] = ()) -> int:
        """Delete every object under `uri/`, except those whose relative key starts with one
        of `keep`. With an owner uid, only when every one of them is this uid's (check_owned):
        otherwise StorageConflict and nothing is deleted."""
        bucket, _ = split_s3_uri(uri)
        keys = self.check_owned(uri, keep)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        return len(keys)
