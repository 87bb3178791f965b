"""The FineTuneSchedule API: each of its CEL rules refuses a bad case naming the field, its
template is a whole FineTuneJobSpec (its rules apply too), and the CRD is generated beside the
FineTuneJob's (the same cases go to the real API server in tests/integration/test_schedule.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_api.build import crd as crdbuild
from kubetune_api.v1alpha1 import FineTuneSchedule, FineTuneScheduleSpec
from kubetune_api.v1alpha1._cel import rules_of
from kubetune_api.v1alpha1.schedule import FineTuneJobTemplate
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "a"}},
    "spec": {
        "model": {"hubId": "org/model"},
        "dataset": {"s3Uri": "s3://data/train/"},
        "output": {"uri": "s3://bucket/out"},
    },
}


def schedule(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSchedule",
        "metadata": {"name": "nightly"},
        "spec": {"template": copy.deepcopy(TEMPLATE), **spec},
    }


# (what is wrong, spec overrides, a fragment of the error that names the field)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no trigger at all", {}, "spec: set spec.schedule (a cron expression)"),
    ("a cron of 3 fields", {"schedule": "* * *"}, "schedule"),
    ("a cron with a shell in it", {"schedule": "* * * * *; rm -rf /"}, "schedule"),
    (
        "timeZone without a cron",
        {"timeZone": "Europe/Berlin", "trigger": {"datasetChange": {}}},
        "spec.timeZone: timeZone applies only with a cron schedule",
    ),
    (
        "datasetChange with inline data and nothing to watch",
        {
            "trigger": {"datasetChange": {}},
            "template": {"spec": {**TEMPLATE["spec"], "dataset": {"inline": [{"text": "a"}]}}},
        },
        "spec.trigger.datasetChange: trigger.datasetChange watches S3",
    ),
    ("an interval under 2 s", {"trigger": {"datasetChange": {"intervalSeconds": 1}}}, "interval"),
    ("a history limit over 100", {"schedule": "@daily", "successfulJobsHistoryLimit": 101}, ""),
    ("an unknown policy", {"schedule": "@daily", "concurrencyPolicy": "Sometimes"}, ""),
    (
        "a template spec that is no valid FineTuneJob",
        {
            "schedule": "@daily",
            "template": {"spec": {**TEMPLATE["spec"], "method": {"type": "ia3", "lora": {}}}},
        },
        "spec.method.lora: lora settings apply only to types",
    ),
]


@pytest.mark.parametrize(("why", "spec", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_field(why: str, spec: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        FineTuneSchedule.model_validate(schedule(**spec))
    assert fragment in str(e.value)


def test_each_schedule_rule_has_a_bad_case() -> None:
    errors = []
    for _, spec, _ in BAD:
        try:
            FineTuneSchedule.model_validate(schedule(**spec))
        except ValidationError as e:
            errors.append(str(e))
    messages = {r.message for r in rules_of(FineTuneScheduleSpec)[0]}
    assert len(messages) == 3
    for message in messages:
        assert any(message in e for e in errors), message


def test_good_schedules_and_their_defaults() -> None:
    s = FineTuneSchedule.model_validate(schedule(schedule="0 3 * * 1", timeZone="Europe/Berlin"))
    assert s.spec.concurrency_policy == "Forbid"
    assert (s.spec.successful_jobs_history_limit, s.spec.failed_jobs_history_limit) == (3, 1)
    assert s.spec.suspend is False and s.spec.starting_deadline_seconds is None
    d = FineTuneSchedule.model_validate(schedule(trigger={"datasetChange": {}}))
    assert d.spec.trigger and d.spec.trigger.dataset_change
    assert d.spec.trigger.dataset_change.interval_seconds == 300
    assert FineTuneSchedule.model_validate(schedule(schedule="@hourly")).spec.schedule == "@hourly"


def test_a_long_name_is_refused() -> None:
    obj = schedule(schedule="@daily")
    obj["metadata"]["name"] = "x" * 41
    with pytest.raises(ValidationError, match=r"metadata\.name must be at most 40"):
        FineTuneSchedule.model_validate(obj)


def test_the_template_spec_is_the_whole_finetunejob_spec() -> None:
    """Every FineTuneJob field, including ones added later, works in a template: the template's
    spec in the CRD is the FineTuneJob CRD's spec schema, byte for byte."""
    job = crdbuild.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sched = crdbuild.schedule_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    template = sched["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    assert {k: v for k, v in template.items() if k != "description"} == {
        k: v for k, v in job["properties"]["spec"].items() if k != "description"
    }
    assert FineTuneJobTemplate.model_fields["spec"].annotation.__name__ == "FineTuneJobSpec"


def test_the_schedule_crd() -> None:
    crd = crdbuild.schedule_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "FineTuneSchedule",
        "finetuneschedules",
        ["fts"],
    )
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    meta = version["schema"]["openAPIV3Schema"]["properties"]["metadata"]
    assert meta["properties"]["name"]["maxLength"] == 40


def test_the_schedule_example_and_every_example_kind() -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    kinds = {p.name: yaml.safe_load(p.read_text())["kind"] for p in examples}
    assert set(kinds.values()) == {"FineTuneJob", "FineTuneSchedule"}, kinds
    path = REPO / "examples" / "retraining-schedule.yaml"
    s = FineTuneSchedule.model_validate(yaml.safe_load(path.read_text()))
    assert s.metadata["name"] == path.stem
    assert s.spec.trigger and s.spec.trigger.dataset_change and s.spec.schedule
