"""bench/trainer_bench.py's cases: model shapes, the case keys and their defaults, the recipes
(baseline, ours), the named suites, and `key=value,...` case parsing."""

from __future__ import annotations

import math
from typing import Any

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
