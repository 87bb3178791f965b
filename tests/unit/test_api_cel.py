"""Each cross-field rule is written once, as the CRD's CEL rule, and the models evaluate that
same text in Python (kubetune_api.v1alpha1._cel). These tests check the Python side sees every
rule the CRD has, that each rule refuses some manifest of test_api_models.BAD (which
test_api_crd also sends to the real API server), and how messages name the field."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from kubetune_api.build import crd as crdbuild
from kubetune_api.v1alpha1 import (
    FineTuneJobSpec,
    Hyperparameters,
    MethodSpec,
    PVCPath,
    ResourcesSpec,
    Spec,
    Toleration,
)
from kubetune_api.v1alpha1._cel import failures, rules_of
from pydantic import ValidationError

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("api_cases", HERE / "test_api_models.py")
assert _spec is not None and _spec.loader is not None
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

# Rules no manifest can break in Python or on the API server: saveSteps has a default.
UNREACHABLE = {"saveStrategy steps needs saveSteps"}
# Map-key rules that a pydantic field validator (with its own message) still checks first in
# Python; their BAD cases match a fragment both messages share. (Not yet folded into CEL.)
KEY_VALIDATED = {
    "labels keys must be label keys outside kubetune.io/, batch.kubernetes.io/, "
    "kueue.x-k8s.io/ and app.kubernetes.io/ (the operator and Kueue set those)",
    "annotations keys must be label keys outside kubetune.io/, batch.kubernetes.io/, "
    "kueue.x-k8s.io/ and app.kubernetes.io/ (the operator and Kueue set those)",
    "nodeSelector keys must be label keys ([prefix/]name, name at most 63 characters of "
    "alphanumerics, -, _ and .)",
}


def _models() -> set[type[Spec]]:
    out: set[type[Spec]] = set()
    todo = [Spec]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return out


def _crd_model_rules() -> set[tuple[str, str]]:
    """(rule, message) of every object-level CEL rule in the generated CRD's spec; the per-field
    type rules (`type(self) == int`) belong to the wire types, not to a model."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                for v in node.get("x-kubernetes-validations", []):
                    found.add((v["rule"], v["message"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    schema = crdbuild.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    walk(schema["properties"]["spec"])
    return found


# FineTuneSchedule's own rules have their cases in test_schedule_api.py (each is sent to the
# real API server by tests/integration/test_schedule.py).
EVALUATED = {
    (r.text, r.message): m
    for m in _models()
    if not m.__module__.endswith(".schedule")
    for r in rules_of(m)[0]
}


def test_every_crd_rule_is_evaluated_in_python() -> None:
    crd_rules = _crd_model_rules()
    transition = {r for r in crd_rules if "oldSelf" in r[0]}
    assert transition, "the immutability rules should be in the CRD"
    missing = crd_rules - transition - set(EVALUATED)
    assert not missing, f"CRD rules no model evaluates: {missing}"
    assert len(EVALUATED) >= 30


@functools.cache
def _bad_errors() -> tuple[str, ...]:
    return tuple(cases.python_error(cases.apply_ops(b[1])) or "" for b in cases.BAD)


@pytest.mark.parametrize("message", sorted({m for _, m in EVALUATED} - UNREACHABLE - KEY_VALIDATED))
def test_each_rule_refuses_a_bad_case(message: str) -> None:
    assert any(message in e for e in _bad_errors()), (
        f"no BAD case in test_api_models trips {message!r}"
    )


def test_the_unreachable_rule_is_unreachable() -> None:
    assert Hyperparameters.model_validate({"saveStrategy": "steps", "saveSteps": None}).save_steps


def test_messages_start_at_the_field_path() -> None:
    with pytest.raises(ValidationError) as e:
        MethodSpec.model_validate({"type": "ia3", "lora": {}, "promptTuning": {}})
    msg = e.value.errors()[0]["msg"]
    # every broken rule is reported, each naming its field
    assert "spec.method.lora: lora settings apply only to types lora, qlora, dora" in msg
    assert "spec.method.promptTuning: promptTuning applies only to type prompt-tuning" in msg


def test_a_list_item_and_a_shared_model_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"spec\.resources\.tolerations\.value: value must"):
        ResourcesSpec.model_validate({"tolerations": [{"operator": "Exists", "value": "x"}]})
    with pytest.raises(ValidationError) as e:
        PVCPath.model_validate({"claimName": "c", "path": "/a/../b"})
    assert "path: path must not contain '..'" in e.value.errors()[0]["msg"]


def test_rules_see_defaults_and_absent_fields_as_the_api_server_does() -> None:
    # key empty and operator defaulted to Equal: refused; operator Exists: accepted
    with pytest.raises(ValidationError, match="operator must be Exists"):
        Toleration.model_validate({})
    assert Toleration.model_validate({"operator": "Exists"}).operator == "Exists"


def test_spec_rules_read_only_the_fields_they_name() -> None:
    """The spec's rules read dataset.format, dataset.validation and dataset.test, not the inline
    rows, which may be 1000 free-form objects."""
    _, include = rules_of(FineTuneJobSpec)
    assert include is not None
    assert include["dataset"] == {"format": True, "validation": True, "test": True}
    rows = [{"text": f"row {i}", "x": {"deep": [1, 2, {"a": None}]}} for i in range(1000)]
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hubId": "org/m"},
            "dataset": {"inline": rows},
            "output": {"uri": "s3://bucket/out"},
        }
    )
    assert failures(spec, "spec") == []
