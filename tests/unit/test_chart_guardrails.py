"""The guardrails' admission policies as the chart renders them: a FineTuneSchedule's template
gets the very rules of a FineTuneJob (one named template, at another path), and the schedule's
watch-prefix rules agree with the operator's check (kubetune_operator.fingerprint) on every
case, evaluated with the CEL evaluator the API package uses. tests/integration/test_guardrails.py
applies them to the real API server."""

from __future__ import annotations

from typing import Any

import cel
import pytest
from kubetune_operator.fingerprint import normalise_uri, uri_allowed, watch_prefixes
from test_chart_render import find, render

WATCH = {"*": ["s3://data/{namespace}/"], "team-b": ["s3://bbb/x//", "s3://ccc"], "locked": []}
URIS = [
    "s3://data/team-a/train/",
    "s3://data/team-a",
    "s3://data/team-ab/x",
    "s3://data/team-a/../team-b/x",
    "s3://data/team-a/./x",
    "s3://data-b/team-a/x",
    "s3://bbb/x/y.jsonl",
    "s3://bbb/xy",
    "s3://ccc/anything",
    "s3://data/team-b/x",
    "s3://data/locked/x",
]
FIELDS = {
    "spec.trigger.datasetChange.s3Uri": ("trigger", "datasetChange", "s3Uri"),
    "spec.template.spec.dataset.s3Uri": ("template", "spec", "dataset", "s3Uri"),
    "spec.template.spec.dataset.validation.s3Uri": (
        "template", "spec", "dataset", "validation", "s3Uri"),
}  # fmt: skip


def policies(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return {o["metadata"]["name"]: o for o in find(render(values), "ValidatingAdmissionPolicy")}


def test_a_schedule_template_gets_the_job_rules_at_its_own_path() -> None:
    values = {"guardrails": {"allowedTolerationKeys": ["gpu"], "limits": {
        "*": {"gpus": 2, "activeDeadlineSeconds": 60}, "big": {"gpus": 8}}}}  # fmt: skip
    pol = policies(values)
    assert set(pol) == {"kt-kubetune-guardrails", "kt-kubetune-schedule-guardrails"}
    job = pol["kt-kubetune-guardrails"]["spec"]
    sched = pol["kt-kubetune-schedule-guardrails"]["spec"]
    assert job["matchConstraints"]["resourceRules"][0]["resources"] == ["finetunejobs"]
    assert sched["matchConstraints"]["resourceRules"][0]["resources"] == ["finetuneschedules"]
    moved = [
        {
            **v,
            "expression": v["expression"].replace("object.spec.", "object.spec.template.spec."),
            "message": v["message"].replace("spec.", "spec.template.spec.", 1),
        }
        for v in job["validations"]
    ]
    assert len(moved) == 8  # priority, 2 toleration, image, code, 3 limits
    assert sched["validations"][: len(moved)] == moved
    assert all(v["message"].startswith("spec.template.spec.") for v in moved)
    watch = sched["validations"][len(moved) :]
    assert sorted(v["message"].split(":")[0] for v in watch) == sorted(FIELDS)


def test_no_policy_when_admission_is_off() -> None:
    assert policies({"guardrails": {"admissionPolicy": False}}) == {}


def _ctx(**variables: Any) -> Any:
    ctx = cel.Context()
    for k, v in variables.items():
        ctx.add_variable(k, v)
    return ctx


@pytest.mark.parametrize("namespace", ["team-a", "team-b", "locked"])
def test_the_watch_rules_agree_with_the_operator(namespace: str) -> None:
    sched = policies({"schedules": {"watchPrefixes": WATCH}})["kt-kubetune-schedule-guardrails"]
    (var,) = sched["spec"]["variables"]
    # The evaluator has no strings extension: the {namespace} replace is done here, as the
    # API server does it (tests/integration/test_guardrails.py runs the whole expression).
    selected, _, tail = var["expression"].rpartition(".map(")
    assert tail == "p, p.replace('{namespace}', request.namespace))"
    got = [p.replace("{namespace}", namespace) for p in
           cel.evaluate(selected, _ctx(request={"namespace": namespace}))]  # fmt: skip
    assert got == [normalise_uri(p) for p in watch_prefixes(WATCH, namespace)]
    rules = {v["message"].split(":")[0]: v["expression"] for v in sched["spec"]["validations"]
             if v["message"].split(":")[0] in FIELDS}  # fmt: skip
    for field, where in FIELDS.items():
        for uri in URIS:
            spec: dict[str, Any] = {"trigger": {"datasetChange": {}},
                                    "template": {"spec": {"dataset": {}}}}  # fmt: skip
            if field != "spec.trigger.datasetChange.s3Uri":
                spec["template"]["spec"]["dataset"]["validation"] = {}
            node = spec
            for key in where[:-1]:
                node = node.setdefault(key, {})
            node[where[-1]] = uri
            ok = cel.evaluate(rules[field], _ctx(object={"spec": spec},
                              variables={"watchPrefixes": got}))  # fmt: skip
            assert ok is uri_allowed(uri, watch_prefixes(WATCH, namespace)), (field, uri)
    # Without a datasetChange trigger nothing is watched, so nothing is refused.
    bare = {"template": {"spec": {"dataset": {"s3Uri": "s3://elsewhere/x"}}}}
    for expr in rules.values():
        assert cel.evaluate(expr, _ctx(object={"spec": bare}, variables={"watchPrefixes": []}))
