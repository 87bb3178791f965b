"""Causal-LM SFT end to end: kubetune-train as a subprocess, tiny Llama and data in MinIO.

The counting task ("count from 17 :" -> " 18 19 20 21") is learnable from held-out rows, so
the completion-only eval loss must fall by a large factor. The artifacts are then checked the
way a user would use them: the adapter with PeftModel.from_pretrained, the merged model with
AutoModelForCausalLM, and the manifest against what is in S3.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from awscrt import checksums
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, merge, train, unique

REPO = Path(__file__).resolve().parents[2]
PROMPT = "count from 17 :"


def _generate(model: Any, tok: Any, prompt: str, n: int = 6) -> str:
    import torch

    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


@pytest.mark.slow
def test_lora_sft_learns_and_artifacts_load(
    trainer_s3: TrainerS3,
    tmp_path: Path,
    record_property: Any,
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = unique("lora-counting")
    spec = causal_spec(
        trainer_s3,
        "lora",
        method={"lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        # dataset.test scored before and after (lifecycle.md, "Evaluation and promotion")
        dataset={"test": {"splitFraction": 0.1}},
        evaluation={
            "metrics": ["perplexity", "exactMatch", "loss"],
            "maxGenerationRows": 16,
            "maxNewTokens": 16,
        },
        hyperparameters={
            "maxSteps": 300,
            "batchSize": 16,
            "loggingSteps": 25,
            "evalSteps": 100,
            "saveSteps": 100,
        },
    )
    cfg = harness.trainer_config(spec, name=name, namespace="t", work_dir=tmp_path / "work")
    run = harness.run(cfg, tmp_path / "run")
    assert run.returncode == 0, run.output[-4000:]
    term = run.termination
    assert term is not None and term["outcome"] == "Succeeded" and term["reason"] == "Completed"
    m = term["metrics"]
    before, after = m["initial_eval_loss"], m["eval_loss"]
    record_property("eval_loss_before", before)
    record_property("eval_loss_after", after)
    print(
        f"\n[lora counting] eval_loss {before:.4f} -> {after:.4f}, perplexity "
        f"{m['initial_perplexity']:.1f} -> {m['perplexity']:.2f}, {run.seconds:.1f}s"
    )
    assert after < 0.15 * before, (before, after)
    assert m["eval_mean_token_accuracy"] > 0.9
    ev = term["evaluation"]
    print(f"[lora counting] test: {ev}")
    assert ev["perplexity"]["tuned"] < 0.5 * ev["perplexity"]["base"]
    assert ev["exactMatch"]["base"] == 0.0 and ev["exactMatch"]["tuned"] >= 0.5
    # one readable line per logging step
    assert len(run.lines("kubetune.train: step ")) >= 300 // 25

    arts = term["artifacts"]
    prefix = cfg["runPrefix"]
    assert arts["adapterUri"] == prefix + "adapter/"
    assert arts["mergedModelUri"] == prefix + "merged/"
    local = trainer_s3.download(prefix, tmp_path / "artifacts")
    base_dir = trainer_s3.download(trainer_s3.uri("models/tiny-llama") + "/", tmp_path / "base")

    # manifest: every file with its size and sha256, matching S3 and the termination message
    manifest_bytes = (local / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == arts["manifestSha256"]
    manifest = trainer_s3.json(arts["manifestUri"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/config.json",
        "merged/model.safetensors",
        "metrics.json",
    } <= set(listed)
    assert any(p.startswith("tensorboard/") for p in listed), "tensorboard events uploaded"
    for path, f in listed.items():
        data = (local / path).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], path
        head = trainer_s3.s3.head(prefix + path)
        assert head is not None and head["ContentLength"] == f["size"]
        # the artifacts' S3 checksum: the CRC64-NVME of these very bytes, which S3 checked
        crc = checksums.crc64nvme(data).to_bytes(8, "big")
        assert head["ChecksumCRC64NVME"] == base64.b64encode(crc).decode(), path
    assert manifest["config"]["spec"]["method"]["type"] == "lora"
    assert manifest["baseModel"]["source"] == spec["model"]["s3Uri"]
    assert len(manifest["baseModel"]["revision"]) == 64
    assert len(manifest["datasets"]["train"]["fingerprint"]) == 64
    assert manifest["datasets"]["train"]["files"][0]["sha256"]
    assert {"torch", "transformers", "peft", "trl"} <= set(manifest["versions"])
    assert manifest["metrics"]["eval_loss"] == pytest.approx(after)

    # the adapter loads with PEFT and changes what the model generates
    tok = AutoTokenizer.from_pretrained(local / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    base_text = _generate(base, tok, PROMPT)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), local / "adapter"
    ).eval()
    tuned_text = _generate(tuned, tok, PROMPT)
    print(f"[lora counting] base: {base_text!r}  adapter: {tuned_text!r}")
    assert tuned_text != base_text
    assert tuned_text.split()[:2] == ["18", "19"], tuned_text

    # the merged model is a plain transformers model with the same logits as base+adapter
    merged = AutoModelForCausalLM.from_pretrained(local / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = tok([PROMPT + " 18 19", "the capital of france is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = tuned(**ids).logits
        b = merged(**ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    assert _generate(merged, AutoTokenizer.from_pretrained(local / "merged"), PROMPT) == tuned_text


def test_quickstart_example_runs(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    """examples/quickstart.yaml as the demo runs it (text format, splitFraction, LoRA), with
    the S3 locations pointed at this session's prefix and fewer steps."""
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["model"]["s3Uri"] = trainer_s3.uri("models/tiny-llama") + "/"
    spec["dataset"]["s3Uri"] = trainer_s3.uri("datasets/quickstart/train.jsonl")
    spec["output"]["uri"] = trainer_s3.uri("output")
    spec = merge(spec, {"hyperparameters": {"maxSteps": 10, "evalSteps": 5, "saveSteps": 5}})
    _, run = train(spec, unique("quickstart"), tmp_path)
    t = run.termination
    assert t is not None and t["outcome"] == "Succeeded"
    assert t["metrics"]["eval_loss"] < t["metrics"]["initial_eval_loss"]
    assert set(t["artifacts"]) >= {"adapterUri", "mergedModelUri", "manifestUri", "checkpointUri"}


@pytest.mark.slow
def test_messages_assistant_only_loss(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    """Chat rows with the tiny tokenizer's template ({% generation %} markers): the loss is on
    assistant turns only and falls."""
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={
            "s3Uri": trainer_s3.uri("datasets/chat/train.jsonl"),
            "format": "messages",
            "maxSeqLength": 96,
            "validation": {"s3Uri": trainer_s3.uri("datasets/chat/validation.jsonl")},
        },
        hyperparameters={
            "maxSteps": 200,
            "batchSize": 16,
            "learningRate": 0.005,
            "loggingSteps": 20,
            "evalSteps": 100,
            "saveSteps": 100,
        },
    )
    _, run = train(spec, unique("chat"), tmp_path)
    m = run.termination["metrics"]  # type: ignore[index]
    print(f"\n[messages] eval_loss {m['initial_eval_loss']:.4f} -> {m['eval_loss']:.4f}")
    assert m["eval_loss"] < 0.5 * m["initial_eval_loss"]


def test_messages_template_without_generation_markers_is_a_config_error(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={
            "s3Uri": trainer_s3.uri("datasets/chat/train.jsonl"),
            "format": "messages",
            "validation": None,
            "chatTemplate": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        },
        hyperparameters={"evalStrategy": "no", "evalSteps": None},
    )
    _, run = train(spec, unique("chat-nomarkers"), tmp_path, returncode=10)
    t = run.termination
    assert t is not None and t["reason"] == "ConfigError" and t["retryable"] is False
    assert "{% generation %}" in t["message"] and "assistantOnlyLoss" in t["message"]


def test_early_stopping_stops_before_max_steps(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """threshold 100: no evaluation can count as an improvement, so with patience 1 training
    stops at the second evaluation (step 4 of 60), keeping the best (first) checkpoint."""
    spec = causal_spec(
        trainer_s3,
        "lora",
        hyperparameters={
            "maxSteps": 60,
            "evalSteps": 2,
            "saveSteps": 2,
            "earlyStopping": {"patience": 1, "threshold": 100},
        },
    )
    _, run = train(spec, unique("early"), tmp_path)
    m = run.termination["metrics"]  # type: ignore[index]
    assert m["train_steps"] == 4, m


def test_packing_and_gradient_checkpointing(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """Text rows packed into 64-token sequences (trl bfd), activations recomputed."""
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={
            "s3Uri": trainer_s3.uri("datasets/quickstart/train.jsonl"),
            "format": "text",
            "packing": True,
            "validation": {"s3Uri": None, "splitFraction": 0.1},
        },
        hyperparameters={"gradientCheckpointing": True, "maxSteps": 4, "evalSteps": 4},
    )
    _, run = train(spec, unique("packing"), tmp_path)
    m = run.termination["metrics"]  # type: ignore[index]
    assert m["train_steps"] == 4 and m["eval_loss"] > 0


def test_parquet_shards_pvc_model_and_csv_validation(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    """Training data as a prefix of parquet shards in S3, the model and a CSV validation file
    on a (locally mounted) PVC."""
    import pandas as pd
    from kubetune_trainer.testing import synthetic, tiny

    shards = trainer_s3.uri(f"shards/{unique('pq')}")
    rows = synthetic.counting_rows(96, seed=3)
    for i in range(3):
        f = tmp_path / f"part-{i}.parquet"
        pd.DataFrame(rows[i * 32 : (i + 1) * 32]).to_parquet(f)
        trainer_s3.put(f"{shards}/part-{i:05d}.parquet", f.read_bytes())
    trainer_s3.put(f"{shards}/_SUCCESS", b"")
    pvc_root = tmp_path / "pvc"
    claim = pvc_root / "models-claim"
    claim.mkdir(parents=True)
    (claim / "tiny-llama").symlink_to(tiny.tiny_llama(), target_is_directory=True)
    data_claim = pvc_root / "data-claim" / "eval"
    data_claim.mkdir(parents=True)
    pd.DataFrame(synthetic.counting_rows(16, seed=4)).to_csv(data_claim / "val.csv", index=False)
    spec = causal_spec(
        trainer_s3,
        "lora",
        model={"s3Uri": None, "pvc": {"claimName": "models-claim", "path": "/tiny-llama"}},
        dataset={
            "s3Uri": shards + "/",
            "validation": {
                "s3Uri": None,
                "pvc": {"claimName": "data-claim", "path": "/eval/val.csv"},
            },
        },
        hyperparameters={"maxSteps": 2, "evalSteps": 2, "saveStrategy": "no"},
    )
    _, run = train(spec, unique("shards"), tmp_path, env={"KUBETUNE_PVC_ROOT": str(pvc_root)})
    assert run.lines("dataset: 3 shard(s) from")
    manifest = trainer_s3.json(run.termination["artifacts"]["manifestUri"])  # type: ignore[index]
    assert [f["name"] for f in manifest["datasets"]["train"]["files"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert manifest["datasets"]["validation"]["rows"] == 16
    assert manifest["baseModel"]["kind"] == "pvc"
    assert manifest["baseModel"]["source"] == "pvc://models-claim/tiny-llama"


def test_inline_rows_with_text_template(trainer_s3: TrainerS3, tmp_path: Path) -> None:
    """dataset.textTemplate builds each row's text from its columns (inline rows here)."""
    rows = [{"quote": f"the capital of {c} is {t} .", "author": "atlas"} for c, t in
            [("france", "paris"), ("italy", "rome"), ("spain", "madrid"), ("peru", "lima")]]  # fmt: skip
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={
            "s3Uri": None,
            "inline": rows,
            "format": "text",
            "textTemplate": "Quote: {quote} Author: {author}",
            "validation": None,
        },
        hyperparameters={
            "maxSteps": 2,
            "evalStrategy": "no",
            "evalSteps": None,
            "saveStrategy": "no",
        },
    )
    _, run = train(spec, unique("template"), tmp_path)
    manifest = trainer_s3.json(run.termination["artifacts"]["manifestUri"])  # type: ignore[index]
    assert manifest["datasets"]["train"]["source"] == "inline (dataset)"
    assert manifest["datasets"]["train"]["usedRows"] == 4
