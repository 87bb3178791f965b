"""A developer's stand-in for S3: `s3://bucket/key` is the file `<root>/bucket/key`.

For running `kubetune-train` on a machine with a GPU but no object store (benchmarks, local
debugging): `kubetune-train --config cfg.json --output-dir /tmp/out` (or
`KUBETUNE_LOCAL_ARTIFACTS=/tmp/out`) reads s3:// sources from and writes every artifact to that
directory, with the same layout, checksums and manifest as on S3. Never used in a cluster.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import ArtifactsMissing

from .s3 import S3, Uploaded, sha256_file, split_s3_uri

ENV = "KUBETUNE_LOCAL_ARTIFACTS"


class _Client:
    """The boto3 calls made on `S3.client` outside the S3 class's own methods."""

    def __init__(self, store: LocalS3) -> None:
        self.store = store

    def delete_object(self, Bucket: str, Key: str) -> None:
        self.store.path(f"s3://{Bucket}/{Key}").unlink(missing_ok=True)

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
        for obj in Delete["Objects"]:
            self.delete_object(Bucket, obj["Key"])


class LocalS3(S3):
    def __init__(self, root: str | os.PathLike[str]) -> None:  # no boto3
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.concurrency = 4
        self.files_in_flight = 4
        self.extra: dict[str, Any] = {}
        self.client = _Client(self)
        self.owner_uid: str | None = None
        self.retry_seconds = 0.0

    def owner_of(self, uri: str) -> str | None:
        # A developer's directory keeps no object metadata: everything in it is theirs.
        return self.owner_uid if self.path(uri).is_file() else None

    def path(self, uri: str) -> Path:
        bucket, key = split_s3_uri(uri)
        return self.root / bucket / key

    def list_objects(self, uri: str) -> list[dict[str, Any]]:
        bucket, prefix = split_s3_uri(uri)
        base = self.root / bucket
        if not base.is_dir():
            return []
        out = []
        for p in sorted(base.rglob("*")):
            key = p.relative_to(base).as_posix()
            if p.is_file() and key.startswith(prefix):
                out.append({"Key": key, "Size": p.stat().st_size, "ETag": ""})
        return out

    def head(self, uri: str) -> dict[str, Any] | None:
        p = self.path(uri)
        return {"ContentLength": p.stat().st_size} if p.is_file() else None

    def get_bytes(self, uri: str) -> bytes:
        return self.path(uri).read_bytes()

    def download_file(
        self, uri: str, dest: str | os.PathLike[str], size: int | None = None
    ) -> str | None:
        if size is not None and Path(dest).is_file() and Path(dest).stat().st_size == size:
            return None
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(uri), dest)
        return None

    def upload_file(
        self, path: str | os.PathLike[str], uri: str, sha256: str | None = None, rel: str = ""
    ) -> Uploaded:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        digest = sha256 or sha256_file(path)
        size = os.path.getsize(path)
        self.verify(uri, size, digest, path)
        return Uploaded(uri=uri, key=rel or os.path.basename(str(target)), size=size, sha256=digest)

    def verify(
        self,
        uri: str,
        size: int,
        sha256: str,
        path: str | os.PathLike[str] | None = None,
        checksum: str | None = None,
    ) -> None:
        p = self.path(uri)
        if not p.is_file() or p.stat().st_size != size:
            raise ArtifactsMissing(f"local artifact {p} missing or of the wrong size")

    def put_bytes(self, uri: str, data: bytes, content_type: str = "application/json") -> Uploaded:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        return Uploaded(uri=uri, key=target.name, size=len(data), sha256=digest)
