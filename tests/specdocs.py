"""The minimal FineTuneJob spec document the trainer unit tests start from."""

from __future__ import annotations

from typing import Any


def spec_doc(**over: Any) -> dict[str, Any]:
    """A minimal valid spec (S3 model, one S3 data file, S3 output), with `over`'s top-level
    fields replacing or adding to it."""
    return {
        "model": {"s3Uri": "s3://bkt/m/"},
        "dataset": {"s3Uri": "s3://bkt/d.jsonl"},
        "output": {"uri": "s3://bkt/out"},
    } | over
