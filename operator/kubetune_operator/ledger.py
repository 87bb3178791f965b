"""The operator's own record of a FineTuneJob's status, where only the operator writes.

The trainer reports progress through `finetunejobs/status` (its Role allows `patch` on that
subresource for its own job), and RBAC cannot narrow that to `status.progress`. So anything in
the status, apart from `progress`, may have been written by code running in the trainer pod:
remote model code, a custom image, a compromised dependency. The operator therefore decides
and derives from its own copy of what it last wrote, kept in the annotation below (metadata,
which the trainer's identity cannot patch), and every status write diffs against the live
status, so a forged `run`, `phase`, `specHash` or `artifacts` is reverted on the next pass and
never acted on. docs/security.md describes the threat model.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .observe import json_object

ANN_RECORD = "kubetune.io/status-record"


def recorded(ftj: dict[str, Any]) -> dict[str, Any] | None:
    """The status the operator last wrote, or None when it has written none yet."""
    return json_object((ftj["metadata"].get("annotations") or {}).get(ANN_RECORD))


def trusted_view(ftj: dict[str, Any]) -> dict[str, Any]:
    """`ftj` with its status replaced by the operator's record plus the live `progress` (the
    trainer's own field). Before the first record (a new object, or one written by an operator
    version without records) the live status is all there is."""
    record = recorded(ftj)
    if record is None:
        return ftj
    view = dict(ftj)
    status = copy.deepcopy(record)
    progress = (ftj.get("status") or {}).get("progress")
    if progress is not None:
        status["progress"] = progress
    else:
        status.pop("progress", None)
    view["status"] = status
    return view


def record_patch(ftj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata merge patch that records `status` (without `progress`); None if recorded."""
    wanted = {k: v for k, v in status.items() if k != "progress"}
    if recorded(ftj) == wanted:
        return None
    text = json.dumps(wanted, sort_keys=True, separators=(",", ":"))
    return {"metadata": {"annotations": {ANN_RECORD: text}}}
