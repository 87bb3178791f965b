"""The FineTuneJob models field by field: null means unset, JSON integers and booleans,
quantities, text templates, display helpers, status tolerance, core affinity types, and settings
a run cannot honour, each refused at apply naming the field. (Whole manifests, the examples and
the BAD/GOOD table the real API server also checks: test_api_models.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api import v1alpha1 as c
from kubetune_api.v1alpha1 import FineTuneJobStatus
from pydantic import ValidationError


def test_null_means_unset_and_takes_the_default() -> None:
    h = c.Hyperparameters.model_validate({"saveSteps": None, "learningRate": None})
    assert h.save_steps == 500 and h.learning_rate is None  # the method decides (trainargs)
    with pytest.raises(ValidationError, match="uri"):
        c.OutputSpec.model_validate({"uri": None})


@pytest.mark.parametrize(
    ("value", "ok"),
    [(8, True), (8.0, False), ("8", False), (True, False), (8.5, False), (None, True)],
)
def test_integers_are_json_integers(value: Any, ok: bool) -> None:
    data = {} if value is None else {"batchSize": value}
    if ok:
        assert c.Hyperparameters.model_validate(data).batch_size == 8 if value else True
    else:
        with pytest.raises(ValidationError):
            c.Hyperparameters.model_validate(data)


@pytest.mark.parametrize(
    ("value", "ok"), [(True, True), (False, True), ("true", False), (1, False)]
)
def test_booleans_are_json_booleans(value: Any, ok: bool) -> None:
    if ok:
        assert (
            c.DatasetSpec.model_validate({"s3Uri": "s3://b1b/x", "packing": value}).packing is value
        )
    else:
        with pytest.raises(ValidationError):
            c.DatasetSpec.model_validate({"s3Uri": "s3://b1b/x", "packing": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4, "4"), (4.0, None), ("500m", "500m"), ("16Gi", "16Gi"), ("1.5", "1.5"), ("1e3", "1e3"),
     (".5", ".5"), ("+1Ki", "+1Ki"), (-1, None), (1.5, None), ("16GB", None), ("1..2", None),
     ("-1", None), ("", None), (2**63, None), (True, None)],
)  # fmt: skip
def test_quantities(value: Any, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValidationError):
            c.ResourcesSpec.model_validate({"memory": value})
    else:
        assert c.ResourcesSpec.model_validate({"memory": value}).memory == expected


@pytest.mark.parametrize(
    ("template", "ok"),
    [("Quote: {quote} Author: {author}", True), ("{{literal}} {x:>10}", True), ("plain", True),
     ("{_a1}", True), ("{a.b}", False), ("{a[0]}", False), ("{a!r}", False), ("{0}", False),
     ("{}", False), ("{a", False), ("a}", False), ("{a:{b}}", False)],
)  # fmt: skip
def test_text_template_pattern(template: str, ok: bool) -> None:
    data = {"s3Uri": "s3://b1b/x", "textTemplate": template}
    if ok:
        c.DatasetSpec.model_validate(data)
        template.format_map({"quote": 1, "author": 2, "x": 3, "_a1": 4})  # valid str.format
    else:
        with pytest.raises(ValidationError):
            c.DatasetSpec.model_validate(data)


def test_model_display() -> None:
    assert c.ModelSource(hub_id="org/m", revision="abc").display() == "org/m@abc"
    assert c.ModelSource(hub_id="org/m").display() == "org/m"
    assert c.ModelSource(s3_uri="s3://bkt/m/").display() == "s3://bkt/m/"
    pvc = c.ModelSource.model_validate({"pvc": {"claimName": "models", "path": "/llama"}})
    assert pvc.display() == "pvc://models/llama"


def test_progress_summary() -> None:
    assert c.Progress().summary() is None
    assert c.Progress(step=12, total_steps=100).summary() == "12/100 (12%)"
    assert c.Progress(step=5).summary() == "5"
    status = FineTuneJobStatus.model_validate(
        {"model": "org/m", "progressSummary": "1/2 (50%)", "unknown": 1}
    )
    assert status.progress_summary == "1/2 (50%)" and status.model == "org/m"


def test_status_tolerates_nan_metrics() -> None:
    # The operator copies whatever the trainer reported; the spec refuses NaN, the status not.
    status = FineTuneJobStatus.model_validate({"metrics": {"eval_loss": float("nan")}})
    assert status.metrics is not None
    with pytest.raises(ValidationError):
        c.Hyperparameters.model_validate({"learningRate": float("nan")})


# --- resources.affinity, nodeSelector: the core types, refused at apply when malformed ---------

GOOD_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
            }
        ],
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 10,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app": "x"}},
                },
            }
        ]
    },
}


def test_a_core_affinity_round_trips_to_the_pod_unchanged() -> None:
    res = c.ResourcesSpec.model_validate({"affinity": GOOD_AFFINITY})
    assert res.affinity is not None
    wire = res.affinity.wire()
    # default-empty values lists appear; everything the user wrote is kept as written
    pref = wire["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert pref["preference"]["matchExpressions"][0] == {
        "key": "zone", "operator": "Exists", "values": []
    }  # fmt: skip
    assert wire["podAntiAffinity"] == GOOD_AFFINITY["podAntiAffinity"]


@pytest.mark.parametrize(
    ("affinity", "needle"),
    [
        ({"nodeAffinity": {"required": {}}}, "required"),  # a typo of the long field name
        ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}, "nodeSelectorTerms"),
        (
            {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "Among", "values": ["a"]}]}]}}},
            "operator",
        ),
        (
            {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In"}]}]}}},
            "values",
        ),
        ({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 0, "podAffinityTerm": {"topologyKey": "zone"}}]}}, "weight"),
        ({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}, "topologyKey"),
    ],
)  # fmt: skip
def test_a_malformed_affinity_is_refused_naming_the_field(affinity: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        c.ResourcesSpec.model_validate({"affinity": affinity})
    assert needle in str(e.value)


def test_node_selector_keys_must_be_label_keys() -> None:
    c.ResourcesSpec.model_validate({"nodeSelector": {"example.com/pool": "gpu"}})
    with pytest.raises(ValidationError, match="nodeSelector keys must be label keys"):
        c.ResourcesSpec.model_validate({"nodeSelector": {"bad key!": "gpu"}})


# --- settings a CPU run or the method cannot honour: refused at apply, not inside the pod ------


@pytest.mark.parametrize(
    ("patch", "field", "needle"),
    [
        ({"hyperparameters": {"optimizer": "paged_adamw_8bit"}}, "hyperparameters.optimizer", "GPUs only"),
        ({"hyperparameters": {"optimizer": "adamw_8bit"}}, "hyperparameters.optimizer", "GPUs only"),
        ({"hyperparameters": {"precision": "fp16"}}, "hyperparameters.precision", "GPUs only"),
        (
            {"method": {"type": "prefix-tuning"}, "output": {"uri": "s3://bkt/o", "adapter": False}},
            "output.adapter",
            "no merged form",
        ),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused_naming_the_field(
    patch: dict, field: str, needle: str
) -> None:
    raw = {**_minimal_spec(), **patch}
    with pytest.raises(ValidationError) as e:
        c.FineTuneJobSpec.model_validate(raw)
    assert f"spec.{field}: " in str(e.value) and needle in str(e.value)
    # the same settings with a GPU (or an adapter) are fine
    if field.startswith("hyperparameters"):
        c.FineTuneJobSpec.model_validate({**raw, "resources": {"gpus": 1}})
    else:
        c.FineTuneJobSpec.model_validate({**raw, "output": {"uri": "s3://bkt/o"}})


def _minimal_spec() -> dict:
    return {
        "model": {"s3Uri": "s3://bkt/m/"},
        "dataset": {"s3Uri": "s3://bkt/d.jsonl"},
        "output": {"uri": "s3://bkt/o"},
    }
