"""Bad input fails fast with a message that names the problem, the design.md exit code and a
termination message carrying the reason (none of these are retryable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, classification_spec, train, unique


def _fails(
    ts: TrainerS3, spec: dict[str, Any], tmp: Path, code: int, reason: str
) -> dict[str, Any]:
    cfg = harness.trainer_config(spec, name=unique("err"), work_dir=tmp / "w")
    run = harness.run(cfg, tmp / "run")
    assert run.returncode == code, run.output[-3000:]
    t = run.termination
    assert t is not None, run.output[-3000:]
    assert t["outcome"] == "Failed" and t["reason"] == reason and t["retryable"] is False
    # the same message is in the log for `kubectl logs`
    assert run.lines(f"ERROR kubetune: {reason}: ")
    assert "Traceback" not in run.output
    print(f"\n[{reason}] exit {run.returncode}: {t['message']}")
    return t


def test_corrupt_jsonl(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    uri = trainer_s3.uri(f"bad/{unique('corrupt')}/train.jsonl")
    trainer_s3.put(uri, b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    t = _fails(
        trainer_s3,
        causal_spec(trainer_s3, dataset={"s3Uri": uri}),
        tmp_path,
        11,
        "DatasetError",
    )
    assert uri in t["message"] and "line 2: invalid JSON" in t["message"]


def test_missing_dataset(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    uri = trainer_s3.uri("datasets/does-not-exist.jsonl")
    t = _fails(
        trainer_s3, causal_spec(trainer_s3, dataset={"s3Uri": uri}), tmp_path, 11, "DatasetError"
    )
    assert uri in t["message"] and "not found" in t["message"]


def test_unknown_column(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    spec = classification_spec(trainer_s3, dataset={"fields": {"text": "body"}})
    t = _fails(trainer_s3, spec, tmp_path, 11, "DatasetError")
    assert "column 'body' (from dataset.fields.text) not found" in t["message"]
    assert "text, label" in t["message"]


def test_label_out_of_range(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    uri = trainer_s3.uri(f"bad/{unique('labels')}/train.jsonl")
    rows = [{"text": "goal match", "label": 0}] * 3 + [{"text": "rain", "label": 7}]
    trainer_s3.put(uri, "".join(json.dumps(r) + "\n" for r in rows).encode())
    spec = classification_spec(
        trainer_s3,
        classification={"labelNames": None, "numLabels": 4},
        dataset={"s3Uri": uri},
    )
    t = _fails(trainer_s3, spec, tmp_path, 11, "DatasetError")
    assert "row 3" in t["message"] and "'label'" in t["message"]
    assert "label 7 out of range: expected 0..3" in t["message"]


def test_bad_rows_skipped_and_counted(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    uri = trainer_s3.uri(f"bad/{unique('skip')}/train.jsonl")
    rows = [{"text": "goal match team", "label": "sports"}] * 20 + [
        {"text": "rain", "label": "hail"},
        {"text": None, "label": "weather"},
    ]
    trainer_s3.put(uri, "".join(json.dumps(r) + "\n" for r in rows).encode())
    spec = classification_spec(
        trainer_s3,
        dataset={"s3Uri": uri, "badRows": "skip"},
        hyperparameters={"maxSteps": 2, "evalSteps": 2, "saveStrategy": "no"},
    )
    _, run = train(spec, unique("skip"), tmp_path)
    assert run.termination["metrics"]["bad_rows_skipped"] == 2  # type: ignore[index]
    assert run.lines("skipping row 20: field 'label': unknown label 'hail'")


def test_model_without_weights(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    prefix = trainer_s3.uri(f"bad/{unique('noweights')}/model")
    src = trainer_s3.uri("models/tiny-llama")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        trainer_s3.put(f"{prefix}/{name}", trainer_s3.s3.get_bytes(f"{src}/{name}"))
    spec = causal_spec(trainer_s3, model={"s3Uri": prefix + "/"})
    t = _fails(trainer_s3, spec, tmp_path, 12, "ModelError")
    assert prefix in t["message"] and "no weights" in t["message"]
    assert "config.json, tokenizer.json, tokenizer_config.json" in t["message"]


def test_empty_model_prefix(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    spec = causal_spec(trainer_s3, model={"s3Uri": trainer_s3.uri("models/nothing-here") + "/"})
    t = _fails(trainer_s3, spec, tmp_path, 12, "ModelError")
    assert "no objects under that prefix" in t["message"]


@pytest.mark.slow
def test_non_finite_loss_stops_with_13(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    """A base model with an infinite weight: the first training step's loss is not finite."""
    from safetensors.torch import load_file, save_file

    src = trainer_s3.download(trainer_s3.uri("models/tiny-llama") + "/", tmp_path / "m")
    weights = load_file(str(src / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("inf")
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    prefix = trainer_s3.uri(f"bad/{unique('inf')}/model")
    trainer_s3.s3.upload_dir(src, prefix)
    spec = causal_spec(
        trainer_s3,
        "full",
        model={"s3Uri": prefix + "/"},
        dataset={"validation": None},
        hyperparameters={"evalStrategy": "no", "evalSteps": None},
    )
    t = _fails(trainer_s3, spec, tmp_path, 13, "NonFiniteLoss")
    assert "at step 1" in t["message"]
