"""spec.dryRun in the trainer pod: run the estimate (kubetune_api.estimate) instead of the
pipeline, and return the success result carrying it. No torch is imported on this path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_api.estimate import estimate_job
from kubetune_api.v1alpha1 import ConfigError, DatasetError, ModelError

from . import result as result_mod
from .s3 import S3


def run_dry(cfg: Any) -> dict[str, Any]:
    """spec.dryRun in the trainer pod: estimate, and return the success result carrying it (the
    operator copies `estimate` into status.estimate; the termination message holds 4 KiB, so
    at most 5 bad rows travel, with the total count)."""

    out = cfg.spec.output
    s3 = S3(endpoint=out.endpoint, region=out.region, retry_seconds=cfg.s3_retry_seconds)
    try:
        e = estimate_job(cfg.spec, Path(cfg.work_dir) / "estimate", s3=s3.client)
    except FileNotFoundError as err:
        which = ModelError if "spec.model" in str(err) else DatasetError
        raise which(str(err)) from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    status = e.to_status()
    status["badRows"] = [b | {"problem": str(b["problem"])[:120]} for b in status["badRows"][:5]]
    status["notes"] = [n[:200] for n in status["notes"][:3]]
    mem = status["gpuMemoryGiB"]["peak"]
    res = result_mod.build(
        outcome="Succeeded",
        reason="Completed",
        message=(
            f"dry run: {status['rows']} rows ({status['badRowCount']} bad in the sample), "
            f"{status['totalSteps']} steps, peak {mem:.2f} GiB per GPU, "
            f"~{status['gpuHours']:.2f} GPU-hours; see status.estimate"
        ),
        retryable=False,
    )
    res["estimate"] = status
    return res
