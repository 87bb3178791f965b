"""Evaluation that decides (issue 20 floor 2), the pure middle: the metrics (against
scikit-learn), the held-out splits, the test-metric plumbing, best-checkpoint arguments and the
promotion gate, including its pointer round trip on the local stand-in for S3."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubetune_api.v1alpha1 import (
    DatasetError,
    FineTuneJobSpec,
    PromoteSpec,
    TrainerConfig,
    evaluation_summary,
    run_prefix,
)
from kubetune_trainer import promotion, testeval
from kubetune_trainer.data import holdout_splits
from kubetune_trainer.localstore import LocalS3
from kubetune_trainer.metrics import (
    accuracy,
    exact_match,
    macro_f1,
    macro_precision,
    macro_recall,
)
from kubetune_trainer.result import build
from test_trainer_builders import targs

# ------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_agree_with_scikit_learn(seed: int) -> None:
    from sklearn import metrics as sk

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 50)
    preds = np.where(rng.random(50) < 0.6, labels, rng.integers(0, 4, 50))
    present = sorted(set(labels) | set(preds))
    kw: dict[str, Any] = {"average": "macro", "labels": present, "zero_division": 0}
    assert accuracy(preds, labels) == pytest.approx(sk.accuracy_score(labels, preds))
    assert macro_f1(preds, labels, 4) == pytest.approx(sk.f1_score(labels, preds, **kw))
    assert macro_precision(preds, labels, 4) == pytest.approx(
        sk.precision_score(labels, preds, **kw)
    )
    assert macro_recall(preds, labels, 4) == pytest.approx(sk.recall_score(labels, preds, **kw))


def test_exact_match_trims_whitespace_but_not_case() -> None:
    assert exact_match(
        [" Paris\n", "rome", "Berlin  Mitte"], ["Paris", "Rome", "Berlin Mitte"]
    ) == (pytest.approx(2 / 3))
    assert math.isnan(exact_match([], []))
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


# ------------------------------------------------------------------------------------- splits


def _rows(n: int) -> Any:
    import datasets

    return datasets.Dataset.from_list([{"text": f"row {i}"} for i in range(n)])


def test_test_split_is_disjoint_from_training_and_validation_and_seeded() -> None:
    train, val, test = holdout_splits(_rows(100), 0.1, 0.2, seed=7)
    assert val is not None and test is not None
    t, v, s = set(train["text"]), set(val["text"]), set(test["text"])
    assert (len(t), len(v), len(s)) == (70, 10, 20)
    assert not (t & v) and not (t & s) and not (v & s)
    assert t | v | s == {f"row {i}" for i in range(100)}
    again = holdout_splits(_rows(100), 0.1, 0.2, seed=7)
    assert again[2] is not None and set(again[2]["text"]) == s  # same seed, same test rows
    other = holdout_splits(_rows(100), 0.1, 0.2, seed=8)
    assert other[2] is not None and set(other[2]["text"]) != s


def test_validation_split_alone_is_unchanged_by_the_test_support() -> None:
    """Earlier runs' validation rows stay the same (one train_test_split, same seed)."""
    rows = _rows(40)
    expected = rows.train_test_split(test_size=4, seed=3)["test"]["text"]
    _, val, test = holdout_splits(rows, 0.1, None, seed=3)
    assert test is None and val is not None and val["text"] == expected


def test_splits_that_leave_nothing_name_the_field() -> None:
    with pytest.raises(
        DatasetError, match=r"dataset.test.splitFraction 0.1 of 3 rows leaves no test"
    ):
        holdout_splits(_rows(3), None, 0.1, seed=1)
    with pytest.raises(DatasetError, match="leaves no training rows"):
        holdout_splits(_rows(4), 0.5, 0.5, seed=1)


# ------------------------------------------------------------------------ test metric plumbing


def _spec(**over: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "model": {"hubId": "org/m"},
        "dataset": {"s3Uri": "s3://bkt/train.jsonl", "test": {"splitFraction": 0.2}},
        "output": {"uri": "s3://bkt/out"},
    }
    for key, value in over.items():
        node = doc
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return FineTuneJobSpec.model_validate(doc)


def test_wanted_metrics_default_by_task_and_include_the_gate() -> None:
    assert testeval.wanted(_spec()) == ["perplexity", "loss"]
    cls = _spec(
        task="sequence-classification",
        classification={"numLabels": 2},
        **{"dataset.format": "classification"},
    )
    assert testeval.wanted(cls) == ["accuracy", "f1", "precision", "recall", "loss"]
    chosen = _spec(
        **{
            "dataset.format": "prompt-completion",
            "evaluation": {"metrics": ["exactMatch"]},
            "output.promote": {"metric": "exactMatch"},
        }
    )
    assert testeval.wanted(chosen) == ["exactMatch"]


def test_metrics_read_off_the_evaluation_and_shown_side_by_side() -> None:
    out = {"test_loss": 1.0, "test_accuracy": 0.5, "test_runtime": 3.0, "epoch": 1.0}
    got = testeval.from_evaluate(out, ["perplexity", "loss", "accuracy", "exactMatch", "f1"])
    assert got == {"perplexity": pytest.approx(math.e), "loss": 1.0, "accuracy": 0.5}
    table = testeval.side_by_side({"loss": 2.0, "accuracy": 0.4}, {"loss": 1.0, "f1": 0.7})
    assert table == {
        "loss": {"base": 2.0, "tuned": 1.0},
        "accuracy": {"base": 0.4},
        "f1": {"tuned": 0.7},
    }
    assert evaluation_summary(table, "loss") == "loss↓ 2 -> 1"
    assert evaluation_summary(table, None) == "loss↓ 2 -> 1"
    assert evaluation_summary(table, "f1") == "f1↑ ? -> 0.7"
    assert evaluation_summary({}, "loss") is None


def test_generation_pairs_take_the_last_assistant_turn_as_reference() -> None:
    class Tok:
        def apply_chat_template(self, turns: Any, **kw: Any) -> str:
            assert kw["add_generation_prompt"] is True
            return "|".join(t["content"] for t in turns) + "|>"

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    assert testeval.generation_pairs(rows, "messages", Tok(), 5) == [("hi|>", "yo"), ("q|>", "a")]
    pc = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    assert testeval.generation_pairs(pc, "prompt-completion", None, 2) == [
        ("p0", "c0"),
        ("p1", "c1"),
    ]


@pytest.mark.parametrize(
    ("best", "metric", "greater"),
    [
        ({}, "eval_loss", False),
        ({"metric": "perplexity"}, "eval_loss", False),
        ({"metric": "loss", "direction": "maximize"}, "eval_loss", True),
    ],
)
def test_best_checkpoint_aligns_eval_and_save_per_epoch(
    best: dict[str, Any], metric: str, greater: bool
) -> None:
    spec = _spec(
        **{
            "dataset.validation": {"splitFraction": 0.1},
            "evaluation": {"bestCheckpoint": best},
            "hyperparameters": {"saveStrategy": "steps", "saveSteps": 7},
        }
    )
    kw = targs(spec, has_eval=True)
    assert kw["eval_strategy"] == kw["save_strategy"] == "epoch"
    assert kw["load_best_model_at_end"] is True
    assert kw["metric_for_best_model"] == metric
    assert kw["greater_is_better"] is greater


def test_best_checkpoint_for_classification_by_f1() -> None:
    spec = _spec(
        task="sequence-classification",
        classification={"numLabels": 2},
        evaluation={"bestCheckpoint": {"metric": "f1"}},
        **{"dataset.format": "classification", "dataset.validation": {"splitFraction": 0.1}},
    )
    kw = targs(spec, has_eval=True)
    assert (kw["metric_for_best_model"], kw["greater_is_better"]) == ("eval_f1", True)


def test_result_carries_the_evaluation_and_the_decision_without_nan() -> None:
    out = build(
        outcome="Succeeded",
        reason="Completed",
        message="m",
        retryable=False,
        evaluation={"loss": {"base": 2.0, "tuned": float("nan")}},
        promotion={"promoted": False, "value": float("inf"), "metric": "loss"},
    )
    assert out["evaluation"] == {"loss": {"base": 2.0}}
    assert out["promotion"] == {"promoted": False, "metric": "loss"}
    assert "evaluation" not in build(outcome="Succeeded", reason="C", message="", retryable=False)


# ------------------------------------------------------------------------------- the gate


def _gate(**kw: Any) -> PromoteSpec:
    return PromoteSpec.model_validate(kw)


@pytest.mark.parametrize(
    ("promote", "value", "previous", "promoted", "reason"),
    [
        ({"metric": "accuracy"}, 0.8, None, True, "Promoted"),  # first run
        ({"metric": "accuracy"}, 0.8, 0.7, True, "Promoted"),
        ({"metric": "accuracy"}, 0.7, 0.7, False, "NotPromoted"),  # a tie does not beat it
        ({"metric": "accuracy"}, 0.6, 0.7, False, "NotPromoted"),
        ({"metric": "loss"}, 0.6, 0.7, True, "Promoted"),  # lower is better
        ({"metric": "loss"}, 0.8, 0.7, False, "NotPromoted"),
        ({"metric": "loss", "direction": "maximize"}, 0.8, 0.7, True, "Promoted"),
        ({"metric": "f1", "rule": "threshold", "threshold": 0.8}, 0.8, None, True, "Promoted"),
        ({"metric": "f1", "rule": "threshold", "threshold": 0.8}, 0.79, 0.1, False, "NotPromoted"),
        ({"metric": "perplexity", "rule": "threshold", "threshold": 20}, 19.0, None, True, "Promoted"),
        ({"metric": "perplexity", "rule": "threshold", "threshold": 20}, 21.0, None, False, "NotPromoted"),
        ({"metric": "accuracy"}, None, 0.7, False, "PromotionMetricMissing"),
        ({"metric": "accuracy"}, float("nan"), None, False, "PromotionMetricMissing"),
    ],
)  # fmt: skip
def test_gate_decision(
    promote: dict[str, Any],
    value: float | None,
    previous: float | None,
    promoted: bool,
    reason: str,
) -> None:
    d = promotion.decide(_gate(**promote), value, previous, "s3://bkt/prev/")
    assert (d.promoted, d.reason) == (promoted, reason)
    assert d.message.startswith("promoted" if promoted else "not promoted")
    if value is not None and math.isfinite(value):
        assert f"{value:.4g}" in d.message  # the numbers are in the message


def test_an_unusable_previous_pointer_blocks_rather_than_promotes() -> None:
    d = promotion.decide(_gate(metric="accuracy"), 0.9, None, None, previous_unusable=True, uri="u")
    assert not d.promoted and "has no accuracy" in d.message
    assert promotion.previous_value({}, "accuracy", "s3://bkt/r/") == (None, None, True)
    other = {"kind": "PromotedModel", "runPrefix": "s3://bkt/a/", "metrics": {"loss": 1.0}}
    assert promotion.previous_value(other, "accuracy", "s3://bkt/r/") == (None, "s3://bkt/a/", True)
    assert promotion.previous_value(other, "loss", "s3://bkt/r/") == (1.0, "s3://bkt/a/", False)


def _cfg(tmp: Path, run: int, promote: dict[str, Any], uid: str = "0123456789ab") -> TrainerConfig:
    spec = _spec(**{"output.promote": promote})
    return TrainerConfig.model_validate(
        {
            "job": {"namespace": "ns", "name": "job", "uid": uid, "run": run},
            "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "runPrefix": run_prefix("s3://bkt/out", "ns", "job", uid, run),
        }
    )


def test_pointer_moves_only_when_the_gate_passes(tmp_path: Path) -> None:
    s3 = LocalS3(tmp_path)
    gate = {"metric": "loss"}
    arts = {
        "mergedModelUri": "m/",
        "manifestUri": "man",
        "manifestSha256": "abc",
        "checkpointUri": "c",
    }
    pointer = tmp_path / "bkt/out/ns/job/promoted/promoted.json"

    first = _cfg(tmp_path, 1, gate)
    d1 = promotion.gate(s3, first, {"loss": 1.0})
    assert (
        d1 is not None
        and d1.promoted
        and d1.pointer_uri == "s3://bkt/out/ns/job/promoted/promoted.json"
    )
    promotion.write_pointer(s3, first, d1, arts, {"loss": 1.0})
    doc = json.loads(pointer.read_text())
    assert doc["runPrefix"] == first.run_prefix and doc["manifestSha256"] == "abc"
    assert doc["metrics"] == {"loss": 1.0} and "checkpointUri" not in doc["artifacts"]

    second = _cfg(tmp_path, 2, gate)
    d2 = promotion.gate(s3, second, {"loss": 1.5})
    assert d2 is not None and not d2.promoted
    assert (d2.previous, d2.previous_run) == (1.0, first.run_prefix)
    assert "1.5 vs 1" in d2.message
    assert json.loads(pointer.read_text()) == doc  # unchanged

    third = _cfg(tmp_path, 3, gate)
    d3 = promotion.gate(s3, third, {"loss": 0.5})
    assert d3 is not None and d3.promoted
    promotion.write_pointer(s3, third, d3, arts, {"loss": 0.5})
    # A retried attempt of run 3 compares with what its pointer replaced, not with itself.
    again = promotion.gate(s3, third, {"loss": 0.5})
    assert again is not None and again.promoted and again.previous == 1.0
    assert again.as_status()["previousRun"] == first.run_prefix


def test_no_gate_no_decision(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 1, {"metric": "loss"})
    plain = cfg.model_copy(
        update={
            "spec": cfg.spec.model_copy(
                update={"output": cfg.spec.output.model_copy(update={"promote": None})}
            )
        }
    )
    assert promotion.gate(LocalS3(tmp_path), plain, {"loss": 1.0}) is None


def test_shared_pointer_name(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 1, {"metric": "loss", "pointer": "nightly"})
    d = promotion.gate(LocalS3(tmp_path), cfg, {"loss": 1.0})
    assert d is not None and d.pointer_uri == "s3://bkt/out/ns/nightly/promoted/promoted.json"


def test_exact_match_generates_from_the_prompt_with_the_tiny_llama() -> None:
    """The generation edge on a real (tiny, random) model: a reference equal to what greedy
    decoding gives matches, any other does not."""
    from kubetune_trainer.testing.tiny import tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_llama()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    enc = tok("count: 1 2 3", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    greedy = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    pairs = [("count: 1 2 3", f"  {greedy} "), ("count: 1 2 3", greedy + " and more")]
    assert testeval.generate_exact_match(model, tok, pairs, max_new_tokens=4) == 0.5
    assert not model.training


def test_a_full_result_keeps_the_evaluation_and_decision_within_4_kib() -> None:
    from kubetune_trainer.result import encode

    metrics = {f"some_metric_{i}": float(i) for i in range(200)}
    evaluation = {m: {"base": 0.123456789, "tuned": 0.987654321} for m in ("accuracy", "f1",
                  "precision", "recall", "loss")}  # fmt: skip
    decision = promotion.decide(_gate(metric="f1"), 0.98, 0.97, "s3://bkt/" + "p/" * 100, uri="u")
    full = build(outcome="Succeeded", reason="Completed", message="x" * 3000, retryable=False,
                 metrics=metrics, evaluation=evaluation, promotion=decision.as_status())  # fmt: skip
    text = encode(full)
    assert len(text.encode()) <= 4096
    back = json.loads(text)
    assert back["evaluation"] == full["evaluation"] and back["promotion"] == full["promotion"]
