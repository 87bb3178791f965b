"""Preference tuning (`task: preference`) through kubetune-train on the tiny Llama, CPU:
trl's DPO with LoRA moves the implicit reward of the chosen completions above the rejected
ones (the margin measured on held-out pairs before and after training rises), and the run
leaves an adapter and a merged model like any LoRA run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainer_fixtures import TrainerS3, causal_spec, train, unique


def pairs(numbers: range) -> bytes:
    """A preference a tiny random model can pick up in a few steps, and that carries over to
    held-out prompts: a polite answer over a rude one, whatever the question."""
    rows = [
        {"prompt": f"question {i} : may i ask ?", "chosen": " yes , thank you",
         "rejected": " no , go away"}
        for i in numbers
    ]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# ORPO's reward is beta times the log odds of a response under the model itself (no
# reference), on a smaller scale than DPO's.
MIN_RISE = {"dpo": 0.5, "orpo": 0.05}


def preference_spec(ts: TrainerS3, method: str, algorithm: str) -> dict[str, Any]:
    name = unique("pref")
    ts.put(ts.uri("datasets", name, "train.jsonl"), pairs(range(10, 58)))
    ts.put(ts.uri("datasets", name, "validation.jsonl"), pairs(range(70, 78)))
    spec = causal_spec(
        ts,
        method,
        task="preference",
        preference={"algorithm": algorithm, "beta": 0.1},
        dataset={
            "s3Uri": ts.uri("datasets", name, "train.jsonl"),
            "format": "preference",
            "validation": {"s3Uri": ts.uri("datasets", name, "validation.jsonl")},
        },
        hyperparameters={"maxSteps": 10, "learningRate": 0.005, "evalSteps": 10},
    )
    return spec


@pytest.mark.parametrize(("method", "algorithm"), [("lora", "dpo"), ("lora", "orpo")])
def test_dpo_raises_the_chosen_vs_rejected_reward_margin(
    trainer_s3: TrainerS3,
    tmp_path: Path,
    method: str,
    algorithm: str,
) -> None:
    spec = preference_spec(trainer_s3, method, algorithm)
    cfg, run = train(spec, unique(algorithm), tmp_path)
    t = run.termination
    assert t is not None and t["outcome"] == "Succeeded", t
    m = t["metrics"]
    print(f"\n[{method}/{algorithm}] {t['message']} ({run.seconds:.1f}s) {m}")
    assert m["train_steps"] == 10
    if algorithm == "dpo":  # against the reference: the fresh adapter starts at exactly 0
        assert m["initial_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert m["reward_margin"] > m["initial_reward_margin"] + MIN_RISE[algorithm], m
    assert m["reward_accuracy"] > 0.5, m
    assert "perplexity" not in m  # a DPO loss is no language-model loss
    manifest = trainer_s3.json(cfg["runPrefix"] + "manifest.json")
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapter/adapter_config.json", "merged/model.safetensors"} <= paths
