"""The model cache: a base model in S3 is downloaded once and reused by every later attempt.

Where: `$KUBETUNE_MODEL_CACHE` (the operator sets it when spec.model.cacheClaimName names a
PersistentVolumeClaim: shared by every pod and run that mounts it) or `<workDir>/model-cache`
(the pod's scratch volume: a restart of the container reuses it, a new pod does not).

Key: the model's URI and its revision, the digest of every object's name, size and ETag (what
a LIST returns; no object is read to compute it). A changed or added object is a new revision,
hence a new entry. Entry: `<root>/s3/<key>/`, the model's files plus `.kubetune-cache.json`
(source, revision, every file's size and sha256, computed while it was downloaded), written
last and renamed into place with the directory: a pod killed mid-download leaves only a
`.tmp-*` directory, never an entry that looks complete.

Reuse verifies every file's size and sha256 against the record; an entry that fails is removed
and the model downloaded again. A lock file serializes pods and ranks filling the same entry
(the rename keeps it correct where a filesystem has no working flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import MODEL_CACHE_ENV

from .s3 import sha256_file

log = logging.getLogger(__name__)

RECORD = ".kubetune-cache.json"


def root(work_dir: Path) -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV) or work_dir / "model-cache")


def entry_key(source: str, revision: str) -> str:
    return hashlib.sha256(f"{source}\n{revision}".encode()).hexdigest()[:32]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def problem(entry: Path, source: str, revision: str) -> str | None:
    """Why `entry` cannot be used (None: every file there, with its recorded size and sha256)."""
    try:
        record = json.loads((entry / RECORD).read_text())
    except (OSError, ValueError) as e:
        return f"no readable record ({type(e).__name__})"
    if record.get("source") != source or record.get("revision") != revision:
        return "the record names another model or revision"
    files: dict[str, Any] = record.get("files") or {}
    if not files:
        return "the record lists no files"

    def check(item: tuple[str, Any]) -> str | None:
        rel, want = item
        p = entry / rel
        if not p.is_file() or p.stat().st_size != want["size"]:
            return f"{rel}: missing or of another size"
        if sha256_file(p) != want["sha256"]:
            return f"{rel}: sha256 differs from the record"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
        for bad in pool.map(check, sorted(files.items())):
            if bad:
                return bad
    return None


def fetch(
    cache_root: Path,
    source: str,
    revision: str,
    download: Callable[[Path], list[dict[str, Any]]],
) -> tuple[Path, bool]:
    """The cache entry of (source, revision), downloading it with `download(dir)` (which
    returns [{"rel", "size", "sha256" or None}]) when it is missing or fails verification.
    Returns (entry, hit)."""
    key = entry_key(source, revision)
    entry = cache_root / "s3" / key
    with locked(cache_root / "s3" / f"{key}.lock"):
        if entry.exists():
            why = problem(entry, source, revision)
            if why is None:
                return entry, True
            log.warning(
                "model cache entry %s for %s unusable (%s): downloading again", entry, source, why
            )
            shutil.rmtree(entry, ignore_errors=True)
        tmp = entry.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            files = download(tmp)
            record = {
                "source": source,
                "revision": revision,
                "files": {
                    f["rel"]: {
                        "size": f["size"],
                        "sha256": f.get("sha256") or sha256_file(tmp / f["rel"]),
                    }
                    for f in files
                },
            }
            (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry, False
