"""The fingerprint of training data in S3, for FineTuneSchedule's datasetChange trigger.

One object: its ETag. A prefix (a URI ending in `/`, or a key that is no object): a sha256 of
the key, ETag and size of every object under it, in key order. Each watched URI is folded into
one `sha256:<hex>` string, so status shows no listing, only whether it changed.

The operator reads S3 with its own credentials (boto3's default chain: the AWS_* variables the
chart sets from `schedules.s3CredentialsSecret`, or a web identity), at the platform's endpoint
(KUBETUNE_S3_ENDPOINT) only: it never reads a Secret, and never sends its credentials to an
endpoint a spec names. Errors become `DatasetUnreadable` with the S3 error code and the URI; no
credential, header or signature is ever in the message.

Because those credentials are the operator's, a schedule may watch only URIs under the prefixes
the platform allows its namespace (chart value `schedules.watchPrefixes`, `uri_allowed`): else
its author could learn whether data under any URI the operator can list changed (another team's
bucket). A URI outside them is never read: the schedule gets `DatasetNotAllowed`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Protocol

from kubetune_api.s3uri import split_s3_uri


class Unreadable(Exception):
    """The data could not be fingerprinted (message: safe for status and events)."""


WATCH_PREFIXES_VALUE = "schedules.watchPrefixes"
ANY_NAMESPACE = "*"
NAMESPACE_PLACEHOLDER = "{namespace}"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def normalise_uri(uri: str) -> str | None:
    """`s3://bucket/key` without a trailing `/` (`s3://bucket` for a whole bucket), so a prefix
    check works on segment boundaries; None for no S3 URI, or one with `.`/`..` segments (S3
    keeps them literally, HTTP stacks may not: refused rather than guessed)."""
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError:
        return None
    if not _BUCKET.match(bucket) or any(seg in (".", "..") for seg in key.split("/")):
        return None
    key = key.rstrip("/")
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def watch_prefixes(allowed: dict[str, list[str]], namespace: str) -> list[str]:
    """The prefixes `namespace` may watch: its own entry, else `*`'s (not both), with
    `{namespace}` replaced by the namespace."""
    entry = allowed.get(namespace, allowed.get(ANY_NAMESPACE, []))
    return [p.replace(NAMESPACE_PLACEHOLDER, namespace) for p in entry]


def uri_allowed(uri: str, prefixes: list[str]) -> bool:
    """True if `uri` is one of `prefixes` or under one, segment by segment: `s3://data-b/x` is
    not under `s3://data`, `s3://data/team-ab/` is not under `s3://data/team-a/`."""
    target = normalise_uri(uri)
    if target is None:
        return False
    for prefix in prefixes:
        base = normalise_uri(prefix)
        if base is not None and (target == base or target.startswith(base + "/")):
            return True
    return False


class S3Client(Protocol):
    def head_object(self, **kw: Any) -> dict[str, Any]: ...
    def get_paginator(self, name: str) -> Any: ...


def _code(e: Exception) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = str(err.get("Code") or "")
        if code:
            return code
    return type(e).__name__


def _listing(client: S3Client, bucket: str, prefix: str, h: Any) -> int:
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents") or []:
            h.update(f"{obj['Key']}\t{obj.get('ETag', '')}\t{obj.get('Size', '')}\n".encode())
            count += 1
    return count


def fingerprint(client: S3Client, uris: list[str]) -> str:
    """`sha256:<hex>` of the watched objects (module docstring); Unreadable if one cannot be
    read or a prefix is empty."""
    h = hashlib.sha256()
    for uri in sorted(set(uris)):
        bucket, key = split_s3_uri(uri)
        h.update(f"{uri}\n".encode())
        try:
            if key and not key.endswith("/"):
                try:
                    head = client.head_object(Bucket=bucket, Key=key)
                    h.update(
                        f"{key}\t{head.get('ETag', '')}\t{head.get('ContentLength', '')}\n".encode()
                    )
                    continue
                except Exception as e:
                    if _code(e) not in ("404", "NoSuchKey", "NotFound"):
                        raise
                    key += "/"  # no such object: a prefix of shards, as the trainer reads it
            if _listing(client, bucket, key, h) == 0:
                raise Unreadable(f"nothing under {uri} (no object and no shard)")
        except Unreadable:
            raise
        except Exception as e:
            raise Unreadable(f"{_code(e)} reading {uri}") from None
    return "sha256:" + h.hexdigest()


@functools.cache
def s3_client(endpoint: str | None, region: str) -> S3Client:
    """A boto3 S3 client with the operator's own credentials (module docstring); one per
    endpoint and region (boto3 clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"}
    )
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region, config=config)
