#!/usr/bin/env python3
"""Trainer throughput benchmark: the common SFT recipe (baseline) against kubetune's defaults.

Kernel-level ablations only. Its "ours" rebuilds the trainer's recipe from the same switches
instead of running the trainer, so it is not a product measurement (issue 16 point 6): the
product against the seed's script is bench/product_bench.py, which runs kubetune-train itself.

One process per case: the driver spawns `python bench/trainer_bench.py --worker '<case json>'`
for each case, so no case inherits another's allocator state, compiled kernels or monkey
patches, and prints one JSON line per case (also appended to `--out`).

Each case trains `steps` optimizer steps with trl's SFTTrainer on synthetic, pre-tokenized data
and reports tokens/s after `warmup` steps (real, non-pad tokens), MFU, peak GPU memory during
training, step-time percentiles and the loss of every step. See docs/benchmarks.md for the
formulas, the data distribution and the results.

With `profile_steps=N` a case trains N more optimizer steps after its `steps` and runs
torch.profiler over each of them (one profiler session per step): the result's `profile` holds,
per profiled step, the wall time, the summed GPU kernel time, kernel launches, host-device syncs,
aten op count and the top kernels (top aten ops on CPU), i.e. whether a step is CPU- or GPU-bound.
The profiled steps are not part of tokens/s, the step-time stats or `losses`.

Examples:
    python bench/trainer_bench.py --suite smoke --device cpu        # tiny model, CPU, checks wiring
    python bench/trainer_bench.py --suite next --list               # print a suite's cases, run none
    python bench/trainer_bench.py --suite next --timeout 300 --out /tmp/next.jsonl   # on a GPU
    python bench/trainer_bench.py --suite 1b --out /tmp/1b.jsonl     # on a GPU
    python bench/trainer_bench.py --case model=1b,method=qlora,variant=ours
    python bench/trainer_bench.py --case model=8b,method=lora,variant=ours-p,profile_steps=2
    python bench/trainer_bench.py --case model=1b,method=lora,variant=ours-r,compile=regional
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "trainer-image"))

from step_profile import bench_sync, profile_overview, profile_summary  # noqa: E402

H100_BF16_DENSE_PEAK = 989e12  # FLOP/s, H100 SXM dense bf16 (datasheet)
RESULT_PREFIX = "BENCH_RESULT "

# Real architectures' shapes (from their published config.json); weights are random.
MODELS: dict[str, dict[str, Any]] = {
    "1b": {  # Llama-3.2-1B
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_scaling_factor": 32.0,
    },
    "8b": {  # Llama-3.1-8B
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_scaling_factor": 8.0,
    },
    "tiny": {  # CPU wiring checks only
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "rope_scaling_factor": 8.0,
    },
}

# Instruction-tuning sequence lengths (prompt + response, tokens): lognormal, mean 300,
# median ~200, long tail clipped to the max length.
LEN_MU = math.log(300) - 0.9**2 / 2
LEN_SIGMA = 0.9
LEN_MIN = 16

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

DEFAULT_CASE: dict[str, Any] = {
    "model": "1b",
    "method": "lora",  # lora | qlora | full
    "variant": "baseline",  # label only
    "seq_len": 2048,
    "micro_batch": 4,
    "grad_accum": 4,
    "steps": 50,
    "warmup": 5,
    "attn": "sdpa",  # sdpa | kubetune_varlen | flash_attention_2 | flex_attention | eager
    "padding_free": False,
    "liger": False,
    "grad_ckpt": True,  # trl SFTConfig's default
    "compile": False,  # False | True (trl's torch_compile: whole model) | "regional"
    "quant_path": "replace",  # replace (quantize in place on GPU) | reload (save, from_pretrained)
    "expandable": False,  # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    "seed": 42,
    "device": "cuda",
    "lr": 2e-4,
    # torch.profiler over this many extra optimizer steps after `steps` (0: off); see run_case.
    "profile_steps": 0,
    "offload": False,  # trl SFTConfig(activation_offloading=True): activations to pinned CPU memory
    # qlora only. none: as SFTTrainer leaves it (16-bit embeddings, norms, LM head); peft:
    # peft.prepare_model_for_kbit_training first (casts every non-4-bit parameter to float32).
    "kbit_prep": "none",
    "optim": "adamw_torch",  # SFTConfig optim, e.g. paged_adamw_8bit
    "lora_dropout": 0.05,
    "dtype": "auto",  # model weights: auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    # PEFT casts each LoRA layer's input to the adapter's dtype (fp32) before dropout and A;
    # autocast casts it back to bf16 for the matmul. False turns that off (peft's
    # cast_input_dtype_enabled): two fewer kernels per LoRA layer and pass, no fp32 copies.
    "input_cast": True,
}

# Values a string-valued case key may take (checked by parse_case and run_case).
CHOICES: dict[str, tuple[Any, ...]] = {
    "method": ("lora", "qlora", "full"),
    "compile": (False, True, "regional"),
    "kbit_prep": ("none", "peft"),
    "quant_path": ("replace", "reload"),
    "dtype": ("auto", "bf16", "fp32"),
}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def baseline(model: str, method: str, **kw: Any) -> dict[str, Any]:
    """The common recipe: SFTTrainer defaults (gradient checkpointing on, padded batches of 4,
    sdpa), LoRA r16/a32/d0.05 on all projections, nf4 double-quant bf16 compute for QLoRA;
    16 rows per optimizer step (4 x 4 accumulation)."""
    return {**DEFAULT_CASE, "model": model, "method": method, "variant": "baseline", **kw}


def ours(model: str, method: str, **kw: Any) -> dict[str, Any]:
    """What docs/benchmarks.md calls "ours": the trainer's defaults on an H100 (speed.plan:
    padding-free rows through varlen attention, expandable segments) plus Liger RMSNorm/RoPE/
    SwiGLU (measured not faster, so off in the trainer since) and the same 16 rows per optimizer
    step in one micro-batch."""
    case = {
        **DEFAULT_CASE,
        "model": model,
        "method": method,
        "variant": "ours",
        "attn": "kubetune_varlen",
        "padding_free": True,
        "liger": True,
        "micro_batch": 16,
        "grad_accum": 1,
        "grad_ckpt": method == "qlora",
        "expandable": True,
    }
    case.update(kw)
    return case


def suite(name: str) -> list[dict[str, Any]]:
    if name == "smoke":
        cpu = {"device": "cpu", "steps": 4, "warmup": 1, "seq_len": 256}
        return [
            baseline("tiny", "lora", **cpu, micro_batch=2, grad_accum=2),
            ours("tiny", "lora", **cpu, attn="sdpa", liger=False, micro_batch=4),
            baseline("tiny", "full", **cpu, micro_batch=2, grad_accum=2),
        ]
    if name == "gpu-smoke":
        s = {"steps": 6, "warmup": 2}
        return [
            baseline("1b", "lora", **s),
            ours("1b", "lora", **s),
            baseline("1b", "qlora", **s),
            ours("1b", "qlora", **s),
        ]
    if name == "1b":
        return [
            baseline("1b", "lora"),
            ours("1b", "lora"),
            baseline("1b", "qlora"),
            ours("1b", "qlora"),
            # ablations: one change at a time from ours
            ours("1b", "lora", variant="ours-no-liger", liger=False),
            ours("1b", "lora", variant="ours-sdpa-padding-free", attn="sdpa"),
            ours("1b", "lora", variant="ours-padded-sdpa", attn="sdpa", padding_free=False),
            ours("1b", "lora", variant="ours-mb8x2", micro_batch=8, grad_accum=2),
            ours("1b", "lora", variant="ours-ckpt", grad_ckpt=True),
            ours("1b", "qlora", variant="ours-no-ckpt", grad_ckpt=False),
            ours("1b", "qlora", variant="ours-reload-quant", quant_path="reload", steps=10),
            ours("1b", "lora", variant="ours-compile", compile=True),
        ]
    if name == "8b":
        # 8B LoRA without checkpointing: 16 rows (up to ~10k tokens) in one micro-batch would
        # need ~60 GB of activations, so ours takes 8 rows x 2.
        return [
            baseline("8b", "qlora"),
            ours("8b", "qlora"),
            baseline("8b", "lora"),
            ours("8b", "lora", micro_batch=8, grad_accum=2),
        ]
    if name == "final":
        # last device call: the 8B LoRA pair (30 steps), a memory-lean QLoRA variant, 1B compile
        return [
            baseline("8b", "lora", steps=30),
            ours("8b", "lora", micro_batch=8, grad_accum=2, steps=30),
            ours("8b", "qlora", variant="ours-mb4x4", micro_batch=4, grad_accum=4, steps=20),
            ours("1b", "lora", variant="ours-compile", compile=True, steps=20),
        ]
    if name == "8b-ablations":
        s = {"steps": 20}
        return [
            ours("8b", "qlora", variant="ours-mb4x4", micro_batch=4, grad_accum=4, **s),
            ours("8b", "qlora", variant="ours-no-expandable", expandable=False, **s),
            ours("8b", "qlora", variant="ours-no-liger", liger=False, **s),
            ours(
                "8b", "lora", variant="ours-no-liger", micro_batch=8, grad_accum=2, liger=False, **s
            ),
            ours("8b", "lora", variant="ours-ckpt-mb16", grad_ckpt=True, **s),
        ]
    if name == "1b-ablations":
        s = {"steps": 20}
        return [
            ours("1b", "lora", variant="ours-compile", compile=True, **s),
            ours("1b", "lora", variant="ours-ckpt", grad_ckpt=True, **s),
            ours("1b", "qlora", variant="ours-no-ckpt", grad_ckpt=False, **s),
        ]
    if name in ("next", "next-1b"):
        return next_cases("8b" if name == "next" else "1b")
    raise SystemExit(f"unknown suite {name!r}")


SUITES = (
    "smoke",
    "gpu-smoke",
    "1b",
    "8b",
    "final",
    "8b-ablations",
    "1b-ablations",
    "next",
    "next-1b",
)


def next_cases(model: str) -> list[dict[str, Any]]:
    """The next device call, in priority order. QLoRA, all over the same 12 steps so the peaks
    compare: the baseline twice, as trl runs it and as the seed's recipe does (peft's
    prepare_model_for_kbit_training first: fp32 embeddings, norms and LM head, +2 GiB on 8B; the
    trainer did this too until commit 27be932); ours 16 x 1, then 2 more steps under the profiler
    (where a step's time goes: GPU busy fraction, kernel launches, syncs); ours at 8 x 2, and
    without PEFT's fp32 input casts; the memory target through activation offloading at 8 x 2 and
    16 x 1. LoRA: 8 x 2 profiled; the MFU target through one large padding-free micro-batch (64
    rows) with checkpointing, eager and with each decoder layer compiled. Liger off everywhere
    (the trainer's default). About 10 minutes for 8B (each process ~30 s of start-up, build and
    quantization; compiling ~70 s); run the rest with --only if the call is cut short."""
    off = {"liger": False}
    q = {"steps": 12, "warmup": 5, **off}
    mb8 = {"micro_batch": 8, "grad_accum": 2}
    mb64 = {"micro_batch": 64, "grad_accum": 1, "grad_ckpt": True}
    return [
        baseline(model, "qlora", steps=12, warmup=5),
        # the seed's QLoRA recipe calls prepare_model_for_kbit_training before SFTTrainer
        baseline(
            model, "qlora", variant="baseline-seed-prep", kbit_prep="peft", steps=12, warmup=5
        ),
        ours(model, "qlora", variant="ours-profile", profile_steps=2, **q),
        ours(model, "qlora", variant="ours-mb8x2", **mb8, **q),
        ours(model, "qlora", variant="ours-no-input-cast", input_cast=False, **q),
        ours(model, "qlora", variant="ours-mb8x2-offload", offload=True, **mb8, **q),
        ours(model, "qlora", variant="ours-offload", offload=True, **q),
        ours(
            model, "lora", variant="ours-profile", steps=8, warmup=3, profile_steps=2, **mb8, **off
        ),
        ours(model, "lora", variant="ours-ckpt-mb64", steps=8, warmup=3, **mb64, **off),
        ours(
            model,
            "lora",
            variant="ours-ckpt-mb64-regional",
            compile="regional",
            steps=10,
            warmup=5,
            **mb64,
            **off,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Worker: one case
# ---------------------------------------------------------------------------------------------


def synthetic_rows(n: int, seq_len: int, vocab: int, seed: int) -> list[list[int]]:
    """Rows with lognormal lengths and learnable structure (a Zipf unigram law, and a motif
    repeated with 10% noise), so the loss falls within 50 steps and two recipes' curves can be
    compared step by step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(LEN_MU, LEN_SIGMA, n)), LEN_MIN, seq_len).astype(int)
    # Tokens from a Zipf(1.1) law over 2048 ids (as word frequencies are), clear of special ids.
    lo = min(1000, vocab // 4)
    k = min(2048, vocab - lo)
    ranks = np.arange(1, k + 1)
    probs = ranks**-1.1 / (ranks**-1.1).sum()
    rows = []
    for length in lengths:
        motif = lo + rng.choice(k, int(rng.integers(8, 65)), p=probs)
        row = np.resize(motif, length)
        noise = rng.random(length) < 0.1
        row[noise] = lo + rng.choice(k, int(noise.sum()), p=probs)
        rows.append(row.tolist())
    return rows


def tiny_tokenizer() -> Any:
    """A stand-in tokenizer: SFTTrainer wants one for pad/eos ids; the data is pre-tokenized."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def llama_config(shape: dict[str, Any], attn: str) -> Any:
    from transformers import LlamaConfig

    s = dict(shape)
    factor = s.pop("rope_scaling_factor")
    # transformers 5 folds rope_theta/rope_scaling into rope_parameters (checked at runtime)
    cfg = LlamaConfig(  # type: ignore[call-arg]
        **s,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg._attn_implementation = attn
    return cfg


def bnb_config() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def quantize_in_place(model: Any) -> Any:
    """QLoRA base without a save/load round trip: the bf16 model already on the GPU gets its
    Linear layers (all but lm_head) swapped for bitsandbytes Linear4bit through transformers'
    own `replace_with_bnb_linear`, each weight quantized from the bf16 tensor on the GPU; the
    model is then marked as `from_pretrained(..., quantization_config=...)` marks it."""
    import bitsandbytes as bnb
    import torch
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers import AutoHfQuantizer

    qc = bnb_config()
    skip = ["lm_head"]
    originals = {
        name: mod.weight.data
        for name, mod in model.named_modules()
        if type(mod) is torch.nn.Linear and name.split(".")[-1] != "lm_head"
    }
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=qc)
    for name, weight in originals.items():
        mod = model.get_submodule(name)
        mod.weight = bnb.nn.Params4bit(  # type: ignore[misc]
            data=weight,
            requires_grad=False,
            quant_type=qc.bnb_4bit_quant_type,
            compress_statistics=qc.bnb_4bit_use_double_quant,
            quant_storage=qc.bnb_4bit_quant_storage,
            module=mod,
        ).to(weight.device)
    originals.clear()
    quantizer = AutoHfQuantizer.from_config(qc, pre_quantized=False)
    model.hf_quantizer = quantizer
    model.config.quantization_config = qc
    model.is_loaded_in_4bit = True
    model.is_4bit_serializable = True
    model.is_quantized = True
    return model


def use_bf16(case: dict[str, Any]) -> bool:
    """bf16 weights and bf16 mixed precision: on cuda unless dtype=fp32; on cpu only if asked."""
    if case["dtype"] == "auto":
        return bool(case["device"] == "cuda")
    return bool(case["dtype"] == "bf16")


def build_model(case: dict[str, Any], workdir: Path) -> tuple[Any, dict[str, float]]:
    import torch
    from transformers import AutoModelForCausalLM

    timings: dict[str, float] = {}
    cfg = llama_config(MODELS[case["model"]], case["attn"])
    device = torch.device(case["device"])
    dtype = torch.bfloat16 if use_bf16(case) else torch.float32
    torch.manual_seed(case["seed"])
    t0 = time.perf_counter()
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=case["attn"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    timings["build_s"] = time.perf_counter() - t0
    if case["method"] == "qlora":
        t0 = time.perf_counter()
        if case["quant_path"] == "reload":
            path = workdir / "bf16-model"
            model.save_pretrained(path)
            del model
            torch.cuda.empty_cache()
            timings["save_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(
                path,
                quantization_config=bnb_config(),
                dtype=torch.bfloat16,
                attn_implementation=case["attn"],
                device_map={"": device},
            )
            timings["reload_quantize_s"] = time.perf_counter() - t1
        else:
            model = quantize_in_place(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings["quantize_s"] = time.perf_counter() - t0
    return model, timings


def matmul_params(model: Any, shape: dict[str, Any]) -> tuple[int, int]:
    """(N, N_lora): weights that take part in a matmul per token (every Linear of the decoder
    layers, plus the LM head counted once even when tied to the embedding; the embedding lookup
    is no matmul), and the LoRA A/B weights."""
    d, ff, nl = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    hd, h, kv = shape["head_dim"], shape["num_attention_heads"], shape["num_key_value_heads"]
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = 3 * d * ff
    n = nl * (attn + mlp) + d * shape["vocab_size"]
    n_lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return n, n_lora


def param_bytes(model: Any) -> tuple[dict[str, int], int]:
    """(bytes by dtype, trainable bytes) of model.parameters(); 4-bit weights are uint8 storage."""
    by_dtype: dict[str, int] = {}
    trainable = 0
    for prm in model.parameters():
        n = prm.numel() * prm.element_size()
        key = str(prm.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + n
        trainable += n if prm.requires_grad else 0
    return dict(sorted(by_dtype.items())), trainable


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Train one case and measure it.

    With profile_steps = P > 0 the trainer runs steps + P optimizer steps: the first `steps` are
    measured as without profiling (tokens/s, step times, `losses`); each of the P steps after
    them runs under its own torch.profiler session, from one on_step_end to the next (the same
    window as the step times: batch fetch, forward/backward of every micro-batch, optimizer, and
    the trainer's logging of the step before) and goes only into `profile` (and
    `profile_losses`). The dataset keeps `steps` optimizer steps of rows, so the profiled steps
    are the start of a second epoch and the measured steps see the same rows in the same order
    as an unprofiled run; the learning-rate schedule is kept over `steps` (the profiled steps run
    at lr 0), so `losses` match an unprofiled run's too."""
    import numpy as np
    import torch
    from datasets import Dataset
    from kubetune_trainer import speed
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    case = {**DEFAULT_CASE, **case}
    for key, allowed in CHOICES.items():
        if case[key] not in allowed:
            raise ValueError(f"{key}={case[key]!r}: one of {allowed}")
    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/kubetune-bench")) / str(os.getpid())
    workdir.mkdir(parents=True, exist_ok=True)
    cuda = case["device"] == "cuda"
    n_steps, n_prof = case["steps"], case["profile_steps"]
    result: dict[str, Any] = {"case": case}
    if case["attn"] == speed.VARLEN_ATTENTION:
        if not speed.register_varlen_attention():
            raise RuntimeError("kubetune_varlen attention could not be registered")
        result["varlen_gqa_native"] = speed._GQA_NATIVE

    shape = MODELS[case["model"]]
    model, timings = build_model(case, workdir)
    result["timings"] = timings
    if case["liger"]:
        result["liger_applied"] = speed.apply_liger(model)
    if case["method"] == "qlora" and case["kbit_prep"] == "peft":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=case["grad_ckpt"])
        result["kbit_prep_applied"] = True

    rows_needed = n_steps * case["micro_batch"] * case["grad_accum"]
    rows = synthetic_rows(rows_needed, case["seq_len"], shape["vocab_size"], seed=1234)
    dataset = Dataset.from_dict({"input_ids": rows})

    from peft import LoraConfig

    peft_config = None
    if case["method"] in ("lora", "qlora"):
        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=case["lora_dropout"],
            target_modules=LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )

    args = SFTConfig(
        output_dir=str(workdir / "out"),
        max_steps=n_steps + n_prof,
        per_device_train_batch_size=case["micro_batch"],
        gradient_accumulation_steps=case["grad_accum"],
        learning_rate=case["lr"],
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=case["seed"],
        data_seed=case["seed"],
        bf16=use_bf16(case),
        use_cpu=not cuda,
        gradient_checkpointing=case["grad_ckpt"],
        padding_free=case["padding_free"],
        # trl refuses max_length with padding-free and no packing; the rows are already clipped.
        max_length=None if case["padding_free"] else case["seq_len"],
        torch_compile=case["compile"] is True,
        activation_offloading=case["offload"],
        dataloader_num_workers=0,
        disable_tqdm=True,
        optim=case["optim"],
    )
    t0 = time.perf_counter()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
        peft_config=peft_config,
    )
    timings["trainer_init_s"] = time.perf_counter() - t0
    result["param_bytes_by_dtype"], result["trainable_param_bytes"] = param_bytes(trainer.model)

    # Regional compilation: each decoder layer on its own (after PEFT wrapping and checkpointing
    # setup, so the LoRA layers are inside), dynamic shapes for the varying token counts.
    compiled = 0
    if case["compile"] == "regional":
        import torch._dynamo

        # the layers share one forward; never fall back to eager for lack of cache entries
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        tuned: Any = trainer.model
        for module in tuned.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile(dynamic=True)
                compiled += 1
        if not compiled:
            raise RuntimeError("compile=regional: no *DecoderLayer module found")
    result["compiled_layers"] = compiled
    if not case["input_cast"]:
        peft_model: Any = trainer.model
        lora_layers = [m for m in peft_model.modules() if hasattr(m, "cast_input_dtype_enabled")]
        for m in lora_layers:
            m.cast_input_dtype_enabled = False
        result["input_cast_disabled_layers"] = len(lora_layers)

    if n_prof:
        # Keep the schedule over the measured steps (see the docstring); the profiled ones
        # then run at lr 0: the same kernels, no change to what the measured steps saw.
        create_scheduler = trainer.create_scheduler

        def measured_schedule(num_training_steps: int, optimizer: Any = None) -> Any:
            return create_scheduler(num_training_steps=n_steps, optimizer=optimizer)

        trainer.create_scheduler = measured_schedule  # type: ignore[method-assign]

    # Count what each micro-batch really holds: the rows' lengths (real tokens) and the padded
    # size. Micro-batches arrive in order, `grad_accum` per optimizer step.
    micro: list[tuple[list[int], int]] = []
    collate = trainer.data_collator

    def counting_collator(examples: list[dict[str, Any]]) -> Any:
        batch = collate(examples)
        micro.append(([len(e["input_ids"]) for e in examples], int(batch["input_ids"].numel())))
        return batch

    trainer.data_collator = counting_collator
    # The dataloader is built lazily from trainer.data_collator in get_train_dataloader.

    losses: list[float] = []
    step_ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            bench_sync(cuda)
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            bench_sync(cuda)
            step_ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **k: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    profiled: list[dict[str, Any]] = []
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class StepProfiler(TrainerCallback):
        """One profiler session per profiled step, on_step_end to on_step_end (added after
        Timer, so a window ends after Timer's sync and starts after Timer's time stamp)."""

        prof: Any = None
        t0 = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **k: Any) -> None:
            step = state.global_step
            if self.prof is not None:
                entry: dict[str, Any] = {"step": step}
                try:
                    bench_sync(cuda)
                    wall = time.perf_counter() - self.t0
                    self.prof.stop()
                    t = time.perf_counter()
                    entry.update(profile_summary(self.prof.events(), wall))
                    entry["analysis_s"] = time.perf_counter() - t
                except Exception as e:  # a profiler failure must not cost the case
                    entry["error"] = f"{type(e).__name__}: {e}"
                profiled.append(entry)
                self.prof = None
            if n_steps <= step < n_steps + n_prof:
                try:
                    self.prof = torch.profiler.profile(activities=activities)
                    self.prof.start()
                except Exception as e:
                    profiled.append({"step": step + 1, "error": f"{type(e).__name__}: {e}"})
                    self.prof = None
                    return
                bench_sync(cuda)
                self.t0 = time.perf_counter()

    trainer.add_callback(Timer())
    if n_prof:
        trainer.add_callback(StepProfiler())
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["memory_before_train_gib"] = torch.cuda.memory_allocated() / 2**30
    t0 = time.perf_counter()
    trainer.train()
    result["train_wall_s"] = time.perf_counter() - t0
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if case["compile"]:
        result["dynamo"] = dynamo_stats()

    # Stats over the measured steps only: the profiled ones (after them) are left out.
    steps = min(len(step_ends) - 1, n_steps)
    step_times = np.diff(step_ends)[:steps]
    ga = case["grad_accum"]
    real = [sum(sum(micro[i][0]) for i in range(s * ga, (s + 1) * ga)) for s in range(steps)]
    padded = [sum(micro[i][1] for i in range(s * ga, (s + 1) * ga)) for s in range(steps)]
    sq = [
        sum(sum(n * n for n in micro[i][0]) for i in range(s * ga, (s + 1) * ga))
        for s in range(steps)
    ]
    n, n_lora = matmul_params(trainer.model, shape)
    frozen = case["method"] in ("lora", "qlora")
    c_lin = (4 if frozen else 6) + (2 if case["grad_ckpt"] else 0)
    c_lora = 6 + (2 if case["grad_ckpt"] else 0)
    c_attn = 6 + (2 if case["grad_ckpt"] else 0)
    attn_width = shape["num_attention_heads"] * shape["head_dim"]
    w = case["warmup"]
    t_meas = float(step_times[w:].sum())
    tok_meas = sum(real[w:])
    flops = (c_lin * n + c_lora * n_lora) * tok_meas + c_attn * shape[
        "num_hidden_layers"
    ] * attn_width * sum(sq[w:])
    p50 = float(np.percentile(step_times[w:], 50))
    result.update(
        {
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "versions": versions(),
            "params_matmul": n,
            "params_lora": n_lora,
            "steps_done": steps,
            "tokens_per_s": tok_meas / t_meas,
            "padded_tokens_per_s": sum(padded[w:]) / t_meas,
            "padding_fraction": 1 - tok_meas / max(1, sum(padded[w:])),
            "real_tokens_per_step_mean": tok_meas / max(1, steps - w),
            "flops_per_token_linear": c_lin * n + c_lora * n_lora,
            "mfu": flops / t_meas / H100_BF16_DENSE_PEAK,
            "step_time_p50_s": p50,
            "step_time_p90_s": float(np.percentile(step_times[w:], 90)),
            "losses": losses[:steps],
        }
    )
    if n_prof:
        result["profiled_steps_done"] = len(step_ends) - 1 - steps
        result["profile_losses"] = losses[steps:]
        result["profile"] = {"steps": profiled, "summary": profile_overview(profiled, p50, ga)}
    return result


def dynamo_stats() -> dict[str, Any]:
    """torch._dynamo's counters after training: graphs compiled, graph breaks and their reasons."""
    try:
        from torch._dynamo.utils import counters

        breaks = dict(counters["graph_break"])
        return {
            "stats": {k: int(v) for k, v in counters["stats"].items()},
            "graph_breaks": int(sum(breaks.values())),
            "graph_break_reasons": {
                k[:200]: int(v) for k, v in sorted(breaks.items(), key=lambda kv: -kv[1])[:10]
            },
            "recompiles": {k[:200]: int(v) for k, v in list(counters["recompiles"].items())[:10]},
        }
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def verify_quantization(model_name: str) -> dict[str, Any]:
    """The in-place QLoRA path against `from_pretrained(quantization_config=...)` on the same bf16
    weights: the same module types, bit-identical packed 4-bit weights, and the time of each."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM

    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/kubetune-bench")) / "verify"
    case = {**DEFAULT_CASE, "model": model_name, "method": "lora"}
    ref, _ = build_model(case, workdir)
    t0 = time.perf_counter()
    ref.save_pretrained(workdir / "bf16")
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = quantize_in_place(ref)
    torch.cuda.synchronize()
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = AutoModelForCausalLM.from_pretrained(
        workdir / "bf16", quantization_config=bnb_config(), dtype=torch.bfloat16, device_map={"": 0}
    )
    torch.cuda.synchronize()
    slow_s = time.perf_counter() - t0
    fmods = {n: m for n, m in fast.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    smods = {n: m for n, m in slow.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    identical = all(torch.equal(fmods[n].weight.data, smods[n].weight.data) for n in smods)
    fparams = {n: p for n, p in fast.named_parameters()}
    other_equal = all(
        torch.equal(p, fparams[n])
        for n, p in slow.named_parameters()
        if not isinstance(p, bnb.nn.Params4bit) and n in fparams
    )
    return {
        "verify_quantization": model_name,
        "linear4bit_modules": [len(fmods), len(smods)],
        "same_module_names": sorted(fmods) == sorted(smods),
        "packed_weights_identical": identical,
        "other_params_identical": other_equal,
        "footprint_gib": [fast.get_memory_footprint() / 2**30, slow.get_memory_footprint() / 2**30],
        "in_place_quantize_s": fast_s,
        "save_s": save_s,
        "from_pretrained_quantize_s": slow_s,
    }


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_case(text: str) -> dict[str, Any]:
    """`model=8b,method=qlora,variant=ours,micro_batch=8` -> a case (ours/baseline defaults)."""
    kv = dict(item.split("=", 1) for item in text.split(",") if item)
    variant = kv.get("variant", "baseline")
    maker = ours if variant.startswith("ours") else baseline
    case = maker(kv.pop("model", "1b"), kv.pop("method", "lora"))
    for key, raw in kv.items():
        if key not in DEFAULT_CASE:
            raise SystemExit(f"unknown case key {key!r}")
        default = DEFAULT_CASE[key]
        value: Any
        if key == "compile" and raw.lower() == "regional":
            value = "regional"
        elif isinstance(default, bool):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise SystemExit(f"{key}={raw!r}: true or false")
            value = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
        if key in CHOICES and value not in CHOICES[key]:
            raise SystemExit(f"{key}={raw!r}: one of {CHOICES[key]}")
        case[key] = value
    return case


def summary(r: dict[str, Any]) -> str:
    c = r["case"]
    head = f"{c['model']:>4} {c['method']:<5} {c['variant']:<24}"
    if "error" in r:
        return f"{head} ERROR {r['error'].splitlines()[-1][:120] if r['error'] else ''}"
    mem = r.get("peak_allocated_gib", float("nan"))
    losses = r["losses"]
    line = (
        f"{head} {r['tokens_per_s']:>9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
        f"peak {mem:6.2f} GiB  p50 {r['step_time_p50_s']:.3f}s  "
        f"loss {losses[0]:.3f}->{losses[-1]:.3f}"
    )
    prof = r.get("profile", {}).get("summary")
    if prof:
        line += (
            f"  | profiled: wall {prof['wall_s']:.3f}s kernels {prof['gpu_kernel_s']:.3f}s"
            f" ({100 * prof['gpu_kernel_s_over_step_p50']:.0f}% of p50)"
            f" launches {prof['kernel_launches']:.0f} syncs {prof['syncs']:.0f}"
            f" aten {prof['cpu_op_count']:.0f}"
        )
    elif "profile" in r:
        errors = [s.get("error", "") for s in r["profile"]["steps"]]
        line += f"  | profile failed: {errors[:1]}"
    return line


def drive(cases: list[dict[str, Any]], out: Path | None, timeout: float) -> int:
    failures = 0
    for case in cases:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
        env = dict(os.environ)
        if case.get("expandable"):
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if proc.returncode == 0 and lines:
                result = json.loads(lines[-1][len(RESULT_PREFIX) :])
            else:
                result = {"case": case, "error": (proc.stderr or proc.stdout)[-3000:]}
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            result = {"case": case, "error": f"timeout after {timeout}s\n{err[-2000:]}"}
        result["process_wall_s"] = time.perf_counter() - t0
        failures += "error" in result
        line = json.dumps(result)
        if out is None:
            print(line, flush=True)
        print("#", summary(result), flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(line + "\n")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", action="append", default=[], help=", ".join(SUITES))
    p.add_argument("--case", action="append", default=[], help="key=value,... (see DEFAULT_CASE)")
    p.add_argument("--only", default="", help="comma-separated variants to keep from the suites")
    p.add_argument("--device", default=None, help="override every case's device (cpu for checks)")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")
    p.add_argument("--list", action="store_true", help="print the cases as JSON lines, run none")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--verify-quant", default=None, help="model: compare the two QLoRA load paths")
    a = p.parse_args(argv)
    if a.verify_quant:
        line = json.dumps(verify_quantization(a.verify_quant))
        print(line, flush=True)
        if a.out is not None:
            with a.out.open("a") as f:
                f.write(line + "\n")
        return 0
    if a.worker is not None:
        result = run_case(json.loads(a.worker))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    cases = [c for s in a.suite for c in suite(s)] + [parse_case(c) for c in a.case]
    if a.only:
        keep = set(a.only.split(","))
        cases = [c for c in cases if c["variant"] in keep]
    if a.device:
        for c in cases:
            c["device"] = a.device
    if not cases:
        p.error("no cases: give --suite or --case")
    if a.list:
        for c in cases:
            print(json.dumps(c), flush=True)
        return 0
    return drive(cases, a.out, a.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
