"""manifest.json: what a run produced and from what (pure)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import platform
from typing import Any

LIBRARIES = (
    "kubetune",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "bitsandbytes",
    "boto3",
)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def build(
    *,
    run_prefix: str,
    job: dict[str, Any],
    files: list[dict[str, Any]],
    config: dict[str, Any],
    base_model: dict[str, Any],
    datasets: dict[str, Any],
    metrics: dict[str, Any],
    speed: dict[str, Any],
    versions: dict[str, str],
    created: str,
    evaluation: dict[str, Any] | None = None,
    promotion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`evaluation`: dataset.test's metrics, {metric: {base, tuned}}; `promotion`: the gate's
    decision (the pointer is written after this manifest, and only when it says promoted)."""
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "RunManifest",
        "runPrefix": run_prefix,
        "job": job,
        "created": created,
        "files": sorted(files, key=lambda f: f["path"]),
        "totalBytes": sum(int(f["size"]) for f in files),
        "baseModel": base_model,
        "datasets": datasets,
        "metrics": metrics,
        "speed": speed,
        "versions": versions,
        "config": config,
    }
    if evaluation:
        doc["evaluation"] = evaluation
    if promotion:
        doc["promotion"] = promotion
    return doc
