"""Sequence classification on the tiny BERT: the topics task (the class is given by keywords
among filler words) must be learned far above chance (25% for 4 classes), full and LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainer_fixtures import LABELS, TrainerS3, classification_spec, train, unique

CHANCE = 1 / len(LABELS)


def _predict(model: Any, tok: Any, texts: list[str]) -> list[str]:
    import torch

    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.no_grad():
        ids = model(**enc).logits.argmax(-1).tolist()
    return [model.config.id2label[i] for i in ids]


@pytest.mark.slow
def test_full_fine_tune_beats_chance(
    trainer_s3: TrainerS3,
    tmp_path: Path,
    record_property: Any,
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = classification_spec(
        trainer_s3,
        "full",
        hyperparameters={
            "maxSteps": 150,
            "learningRate": 0.001,
            "loggingSteps": 25,
            "evalSteps": 75,
            "saveSteps": 75,
        },
    )
    cfg, run = train(spec, unique("bert-full"), tmp_path)
    m = run.termination["metrics"]  # type: ignore[index]
    record_property("accuracy", m["eval_accuracy"])
    print(
        f"\n[bert full] accuracy {m['initial_accuracy']:.3f} -> {m['eval_accuracy']:.3f}, "
        f"macro F1 {m['eval_f1']:.3f}, eval_loss {m['initial_eval_loss']:.3f} -> "
        f"{m['eval_loss']:.3f} ({run.seconds:.1f}s)"
    )
    assert m["eval_accuracy"] >= 0.85 > CHANCE + 0.5
    assert m["eval_f1"] >= 0.8
    # merged/ is the whole trained model with the label names in its config
    local = trainer_s3.download(cfg["runPrefix"] + "merged/", tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(local).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {n: i for i, n in enumerate(LABELS)}
    tok = AutoTokenizer.from_pretrained(local)
    preds = _predict(model, tok, ["the team scored a late goal today", "rain and wind tomorrow"])
    assert preds == ["sports", "weather"], preds


@pytest.mark.slow
def test_lora_with_modules_to_save_beats_chance(
    trainer_s3: TrainerS3,
    tmp_path: Path,
    record_property: Any,
) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = classification_spec(
        trainer_s3,
        "lora",
        method={"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "modulesToSave": ["classifier"]}},
        hyperparameters={
            # measured over seeds 42/1/2 with these settings: 0.95/0.86/0.91 accuracy
            "maxSteps": 200,
            "learningRate": 0.005,
            "loggingSteps": 25,
            "evalSteps": 100,
            "saveSteps": 100,
        },
    )
    cfg, run = train(spec, unique("bert-lora"), tmp_path)
    m = run.termination["metrics"]  # type: ignore[index]
    record_property("accuracy", m["eval_accuracy"])
    print(
        f"\n[bert lora] accuracy {m['initial_accuracy']:.3f} -> {m['eval_accuracy']:.3f}, "
        f"macro F1 {m['eval_f1']:.3f} ({run.seconds:.1f}s)"
    )
    assert m["eval_accuracy"] >= 0.75 > CHANCE + 0.4

    local = trainer_s3.download(cfg["runPrefix"], tmp_path / "artifacts")
    base_dir = trainer_s3.download(trainer_s3.uri("models/tiny-bert") + "/", tmp_path / "base")
    # the freshly initialised head is trained in full and saved with the adapter
    with safe_open(str(local / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("classifier" in k and "lora" not in k for k in keys), keys
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir,
        num_labels=4,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    tuned = PeftModel.from_pretrained(base, local / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(local / "merged").eval()
    tok = AutoTokenizer.from_pretrained(local / "merged")
    texts = ["the bank raised the loan price", "bake the pasta with salt and sauce"]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(tuned(**enc).logits, merged(**enc).logits, atol=1e-4)
    assert _predict(merged, tok, texts) == ["finance", "cooking"]


def test_default_max_seq_length_above_bert_positions_is_clamped_not_a_crash(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """The default maxSeqLength (1024) on a BERT with 128 positions, rows longer than that:
    the run trains at 128 and says so in its message and manifest (it used to fail inside the
    embeddings on the first long row)."""
    spec = classification_spec(trainer_s3, "full", hyperparameters={"maxSteps": 2})
    for key in ("evalStrategy", "evalSteps"):
        del spec["hyperparameters"][key]
    long_row = " ".join(["the team scored a goal"] * 80)  # ~400 tokens
    spec["dataset"] = {
        "inline": [
            {"text": long_row, "label": "sports"},
            {"text": "rain today", "label": "weather"},
        ]
        * 8,
        "format": "classification",
    }
    cfg, run = train(spec, unique("bert-clamp"), tmp_path)
    message = run.termination["message"]  # type: ignore[index]
    assert "dataset.maxSeqLength 1024 is above the model's position limit 128" in message
    manifest = trainer_s3.json(cfg["runPrefix"] + "manifest.json")
    assert manifest["datasets"]["maxSeqLength"] == {
        "requested": 1024,
        "effective": 128,
        "modelLimit": 128,
    }
