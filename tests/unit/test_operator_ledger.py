"""The pure parts of ownership and the operator's status record (ledger.py, runs.controlled_by):
what the operator trusts when the trainer may have written the status."""

from __future__ import annotations

import json
from typing import Any

from kubetune_operator import ledger, runs

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def _ftj(
    status: dict[str, Any] | None = None, record: dict[str, Any] | None = None
) -> dict[str, Any]:
    ann = {ledger.ANN_RECORD: json.dumps(record)} if record is not None else {}
    obj: dict[str, Any] = {"metadata": {"name": "j", "uid": UID, "annotations": ann}}
    if status is not None:
        obj["status"] = status
    return obj


def _child(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "j-trainer", "ownerReferences": list(refs)}}


def test_only_a_controller_reference_with_our_uid_makes_a_child_ours() -> None:
    ours = {"kind": "FineTuneJob", "name": "j", "uid": UID, "controller": True}
    assert runs.controlled_by(_child(ours), UID)
    # The same name with another uid (a namesake, or a forged reference) is not ours.
    assert not runs.controlled_by(_child({**ours, "uid": "other"}), UID)
    # An owner reference without controller: true (anyone may add one) is not ours.
    assert not runs.controlled_by(_child({**ours, "controller": False}), UID)
    assert not runs.controlled_by(_child({k: v for k, v in ours.items() if k != "controller"}), UID)
    # No references at all: a pre-existing object with a colliding name.
    assert not runs.controlled_by({"metadata": {"name": "j-trainer"}}, UID)


def test_a_forged_status_is_replaced_by_the_record_except_progress() -> None:
    record = {"run": 1, "phase": "Running", "specHash": "abc"}
    forged = {
        "run": 2,
        "phase": "Succeeded",
        "specHash": "abc",
        "artifacts": {"adapter": "s3://attacker/x"},
        "progress": {"step": 7},
    }
    view = ledger.trusted_view(_ftj(forged, record))
    assert view["status"] == {**record, "progress": {"step": 7}}
    # The live object is not mutated (patches still diff against it).
    assert _ftj(forged, record)["status"]["phase"] == "Succeeded"


def test_a_forged_progress_in_the_record_is_dropped_when_the_live_one_is_absent() -> None:
    view = ledger.trusted_view(_ftj({"run": 9}, {"run": 1, "progress": {"step": 1}}))
    assert view["status"] == {"run": 1}


def test_without_a_record_the_live_status_is_all_there_is() -> None:
    obj = _ftj({"run": 1, "phase": "Running"})
    assert ledger.trusted_view(obj) is obj
    # A record that is not a JSON object (someone edited it badly) counts as none.
    bad = _ftj({"run": 1})
    bad["metadata"]["annotations"][ledger.ANN_RECORD] = "not json"
    assert ledger.recorded(bad) is None
    bad["metadata"]["annotations"][ledger.ANN_RECORD] = "[1, 2]"
    assert ledger.recorded(bad) is None


def test_the_record_patch_excludes_progress_and_is_none_when_unchanged() -> None:
    status = {"run": 1, "phase": "Running", "progress": {"step": 3}}
    patch = ledger.record_patch(_ftj(), status)
    assert patch is not None
    text = patch["metadata"]["annotations"][ledger.ANN_RECORD]
    assert json.loads(text) == {"run": 1, "phase": "Running"}
    # Only metadata: the patch never goes to the status subresource the trainer can write.
    assert set(patch) == {"metadata"}
    assert ledger.record_patch(_ftj(record={"run": 1, "phase": "Running"}), status) is None
