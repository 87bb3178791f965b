"""The termination message: one JSON object (at most 4 KiB) the operator reads from the pod.

Format (docs/design.md): {"outcome", "reason", "message", "retryable", "artifacts", "metrics"}.
The kubelet truncates the file at 4096 bytes, which would leave broken JSON, so `encode` shrinks
the content itself: first the message, then the metrics, and never the outcome and reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from kubetune_api.v1alpha1 import ARTIFACT_KEYS

log = logging.getLogger(__name__)

LIMIT_BYTES = 4096
DEFAULT_PATH = "/dev/termination-log"


def build(
    *,
    outcome: str,
    reason: str,
    message: str,
    retryable: bool,
    artifacts: dict[str, str | None] | None = None,
    metrics: dict[str, Any] | None = None,
    evaluation: dict[str, dict[str, float]] | None = None,
    promotion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result object; artifacts without a value and metrics that are not finite numbers are
    left out (JSON has no NaN). `evaluation` ({metric: {base, tuned}} on dataset.test) and
    `promotion` (the gate's decision) only when the run has them."""
    arts = {k: v for k, v in (artifacts or {}).items() if k in ARTIFACT_KEYS and v}
    nums: dict[str, float | int] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        nums[k] = v
    out: dict[str, Any] = {
        "outcome": outcome,
        "reason": reason,
        "message": message,
        "retryable": retryable,
        "artifacts": arts,
        "metrics": nums,
    }
    if evaluation:
        out["evaluation"] = {
            name: {k: v for k, v in pair.items() if isinstance(v, int | float) and math.isfinite(v)}
            for name, pair in evaluation.items()
        }
    if promotion:
        out["promotion"] = {
            k: v
            for k, v in promotion.items()
            if not (isinstance(v, float) and not math.isfinite(v))
        }
    return out


def encode(result: dict[str, Any], limit: int = LIMIT_BYTES) -> str:
    """Compact JSON of `result`, shrunk to fit `limit` bytes (UTF-8)."""
    out = dict(result)

    def size(obj: dict[str, Any]) -> int:
        return len(json.dumps(obj, separators=(",", ":")).encode())

    if size(out) > limit:
        # Drop metrics beyond the most useful ones, then the message tail.
        metrics = dict(out.get("metrics") or {})
        keep = [k for k in metrics if k.startswith("eval_") or k in ("train_loss", "perplexity")]
        out["metrics"] = {k: metrics[k] for k in keep}
        while size(out) > limit and out["metrics"]:
            out["metrics"].pop(next(reversed(out["metrics"])))
    if size(out) > limit:
        msg = str(out.get("message", ""))
        over = size(out) - limit
        # Cut by characters until the encoded size fits (multi-byte characters may need more).
        cut = max(0, len(msg) - over - 16)
        while cut > 0:
            out["message"] = msg[:cut] + " …[truncated]"
            if size(out) <= limit:
                break
            cut -= max(1, (size(out) - limit))
        else:
            out["message"] = "[truncated]"
    if size(out) > limit:
        out["artifacts"] = {}
    return json.dumps(out, separators=(",", ":"))


def termination_log_path() -> str:
    return os.environ.get("KUBETUNE_TERMINATION_LOG", DEFAULT_PATH)


def write(result: dict[str, Any], path: str | None = None) -> None:
    """Write the termination message; failures are logged, never raised (the exit code still
    tells the story)."""
    target = path or termination_log_path()
    text = encode(result)
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        log.warning("could not write the termination message to %s: %s", target, e)
