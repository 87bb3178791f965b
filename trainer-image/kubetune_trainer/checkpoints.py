"""Checkpoints in S3, so an evicted or retried pod resumes where the last one stopped.

Layout under the checkpoint prefix: checkpoint-<step>/... and, written last,
checkpoint-<step>/COMPLETE (JSON: step, files, bytes, uid). Only checkpoints with the marker count;
a pod killed mid-upload leaves an incomplete one that resume ignores and pruning removes.
Pruning keeps the newest `keep` complete checkpoints (saveTotalLimit), plus the best one when
the trainer tracks it.

A marker names the FineTuneJob uid that wrote it: resume refuses (StorageConflict) a checkpoint
that names another uid, or none, rather than load another object's weights "without training".
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from kubetune_api.v1alpha1 import StorageConflict

from .s3 import S3, join, split_s3_uri

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CKPT = re.compile(r"(?:^|/)checkpoint-(\d+)/(.+)$")


def steps_in_listing(keys: list[str]) -> tuple[set[int], set[int]]:
    """(all checkpoint steps, complete steps) from object keys relative to the prefix."""
    steps: set[int] = set()
    complete: set[int] = set()
    for k in keys:
        m = _CKPT.search(k)
        if not m:
            continue
        step = int(m.group(1))
        steps.add(step)
        if m.group(2) == MARKER:
            complete.add(step)
    return steps, complete


def to_delete(steps: set[int], complete: set[int], keep: int, best: int | None) -> list[int]:
    """Checkpoints to remove: complete ones beyond the newest `keep` (never `best`), and
    incomplete ones older than the newest complete one (dead uploads)."""
    newest = sorted(complete, reverse=True)
    kept = set(newest[:keep])
    if best is not None and best in complete:
        kept.add(best)
    out = [s for s in complete if s not in kept]
    if newest:
        out += [s for s in steps - complete if s < newest[0]]
    return sorted(out)


class CheckpointStore:
    def __init__(self, s3: S3, prefix: str, keep: int) -> None:
        self.s3 = s3
        self.prefix = prefix.rstrip("/") + "/"
        self.keep = keep

    def uri(self, step: int) -> str:
        return join(self.prefix, f"checkpoint-{step}")

    def _keys(self) -> list[str]:
        _, key_prefix = self.prefix.split("://", 1)[1].split("/", 1)
        return [o["Key"][len(key_prefix) :] for o in self.s3.list_objects(self.prefix)]

    def latest(self) -> int | None:
        _, complete = steps_in_listing(self._keys())
        if not complete:
            return None
        step = max(complete)
        self.check_marker(step)
        return step

    def check_marker(self, step: int) -> None:
        """StorageConflict when checkpoint `step`'s marker names another uid than this job's."""
        uid = self.s3.owner_uid
        if uid is None:
            return
        uri = join(self.uri(step), MARKER)
        try:
            marker = json.loads(self.s3.get_bytes(uri))
        except ValueError:
            marker = {}
        if marker.get("uid") != uid:
            raise StorageConflict(
                f"checkpoint {uri} names FineTuneJob uid {marker.get('uid')!r}, not this "
                f"job's {uid}: refusing to resume from another object's checkpoint"
            )

    def publish(self, local_dir: Path, step: int, best: int | None = None) -> None:
        t0 = time.monotonic()
        uploaded = self.s3.upload_dir(local_dir, self.uri(step))
        nbytes = sum(u.size for u in uploaded)
        marker = {
            "step": step,
            "files": len(uploaded),
            "bytes": nbytes,
            "uid": self.s3.owner_uid,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.s3.put_bytes(join(self.uri(step), MARKER), json.dumps(marker).encode())
        log.info(
            "checkpoint %d uploaded to %s (%d files, %.1f MiB, %.1fs)",
            step,
            self.uri(step),
            len(uploaded),
            nbytes / 2**20,
            time.monotonic() - t0,
        )
        self.prune(best)

    def prune(self, best: int | None = None) -> None:
        steps, complete = steps_in_listing(self._keys())
        for step in to_delete(steps, complete, self.keep, best):
            # Only this uid's checkpoints (StorageConflict before anything is deleted); then
            # the marker first: a half-deleted checkpoint must not look complete.
            self.s3.check_owned(self.uri(step))
            bucket, key = split_s3_uri(join(self.uri(step), MARKER))
            self.s3.client.delete_object(Bucket=bucket, Key=key)
            n = self.s3.delete_prefix(self.uri(step))
            log.info(
                "checkpoint %d removed from S3 (%d objects; saveTotalLimit %d)", step, n, self.keep
            )

    def download(self, step: int, dest: Path) -> Path:
        target = dest / f"checkpoint-{step}"
        self.s3.download_prefix(self.uri(step), target, skip={MARKER})
        return target
