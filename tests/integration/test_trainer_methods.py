"""Every method trains a few steps through kubetune-train and leaves artifacts that load:
adapters with PeftModel.from_pretrained on the base, merged models with plain transformers
(with the same logits as base+adapter where a merge exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainer_fixtures import LABELS, TrainerS3, causal_spec, classification_spec, train, unique

CAUSAL_METHODS: dict[str, dict[str, Any]] = {
    "lora": {},
    "dora": {},
    # bitsandbytes 0.50 quantizes to nf4 and runs the 4-bit layers on CPU
    "qlora": {"quantization": {"quantType": "nf4", "doubleQuant": True}},
    "prompt-tuning": {"promptTuning": {"numVirtualTokens": 4, "initText": "count from"}},
    "prefix-tuning": {"prefixTuning": {"numVirtualTokens": 4}},
    "ia3": {},
    "full": {"freezeLayers": 1},
}
MERGEABLE = {"lora", "dora", "qlora", "ia3"}


def _logits(model: Any, tok: Any, texts: list[str]) -> Any:
    import torch

    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def _check_artifacts(ts: TrainerS3, cfg: dict[str, Any], method: str, tmp: Path, task: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    cls = task == "sequence-classification"
    auto = AutoModelForSequenceClassification if cls else AutoModelForCausalLM
    extra: dict[str, Any] = {"num_labels": 4, "id2label": dict(enumerate(LABELS))} if cls else {}
    local = ts.download(cfg["runPrefix"], tmp / "artifacts")
    base_uri = cfg["spec"]["model"]["s3Uri"]
    base_dir = ts.download(base_uri, tmp / "base")
    manifest = ts.json(cfg["runPrefix"] + "manifest.json")
    paths = {f["path"] for f in manifest["files"]}
    texts = ["count from 17 : 18", "the capital of italy is"]
    if method in ("full", "bitfit"):
        assert "merged/model.safetensors" in paths and not any(
            p.startswith("adapter/") for p in paths
        )
        merged = auto.from_pretrained(local / "merged").eval()
        base = auto.from_pretrained(base_dir, **extra).eval()
        changed = {
            n
            for (n, p), (_, q) in zip(
                merged.named_parameters(), base.named_parameters(), strict=True
            )
            if not torch.equal(p, q)
        }
        assert changed
        if method == "full":  # freezeLayers 1: embeddings and layer 0 untouched
            assert not any(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in changed)
            assert any(n.startswith("model.layers.1.") for n in changed)
        else:  # bitfit: biases (and the new head) only
            assert all(n.endswith(".bias") or n.startswith("classifier") for n in changed), changed
        return
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= paths
    tok = AutoTokenizer.from_pretrained(local / "adapter")
    tuned = PeftModel.from_pretrained(auto.from_pretrained(base_dir, **extra), local / "adapter")
    tuned.eval()
    a = _logits(tuned, tok, texts)
    assert torch.isfinite(a).all()
    if method in MERGEABLE:
        merged = auto.from_pretrained(local / "merged").eval()
        b = _logits(merged, tok, texts)
        # qlora trained on 4-bit weights but merges into a full-precision reload of the base,
        # so base+adapter in float32 is what the merged model must reproduce
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    else:
        assert not any(p.startswith("merged/") for p in paths)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CAUSAL_METHODS))
def test_causal_method_trains_and_artifacts_load(
    method: str,
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(
        trainer_s3,
        method,
        method=CAUSAL_METHODS[method],
        # k-bit preparation with activation checkpointing, as the QLoRA recipe runs it
        hyperparameters={"gradientCheckpointing": method == "qlora"},
    )
    cfg, run = train(spec, unique(method), tmp_path)
    t = run.termination
    assert t is not None and t["outcome"] == "Succeeded"
    assert t["metrics"]["train_steps"] == 6
    print(f"\n[{method}] {t['message']} ({run.seconds:.1f}s)")
    _check_artifacts(trainer_s3, cfg, method, tmp_path, "causal-lm")


@pytest.mark.slow
def test_bitfit_classification_trains_and_artifacts_load(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """BitFit where it applies (BERT has biases); the new head trains too."""
    spec = classification_spec(trainer_s3, "bitfit")
    cfg, run = train(spec, unique("cls-bitfit"), tmp_path)
    print(f"\n[cls bitfit] {run.termination['message']} ({run.seconds:.1f}s)")  # type: ignore[index]
    _check_artifacts(trainer_s3, cfg, "bitfit", tmp_path, "sequence-classification")


def test_bitfit_on_a_model_without_biases_is_a_config_error(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(trainer_s3, "bitfit")
    _, run = train(spec, unique("bitfit-llama"), tmp_path, returncode=10)
    t = run.termination
    assert t is not None and t["reason"] == "ConfigError"
    assert "no bias parameters" in t["message"]
