"""Method-aware learning-rate defaults: an unset hyperparameters.learningRate takes the
method's rate (full fine-tuning 2e-5, not LoRA's 2e-4), an explicit one always wins, and the
change does not restart runs of objects created under the old single default (their stored
2e-4 hashes as before: the hashes below are those of the operator before this change)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.v1alpha1 import FineTuneJobSpec, default_learning_rate
from kubetune_operator.runs import spec_hash


def spec(**kw: Any) -> FineTuneJobSpec:
    raw = {
        "model": {"hubId": "org/m"},
        "dataset": {"inline": [{"text": "x"}]},
        "output": {"uri": "s3://bkt/out"},
        **kw,
    }
    return FineTuneJobSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("method", "task", "rate"),
    [
        ("full", "causal-lm", 2e-5),
        ("lora", "causal-lm", 2e-4),
        ("qlora", "causal-lm", 2e-4),
        ("ia3", "causal-lm", 3e-3),
        ("prompt-tuning", "causal-lm", 3e-2),
        ("bitfit", "sequence-classification", 1e-4),
        ("full", "preference", 5e-7),
        ("lora", "preference", 5e-6),
    ],
)
def test_unset_learning_rate_takes_the_methods_default(method: str, task: str, rate: float) -> None:
    from kubetune_trainer.trainargs import learning_rate

    extra: dict[str, Any] = {"method": {"type": method}, "task": task}
    if task == "sequence-classification":
        extra.update(classification={"numLabels": 2}, dataset={"inline": [{"text": "x", "label": 0}], "format": "classification"})  # fmt: skip
    if task == "preference":
        extra["dataset"] = {"inline": [{"prompt": "p", "chosen": "a", "rejected": "b"}], "format": "preference"}  # fmt: skip
    s = spec(**extra)
    assert default_learning_rate(method, task) == rate
    assert learning_rate(s) == rate
    explicit = s.model_copy(
        update={"hyperparameters": s.hyperparameters.model_copy(update={"learning_rate": 1e-3})}
    )
    assert learning_rate(explicit) == 1e-3


def test_objects_stored_with_the_old_default_keep_their_spec_hash() -> None:
    old_full = spec(method={"type": "full"}, hyperparameters={"learningRate": 0.0002, "epochs": 3})
    old_lora = spec(hyperparameters={"learningRate": 0.0002})
    assert spec_hash(old_full) == "9fbfa754b73e50d9"
    assert spec_hash(old_lora) == "61e28d677f9c1ea3"
    assert spec_hash(old_lora) == spec_hash(spec())
    # any other explicit rate is part of the hash, as before
    assert spec_hash(spec(hyperparameters={"learningRate": 0.0003})) != spec_hash(spec())


def test_kubectl_explain_documents_the_defaults() -> None:
    from kubetune_api.v1alpha1 import Hyperparameters

    text = Hyperparameters.model_fields["learning_rate"].description or ""
    for part in ("full 2e-5", "lora/qlora/dora 2e-4", "ia3 3e-3", "preference"):
        assert part in text
