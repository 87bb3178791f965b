"""Foundation: MinIO speaks enough S3 for the trainer (boto3 multipart upload, ranged reads)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from typing import Any

from boto3.s3.transfer import TransferConfig
from clusterlib import Cluster

MiB = 1024 * 1024


def test_multipart_round_trip(cluster: Cluster, s3: Any) -> None:
    data = os.urandom(64 * MiB)
    key = f"tests/multipart-{uuid.uuid4().hex}.bin"
    cfg = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4
    )
    try:
        s3.upload_fileobj(io.BytesIO(data), cluster.s3_bucket, key, Config=cfg)
        head = s3.head_object(Bucket=cluster.s3_bucket, Key=key)
        assert head["ContentLength"] == len(data)
        # A multipart ETag is md5-of-part-md5s with a "-<parts>" suffix.
        assert head["ETag"].strip('"').endswith("-8"), head["ETag"]

        out = io.BytesIO()
        s3.download_fileobj(cluster.s3_bucket, key, out, Config=cfg)
        assert hashlib.sha256(out.getvalue()).hexdigest() == hashlib.sha256(data).hexdigest()

        part = s3.get_object(Bucket=cluster.s3_bucket, Key=key, Range="bytes=100-199")[
            "Body"
        ].read()
        assert part == data[100:200]
    finally:
        s3.delete_object(Bucket=cluster.s3_bucket, Key=key)


def test_env_configures_boto3(cluster: Cluster) -> None:
    """`eval "$(hack/cluster env)"` is enough for a default boto3 client (AWS_ENDPOINT_URL)."""
    import boto3

    assert os.environ["AWS_ENDPOINT_URL"] == cluster.s3_endpoint
    client = boto3.client("s3")
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert cluster.s3_bucket in names
