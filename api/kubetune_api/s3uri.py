"""`s3://bucket/key` split into its parts: one definition for the operator, the trainer and the
SDK (each had its own)."""

from __future__ import annotations

import re

_S3_URI = re.compile(r"^s3://([^/]+)/?(.*)$")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix"); ValueError for anything else."""
    m = _S3_URI.match(uri)
    if not m:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return m.group(1), m.group(2)
