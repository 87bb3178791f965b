"""The promotion gate (spec.output.promote): pure decision, pointer document, and the one I/O
edge that reads the previous pointer and writes the new one.

The pointer is one object, <output.uri>/<namespace>/<pointer>/promoted/promoted.json, written
with a single PUT after the run's artifacts and manifest.json are complete and verified, so a
reader sees either the previous promoted run or this one, never a half-written run. It names the
run prefix, the artifact URIs, the manifest's sha256 and the test metrics; `beatPrevious` reads
the metric back from it. A retried attempt of the run that wrote the pointer compares against
what that pointer replaced (`replaced`), not against itself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from kubetune_api.v1alpha1 import (
    Direction,
    PromoteRule,
    PromoteSpec,
    Reason,
    TrainerConfig,
    direction_of,
)

log = logging.getLogger(__name__)

POINTER_KIND = "PromotedModel"
POINTER_FILE = "promoted.json"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str  # Reason.PROMOTED, NOT_PROMOTED or PROMOTION_METRIC_MISSING
    metric: str
    rule: str
    direction: str
    message: str
    value: float | None = None
    previous: float | None = None
    previous_run: str | None = None
    threshold: float | None = None
    pointer_uri: str | None = None

    def as_status(self) -> dict[str, Any]:
        """status.promotion's wire form (camelCase, unset fields left out)."""
        camel = {"previous_run": "previousRun", "pointer_uri": "pointerUri"}
        return {camel.get(k, k): v for k, v in asdict(self).items() if v is not None}


def pointer_uri(output_uri: str, namespace: str, pointer: str) -> str:
    return f"{output_uri.rstrip('/')}/{namespace}/{pointer}/promoted/{POINTER_FILE}"


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def _better(value: float, other: float, direction: Direction, strict: bool) -> bool:
    if direction == Direction.MAXIMIZE:
        return value > other if strict else value >= other
    return value < other if strict else value <= other


def previous_value(
    pointer: dict[str, Any] | None, metric: str, run_prefix: str
) -> tuple[float | None, str | None, bool]:
    """(the previous promoted value of `metric`, its run prefix, whether a pointer was there
    but unusable) from the current pointer document. A pointer this very run wrote (a retried
    attempt) stands for what it replaced."""
    if pointer is None:
        return None, None, False
    if pointer.get("kind") != POINTER_KIND:
        return None, None, True
    if pointer.get("runPrefix") == run_prefix:
        replaced = pointer.get("replaced") or {}
        value: Any = replaced.get("value")
        return (float(value) if _finite(value) else None), replaced.get("runPrefix"), False
    value = (pointer.get("metrics") or {}).get(metric)
    if not _finite(value):
        return None, pointer.get("runPrefix"), True
    return float(value), pointer.get("runPrefix"), False


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _reason(promoted: bool) -> str:
    return (Reason.PROMOTED if promoted else Reason.NOT_PROMOTED).value


def _verdict(promoted: bool) -> str:
    """The first word(s) of the gate's message."""
    return "promoted" if promoted else "not promoted"


def decide(
    promote: PromoteSpec,
    value: float | None,
    previous: float | None = None,
    previous_run: str | None = None,
    previous_unusable: bool = False,
    uri: str | None = None,
) -> Decision:
    """The gate's decision for a run whose test `metric` is `value` (pure)."""
    metric, rule = str(promote.metric), PromoteRule(promote.rule)
    direction = direction_of(metric, promote.direction)
    common: dict[str, Any] = {
        "metric": metric,
        "rule": rule.value,
        "direction": direction.value,
        "value": value if _finite(value) else None,
        "pointer_uri": uri,
    }
    if not _finite(value):
        return Decision(
            False,
            Reason.PROMOTION_METRIC_MISSING.value,
            message=f"not promoted: test {metric} could not be computed (got {value})",
            **common,
        )
    assert value is not None
    if rule == PromoteRule.THRESHOLD:
        threshold = float(promote.threshold) if promote.threshold is not None else math.nan
        ok = _better(value, threshold, direction, strict=False)
        op = ">=" if direction == Direction.MAXIMIZE else "<="
        return Decision(
            ok,
            _reason(ok),
            message=f"{_verdict(ok)}: test {metric} {_fmt(value)}, threshold {op} {_fmt(threshold)}",
            threshold=threshold,
            **common,
        )
    if previous_unusable:
        return Decision(
            False,
            Reason.NOT_PROMOTED.value,
            message=f"not promoted: the promoted pointer {uri} has no {metric} to compare "
            f"with; delete it to promote the next run that passes",
            previous_run=previous_run,
            **common,
        )
    if previous is None:
        return Decision(
            True,
            Reason.PROMOTED.value,
            message=f"promoted: test {metric} {_fmt(value)}, no promoted run before",
            previous_run=previous_run,
            **common,
        )
    ok = _better(value, previous, direction, strict=True)
    word = "higher" if direction == Direction.MAXIMIZE else "lower"
    return Decision(
        ok,
        _reason(ok),
        message=f"{_verdict(ok)}: test {metric} {_fmt(value)} vs {_fmt(previous)} of the promoted "
        f"run ({word} is better, must beat it)",
        previous=previous,
        previous_run=previous_run,
        **common,
    )


def pointer_doc(
    cfg: TrainerConfig,
    decision: Decision,
    artifacts: dict[str, Any],
    test_metrics: dict[str, float],
    created: str,
) -> dict[str, Any]:
    """The pointer object a passing run writes (pure)."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": POINTER_KIND,
        "job": {
            "namespace": cfg.job.namespace,
            "name": cfg.job.name,
            "uid": cfg.job.uid,
            "run": cfg.job.run,
        },
        "runPrefix": cfg.run_prefix,
        "artifacts": {k: v for k, v in artifacts.items() if v and k != "checkpointUri"},
        "manifestSha256": artifacts.get("manifestSha256"),
        "metric": decision.metric,
        "metrics": test_metrics,
        "replaced": {"runPrefix": decision.previous_run, "value": decision.previous},
        "promotedAt": created,
    }


# ------------------------------------------------------------------------------------ I/O edge


def read_pointer(s3: Any, uri: str) -> dict[str, Any] | None:
    """The current pointer document; None when there is none. An object that is not JSON is
    returned as {} (unusable: the gate then refuses rather than promote over it)."""
    if s3.head(uri) is None:
        return None
    try:
        doc = json.loads(s3.get_bytes(uri))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def gate(s3: Any, cfg: TrainerConfig, test_metrics: dict[str, float]) -> Decision | None:
    """Read the previous pointer and decide (no write). None without output.promote."""
    promote = cfg.spec.output.promote
    if promote is None:
        return None
    uri = pointer_uri(cfg.spec.output.uri, cfg.job.namespace, promote.pointer or cfg.job.name)
    metric = str(promote.metric)
    previous, previous_run, unusable = None, None, False
    if PromoteRule(promote.rule) == PromoteRule.BEAT_PREVIOUS:
        previous, previous_run, unusable = previous_value(
            read_pointer(s3, uri), metric, cfg.run_prefix
        )
    decision = decide(promote, test_metrics.get(metric), previous, previous_run, unusable, uri)
    log.info("promotion gate: %s", decision.message)
    return decision


def write_pointer(
    s3: Any,
    cfg: TrainerConfig,
    decision: Decision,
    artifacts: dict[str, Any],
    test_metrics: dict[str, float],
) -> str:
    """One PUT of the pointer, after the manifest: the pointer moves to this run. Returns the
    pointer object's sha256."""
    assert decision.promoted and decision.pointer_uri
    doc = pointer_doc(
        cfg,
        decision,
        artifacts,
        test_metrics,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    put = s3.put_bytes(decision.pointer_uri, json.dumps(doc, indent=2).encode())
    log.info("promoted pointer %s now names %s", decision.pointer_uri, cfg.run_prefix)
    return str(put.sha256)
