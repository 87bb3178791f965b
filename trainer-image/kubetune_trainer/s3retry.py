"""S3 errors and outages: which failures are connection errors (retried for a window, then
StorageUnavailable) and which are refusals (StorageAccessDenied at once), and the client wrapper
that applies that to every call. Used by s3.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kubetune_api.v1alpha1 import (
    ArtifactsMissing,
    StorageAccessDenied,
    StorageConflict,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = 600.0
DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}


def _chain(e: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_connection_error(e: BaseException) -> bool:
    """S3 could not be reached or the connection broke: worth waiting out."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    for c in _chain(e):
        if isinstance(c, BotoConnectionError | HTTPClientError | ConnectionError):
            return True
        if type(c).__name__ in ("RetriesExceededError", "IncompleteReadError"):
            return True  # s3transfer's streaming download; a body cut short
    return False


def denied_code(e: BaseException) -> str | None:
    """The S3 error code when S3 refused the credentials or the request, else None."""
    from botocore.exceptions import ClientError, NoCredentialsError

    for c in _chain(e):
        if isinstance(c, NoCredentialsError):
            return "NoCredentials"
        if isinstance(c, ClientError):
            code = str(c.response.get("Error", {}).get("Code", ""))
            if code in DENIED_CODES:
                return "AccessDenied" if code in ("403", "Forbidden") else code
    return None


_LOCATION = {
    # method: (index of Bucket, index of Key) among positional arguments
    "upload_file": (1, 2),
    "download_file": (0, 1),
}


def _target(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    bucket = kwargs.get("Bucket")
    key = kwargs.get("Key", kwargs.get("Prefix", ""))
    if bucket is None and method in _LOCATION:
        b, k = _LOCATION[method]
        bucket = args[b] if len(args) > b else None
        key = args[k] if len(args) > k else key
    return f"s3://{bucket}/{key}" if bucket else "S3"


def call_with_retry(
    fn: Callable[[], Any], what: str, retry_seconds: float, sleep: Callable[[float], None]
) -> Any:
    """Run `fn`; connection errors are retried with backoff (1 s doubling to 15 s) until
    `retry_seconds` have passed since the first failure, then StorageUnavailable. A refusal
    of the credentials is StorageAccessDenied at once."""
    first: float | None = None
    delay = 1.0
    last_log = 0.0
    while True:
        try:
            return fn()
        except (StorageAccessDenied, StorageConflict, StorageUnavailable, ArtifactsMissing):
            raise
        except Exception as e:
            code = denied_code(e)
            if code is not None:
                said = "" if code == "AccessDenied" else f"; S3 said {code}"
                raise StorageAccessDenied(
                    f"AccessDenied: S3 refused access to {what}{said}. Check the credentials in the "
                    "trainer's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY Secret (output.credentials"
                    "SecretRef or the chart's s3.credentialsSecret) and that they may read and "
                    "write this bucket"
                ) from e
            if not is_connection_error(e):
                raise
            now = time.monotonic()
            if first is None:
                first = now
            waited = now - first
            if waited >= retry_seconds:
                raise StorageUnavailable(
                    f"S3 unreachable for {waited:.0f}s at {what} ({type(e).__name__}); gave up "
                    f"after s3RetrySeconds {retry_seconds:g}. The next attempt resumes from the "
                    "last complete checkpoint"
                ) from e
            if now - last_log >= 30 or waited == 0:
                log.warning(
                    "S3 unreachable at %s (%s); retrying for up to %.0fs more",
                    what,
                    type(e).__name__,
                    retry_seconds - waited,
                )
                last_log = now
            sleep(min(delay, max(0.1, retry_seconds - waited)))
            delay = min(delay * 2, 15.0)


class RetryingClient:
    """A boto3 S3 client whose every call goes through call_with_retry."""

    def __init__(
        self, client: Any, retry_seconds: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self.raw = client  # for calls that wrap a whole request+read in call_with_retry
        self._retry_seconds = retry_seconds
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in ("get_paginator", "can_paginate", "get_waiter"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return call_with_retry(
                lambda: attr(*args, **kwargs),
                _target(name, args, kwargs),
                self._retry_seconds,
                self._sleep,
            )

        return call
