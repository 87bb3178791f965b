"""status.py on an evaluated run: base and tuned numbers, and the Promoted condition."""

from __future__ import annotations

import json
from typing import Any

from kubetune_operator import status
from kubetune_operator.runs import Decision
from statusbuilders import GOOD, T0, cond, derive, ftj, job, pod


def _gated(promoted: Any, reason: str = "Promoted", **promotion: Any) -> dict[str, Any]:
    """A trainer result with evaluation numbers and the gate's verdict."""
    return {
        **GOOD,
        "evaluation": {
            "loss": {"base": 2.5, "tuned": 1.25},
            "perplexity": {"base": 12.2, "tuned": float("nan")},
            "junk": "x",
        },
        "promotion": {"promoted": promoted, "reason": reason, "metric": "loss", **promotion},
    }


def _finished(result: dict[str, Any]) -> status.Derived:
    prev = {"run": 1, "jobName": "j-run-1", "phase": "Running"}
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed",
                                              "message": json.dumps(result)})  # fmt: skip
    return derive(
        ftj(prev), Decision(current_run=1), job(cond=("Complete", ""), succeeded=1), [done]
    )


def test_a_promoted_run_shows_base_and_tuned_and_promoted_true() -> None:
    result = _gated(True, rule="beatPrevious", value=1.25, previous=1.5,
                    message="promoted: test loss 1.25 vs 1.5",
                    pointerUri="s3://b/o/ns/j/promoted/promoted.json")  # fmt: skip
    st = _finished(result).status
    assert st["phase"] == "Succeeded"
    # NaN cannot travel in JSON; what is not a number is left out
    assert st["evaluation"] == {"loss": {"base": 2.5, "tuned": 1.25}, "perplexity": {"base": 12.2}}
    assert st["evaluationSummary"] == "loss↓ 2.5 -> 1.25"
    assert st["promoted"] is True and st["promotion"]["previous"] == 1.5
    c = cond(st, "Promoted")
    assert (c["status"], c["reason"]) == ("True", "Promoted") and "1.25 vs 1.5" in c["message"]
    assert cond(st, "Ready")["status"] == "True"


def test_a_run_that_fails_the_gate_succeeds_with_promoted_false_and_the_numbers() -> None:
    result = _gated(False, "NotPromoted", rule="beatPrevious", value=1.25, previous=1.0,
                    message="not promoted: test loss 1.25 vs 1 of the promoted run")  # fmt: skip
    st = _finished(result).status
    assert st["phase"] == "Succeeded" and st["promoted"] is False
    assert cond(st, "Succeeded")["status"] == "True" and cond(st, "Ready")["status"] == "True"
    c = cond(st, "Promoted")
    assert (c["status"], c["reason"]) == ("False", "NotPromoted")
    assert "1.25 vs 1 of the promoted run" in c["message"]  # the numbers stay on False


def test_no_gate_no_promoted_condition_and_a_new_run_clears_it() -> None:
    st = _finished(GOOD).status
    assert "promoted" not in st and "evaluation" not in st
    assert all(c["type"] != "Promoted" for c in st["conditions"])
    gated = _finished(_gated(True, rule="threshold", message="promoted")).status
    f = ftj({**gated, "runGeneration": 1, "specHash": "hash1", "startTime": T0}, generation=2)
    out = derive(f, Decision(current_run=2, start=2), job(2), [])
    st2 = out.status
    assert not {"promoted", "promotion", "evaluation", "evaluationSummary"} & set(st2)
    assert all(c["type"] != "Promoted" for c in st2["conditions"])
    assert st2["history"][-1]["promoted"] is True


def test_a_promotion_that_does_not_parse_is_ignored() -> None:
    st = _finished(_gated("yes please")).status
    assert st["phase"] == "Succeeded" and "promoted" not in st
