"""bench/trainer_bench.py's model and data: synthetic pre-tokenized rows, a tiny tokenizer, a
randomly initialised Llama of a case's shape (4-bit quantized for QLoRA), and its parameter
counts. Heavy imports stay inside the functions: the driver imports this without torch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trainer_bench_cases import DEFAULT_CASE, LEN_MIN, LEN_MU, LEN_SIGMA, MODELS


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
