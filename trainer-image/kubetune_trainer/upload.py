"""Stage `upload`: every artifact to <run_prefix>, checksummed and verified, then
manifest.json last (a reader that sees the manifest sees a complete run).

Before anything is deleted or written, every object already under the prefix must name this
FineTuneJob's uid (s3.check_owned): an earlier attempt of this job is cleaned up, anything else
is a StorageConflict and stays untouched."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import ArtifactsMissing, TrainerConfig, method_record

from . import manifest as manifest_mod
from .s3 import S3, join, split_s3_uri

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def expected(cfg: TrainerConfig, merged_possible: bool) -> list[tuple[str, str]]:
    """(relative path or glob, what) that must exist before uploading."""
    spec = cfg.spec
    adapter = method_record(spec.method.type).adapter
    out: list[tuple[str, str]] = [("metrics.json", "metrics")]
    if adapter and spec.output.adapter:
        out += [
            ("adapter/adapter_config.json", "adapter config"),
            ("adapter/adapter_model.safetensors", "adapter weights"),
        ]
    if not adapter or (spec.output.merged_model and merged_possible):
        out += [
            ("merged/config.json", "merged model config"),
            ("merged/*.safetensors", "merged weights"),
        ]
    return out


def check_expected(root: Path, items: list[tuple[str, str]]) -> None:
    missing = [f"{what} ({rel})" for rel, what in items if not list(root.glob(rel))]
    if missing:
        raise ArtifactsMissing(f"artifacts missing before upload: {', '.join(missing)}")


def upload(
    s3: S3,
    root: Path,
    cfg: TrainerConfig,
    *,
    merged_possible: bool,
    base_model: dict[str, Any],
    datasets: dict[str, Any],
    metrics: dict[str, Any],
    speed: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    promotion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ArtifactsMissing(f"no artifacts were produced (nothing under {root})")
    check_expected(root, expected(cfg, merged_possible))
    t0 = time.monotonic()
    # A retried pod may find an earlier attempt's artifacts: once they are known to be this
    # job's, the manifest goes first (no reader may take the run for complete meanwhile), then
    # everything but the checkpoints.
    s3.check_owned(cfg.run_prefix, keep=("checkpoints/",))
    bucket, key = split_s3_uri(join(cfg.run_prefix, MANIFEST))
    s3.client.delete_object(Bucket=bucket, Key=key)
    stale = s3.delete_prefix(cfg.run_prefix, keep=("checkpoints/",))
    if stale:
        log.info("removed %d objects of an earlier attempt under %s", stale, cfg.run_prefix)
    # Each file's sha256 is computed while it streams to S3 (no separate pass over the files).
    uploaded = s3.upload_dir(root, cfg.run_prefix)
    if len(uploaded) != len(files):
        raise ArtifactsMissing(f"uploaded {len(uploaded)} of {len(files)} artifact files")
    doc = manifest_mod.build(
        run_prefix=cfg.run_prefix,
        job={
            "namespace": cfg.job.namespace,
            "name": cfg.job.name,
            "uid": cfg.job.uid,
            "run": cfg.job.run,
        },
        files=[{"path": u.key, "size": u.size, "sha256": u.sha256} for u in uploaded],
        config=cfg.model_dump(by_alias=True, mode="json", exclude_none=True),
        base_model=base_model,
        datasets=datasets,
        metrics=metrics,
        speed=speed or {},
        versions=manifest_mod.library_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        evaluation=evaluation,
        promotion=promotion,
    )
    data = json.dumps(doc, indent=2, sort_keys=False).encode()
    m = s3.put_bytes(join(cfg.run_prefix, MANIFEST), data)
    total = sum(u.size for u in uploaded)
    log.info(
        "uploaded %d files (%.1f MiB) to %s in %.1fs; manifest sha256 %s",
        len(uploaded),
        total / 2**20,
        cfg.run_prefix,
        time.monotonic() - t0,
        m.sha256,
    )
    keys = {u.key.split("/", 1)[0] for u in uploaded}
    return {
        "adapterUri": join(cfg.run_prefix, "adapter") + "/" if "adapter" in keys else None,
        "mergedModelUri": join(cfg.run_prefix, "merged") + "/" if "merged" in keys else None,
        "metricsUri": join(cfg.run_prefix, "metrics.json"),
        "manifestUri": m.uri,
        "manifestSha256": m.sha256,
    }
