"""kubetune estimate: the memory model against every measured peak in bench/results, and the
pure parts (shapes, trainable parameters, steps, bad rows) on small inputs."""

from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from kubetune_api import estimate as est
from kubetune_api.v1alpha1 import FineTuneJobSpec, HoldoutSpec, ValidationSpec

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"

# The bench's model shapes (bench/trainer_bench.py SHAPES) as config.json would give them.
CONFIGS = {
    "1b": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
           "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True},
    "8b": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
           "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False},
}  # fmt: skip


def measured_rows() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        for r in json.loads(path.read_text()):
            if isinstance(r, dict) and "peak_allocated_gib" in r:
                rows.append(r | {"_file": path.name})
    return rows


def bench_lengths(n: int = 20000) -> list[int]:
    """Row lengths from the bench's own law (bench/trainer_bench_cases.py: lognormal, mean 300,
    sigma 0.9, clipped to [16, seq_len]): what the estimator gets from a dataset sample."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import trainer_bench_cases as tb
    finally:
        sys.path.pop(0)
    rng = random.Random(0)
    return [max(tb.LEN_MIN, round(rng.lognormvariate(tb.LEN_MU, tb.LEN_SIGMA))) for _ in range(n)]


def spec_for(case: dict[str, Any]) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"hubId": "bench/" + case["model"]},
            "dataset": {"s3Uri": "s3://bench/data.jsonl", "maxSeqLength": case["seq_len"]},
            "method": {"type": case["method"]},
            "hyperparameters": {
                "batchSize": case["micro_batch"],
                "gradientAccumulationSteps": case["grad_accum"],
                "gradientCheckpointing": case["grad_ckpt"],
                "maxSteps": case["steps"],
            },
            "output": {"uri": "s3://bench/out"},
        }
    )


def estimate_row(r: dict[str, Any], lengths: list[int]) -> float:
    c = r["case"]
    spec = spec_for(c)
    shape = est.shape_from_config(CONFIGS[c["model"]])
    tokens = est.peak_micro_batch_tokens(
        lengths, c["micro_batch"], c["steps"] * c["grad_accum"],
        padding_free=c["padding_free"], max_len=c["seq_len"],
    )  # fmt: skip
    mem = est.peak_memory(shape, spec, tokens, liger=c["liger"], compile=c["compile"])
    # The bench's peak is torch.cuda.max_memory_allocated; sdpa with a block-diagonal mask
    # (padding-free without varlen kernels) materialises one layer's scores on top.
    extra = 0.0
    if c["padding_free"] and c["attn"] == "sdpa":
        extra = CONFIGS[c["model"]]["num_attention_heads"] * tokens**2 * 2 / est.GIB
    return mem.peak_gib + extra


def test_memory_estimate_within_20_percent_of_every_measured_peak() -> None:
    rows = measured_rows()
    assert len(rows) >= 14, "bench/results lost measured rows"
    lengths = bench_lengths()
    report = []
    for r in rows:
        got = estimate_row(r, lengths)
        want = r["peak_allocated_gib"]
        err = (got - want) / want
        c = r["case"]
        report.append((r["_file"], c["model"], c["method"], c["variant"], want, got, err))
    worst = max(abs(e[-1]) for e in report)
    table = "\n".join(f"{f} {m} {me} {v}: measured {w:.2f} GiB, estimated {g:.2f} ({e:+.1%})"
                      for f, m, me, v, w, g, e in report)  # fmt: skip
    print("\n" + table)
    assert worst <= 0.20, table


def test_weights_from_shapes_match_the_measured_memory_before_training() -> None:
    """The static part is exact arithmetic: the bench's memory after building (and
    quantizing) the model, before the first step, within 2 %."""
    for r in measured_rows():
        c = r["case"]
        shape = est.shape_from_config(CONFIGS[c["model"]])
        spec = spec_for(c)
        trainable = est.trainable_params(shape, spec)
        assert trainable == r["params_lora"]
        got = est.weight_bytes(shape, spec, trainable) / est.GIB
        assert got == pytest.approx(r["memory_before_train_gib"], rel=0.02), c


def test_throughput_table_is_the_one_in_docs_benchmarks() -> None:
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    numbers = {int(n.replace(",", "")) for n in re.findall(r"\*\*([\d,]+)\*\*", doc)}
    numbers |= {int(n.replace(",", "")) for n in re.findall(r"\| ([\d,]{5,}) \|", doc)}
    for points in est.THROUGHPUT_H100.values():
        for _, tps in points:
            assert int(tps) in numbers, tps


def test_steps_tokens_and_bad_rows_from_a_sample() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hubId": "org/m"},
            "dataset": {"s3Uri": "s3://bkt/d.jsonl", "format": "messages", "maxSeqLength": 64},
            "method": {"type": "lora"},
            "hyperparameters": {"batchSize": 4, "gradientAccumulationSteps": 2, "epochs": 3},
            "output": {"uri": "s3://bkt/out"},
        }
    )
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    lines = [json.dumps(good)] * 40
    lines[6] = '{"messages": [{"role": "robot", "content": "x"}]}'
    lines[9] = "not json"
    sample = est.sample_jsonl("\n".join(lines) + "\n", None, "s3://bkt/d.jsonl", complete=True)
    e = est.estimate(spec, CONFIGS["1b"], None, sample)
    assert [(b.line, b.field) for b in e.bad_rows] == [(7, "messages[0].role"), (10, "(line)")]
    assert e.rows_total == 40 and e.train_rows == 38
    assert e.steps_per_epoch == math.ceil(38 / 8) and e.total_steps == 3 * e.steps_per_epoch
    assert e.memory.peak_gib > e.memory.weights_gib > 2.0
    assert e.gpu_hours == pytest.approx(e.wall_seconds / 3600)
    # rows held out for validation and test do not train
    held = spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(
                update={
                    "validation": ValidationSpec(split_fraction=0.25),
                    "test": HoldoutSpec(split_fraction=0.25),
                }
            )
        }
    )
    assert est.estimate(held, CONFIGS["1b"], None, sample).train_rows == 19


def test_partial_sample_extrapolates_rows_by_bytes() -> None:
    line = json.dumps({"text": "x" * 90})
    text = "\n".join([line] * 10) + "\n" + line[:20]  # a cut last line
    s = est.sample_jsonl(text, total_bytes=100 * (len(line) + 1), source="s3://b/k", complete=False)
    assert len(s.rows) == 10 and s.malformed == [] and s.total_rows == 100 and not s.exact


def test_fsdp_shards_weights_and_optimizer_but_not_activations() -> None:
    base = {
        "model": {"hubId": "org/m"},
        "dataset": {"s3Uri": "s3://bkt/d.jsonl"},
        "method": {"type": "full"},
        "output": {"uri": "s3://bkt/out"},
    }
    shape = est.shape_from_config(CONFIGS["8b"])
    one = est.peak_memory(shape, FineTuneJobSpec.model_validate(base), 4096)
    fsdp = FineTuneJobSpec.model_validate(
        base | {"resources": {"gpus": 8, "distribution": {"strategy": "fsdp"}}}
    )
    eight = est.peak_memory(shape, fsdp, 4096, world_size=8)
    assert eight.weights_gib == pytest.approx(one.weights_gib / 8)
    assert eight.optimizer_gib == pytest.approx(one.optimizer_gib / 8)
    assert eight.activations_gib == one.activations_gib
    # full fine-tuning of 8B on one GPU: 16 GB weights + 2+8 bytes a parameter of state
    assert one.weights_gib + one.optimizer_gib == pytest.approx(shape.params * 12 / est.GIB)


# -- spec.dryRun: the operator side ----------------------------------------------------------


def test_dry_run_renders_one_cpu_pod_without_gpu_or_queue() -> None:
    from kubetune_operator import render
    from kubetune_operator.render import Owner, Run
    from kubetune_operator.settings import OperatorSettings

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"hubId": "org/model"},
            "dataset": {"s3Uri": "s3://data/train.jsonl"},
            "output": {"uri": "s3://bucket/out"},
            "resources": {"gpus": 8, "nodes": 2, "gpuType": "H100"},
            "queueName": "gpu-queue",
            "dryRun": True,
        }
    )
    settings = OperatorSettings(trainer_image="trainer:test", lease_namespace="ops")
    objs = render.run_objects(spec, Owner("ns", "j", "0b7c1c9e-1111"), Run(1, 1, "h"), settings)
    (job,) = [o for o in objs if o["kind"] == "Job"]
    assert job["metadata"]["annotations"][render.ANN_DRY_RUN] == "true"
    assert render.KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]
    assert job["spec"]["completions"] == 1 and "completionMode" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    text = json.dumps(pod)
    assert "nvidia.com/gpu" not in text and "H100" not in text
    assert not any(o["kind"] == "Service" for o in objs)
    config = json.loads(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.json"])
    assert config["spec"]["dryRun"] is True and config["spec"]["resources"]["gpus"] == 0


def _finished_job(dry_run: bool) -> dict[str, Any]:
    ann = {"kubetune.io/dry-run": "true"} if dry_run else {}
    return {
        "metadata": {"name": "j-run-1", "annotations": ann},
        "spec": {"completions": 1},
        "status": {
            "succeeded": 1,
            "completionTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }


def _pod(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "j-run-1-abc", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 0, "message": json.dumps(result)}},
                }
            ],
        },
    }


def test_status_takes_the_estimate_only_from_a_dry_run_job() -> None:
    from kubetune_operator import status

    result = {"outcome": "Succeeded", "reason": "Completed", "message": "dry run: ...",
              "retryable": False, "artifacts": {}, "metrics": {}, "estimate": {"totalSteps": 3}}  # fmt: skip
    st = status.run_state(
        _finished_job(True), [_pod(result)], {}, same_run=True, suspend_intent=False
    )
    assert st.phase == "Succeeded" and st.estimate == {"totalSteps": 3}
    # the same result from an ordinary run's pod is no success (a pod cannot skip artifacts)
    st = status.run_state(
        _finished_job(False), [_pod(result)], {}, same_run=True, suspend_intent=False
    )
    assert st.phase == "Failed" and st.reason == "ArtifactsMissing" and st.estimate is None
    # a dry run that reports no estimate is not a success either
    no_est = {k: v for k, v in result.items() if k != "estimate"}
    st = status.run_state(
        _finished_job(True), [_pod(no_est)], {}, same_run=True, suspend_intent=False
    )
    assert st.phase == "Failed"


def test_estimate_paths_import_no_ml_library() -> None:
    """The CLI's estimate, the dry-run pod's entry and the API server stay torch-free."""
    import subprocess

    code = (
        "import sys, kubetune_api.estimate, kubetune_trainer.__main__, kubetune_trainer.dryrun\n"
        "import kubetune.cli\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
