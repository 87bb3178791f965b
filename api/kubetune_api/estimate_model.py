"""The pure half of the estimate: model shapes from config.json, peak GPU memory per method,
precision and strategy, and the measured throughput table (the model is described in
`kubetune_api.estimate`)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from .v1alpha1 import FineTuneJobSpec, MethodType, Precision

GIB = 2**30

GIB = 2**30

# -------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool
    max_positions: int = 0

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one decoder layer's Linear modules."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, 0
        i = self.intermediate
        out = [("q", h, q), ("k", h, kv), ("v", h, kv), ("o", q, h)]
        if self.gated_mlp:
            out += [("gate", h, i), ("up", h, i), ("down", i, h)]
        else:
            out += [("up", h, i), ("down", i, h)]
        return out

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for _, a, b in self.linears())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.max_positions * self.hidden

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embedding_params + norms


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a transformers config.json (Llama/Mistral/Qwen-like, GPT-2, BERT)."""
    cfg = cfg.get("text_config") or cfg  # multimodal wrappers keep the LM under text_config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    vocab = _first(cfg, "vocab_size")
    missing = [
        n
        for n, v in (
            ("hidden_size", hidden),
            ("num_hidden_layers", layers),
            ("num_attention_heads", heads),
            ("vocab_size", vocab),
        )
        if v is None
    ]
    if missing:
        raise ValueError(f"config.json: no {', '.join(missing)} (not a transformer config?)")
    model_type = str(cfg.get("model_type") or "")
    gated = model_type not in {"bert", "roberta", "distilbert", "gpt2", "gpt_neox", "opt"}
    head_dim = int(_first(cfg, "head_dim", default=0) or hidden // heads)
    inter = int(_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=0) or 4 * hidden)
    learned_positions = model_type in {"bert", "roberta", "distilbert", "gpt2", "opt"}
    return ModelShape(
        model_type=model_type,
        hidden=int(hidden),
        layers=int(layers),
        heads=int(heads),
        kv_heads=int(_first(cfg, "num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate=inter,
        vocab=int(vocab),
        tied=bool(cfg.get("tie_word_embeddings", not gated)),
        gated_mlp=gated,
        max_positions=int(_first(cfg, "max_position_embeddings", "n_positions", default=0))
        if learned_positions
        else 0,
    )


_LORA_ALIASES = {
    "q": {"q_proj", "query", "q", "c_attn"},
    "k": {"k_proj", "key", "k", "c_attn"},
    "v": {"v_proj", "value", "v", "c_attn"},
    "o": {"o_proj", "dense", "out_proj", "c_proj"},
    "gate": {"gate_proj", "w1"},
    "up": {"up_proj", "dense", "fc1", "c_fc", "w3"},
    "down": {"down_proj", "dense", "fc2", "c_proj", "w2"},
}


def trainable_params(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    m = spec.method
    kind = MethodType(m.type)
    if kind == MethodType.FULL:
        layers_frozen = m.freeze_layers or 0
        per_layer = shape.linear_params // max(1, shape.layers)
        return shape.params - layers_frozen * per_layer
    if kind in (MethodType.LORA, MethodType.QLORA, MethodType.DORA):
        r = m.lora.r if m.lora else 16
        targets = m.lora.target_modules if m.lora else None
        chosen = [
            (n, a, b)
            for n, a, b in shape.linears()
            if not targets or targets == ["all-linear"] or _LORA_ALIASES[n] & set(targets)
        ]
        n = shape.layers * sum(r * (a + b) for _, a, b in chosen)
        if kind == MethodType.DORA:
            n += shape.layers * sum(b for _, _, b in chosen)  # magnitude vectors
        return n
    if kind == MethodType.PROMPT_TUNING:
        tokens = m.prompt_tuning.num_virtual_tokens if m.prompt_tuning else 20
        return tokens * shape.hidden
    if kind == MethodType.PREFIX_TUNING:
        tokens = m.prefix_tuning.num_virtual_tokens if m.prefix_tuning else 20
        return 2 * tokens * shape.layers * shape.kv_heads * shape.head_dim
    if kind == MethodType.IA3:
        return shape.layers * (2 * shape.kv_heads * shape.head_dim + shape.intermediate)
    return shape.layers * sum(b for _, _, b in shape.linears())  # bitfit: the biases


# -------------------------------------------------------------------------------------- memory

# Activation constants (bytes per token, per layer, per unit of hidden size), measured on the
# bench runs named on each line (bench/results/h100-*.json, case "variant").
K_NO_CKPT = 70.0  # 1B LoRA "ours-no-liger" (varlen, padding-free); 8B LoRA agrees within 3 %
K_NO_CKPT_LIGER = 60.0  # 1B LoRA "ours", "ours-mb8x2"; 8B LoRA "ours"
K_NO_CKPT_COMPILE = 51.0  # 1B LoRA "ours-compile" (trl torch_compile)
K_RECOMPUTE_LORA = 100.0  # 1B and 8B LoRA "baseline" (checkpointing, sdpa, padded)
K_RECOMPUTE_QLORA = 66.0  # 1B and 8B QLoRA "baseline"
LIGER_RECOMPUTE = 0.67  # 1B, 8B QLoRA "ours" and 8B "ours-mb4x4" against their baselines
C_LOGITS = 0.42  # bytes per token per vocabulary entry the loss keeps (all checkpointed rows)


@dataclass
class MemoryEstimate:
    weights_gib: float
    optimizer_gib: float
    activations_gib: float
    peak_gib: float
    trainable_params: int
    params: int
    micro_batch_tokens: int


def weight_bytes(shape: ModelShape, spec: FineTuneJobSpec, trainable: int) -> float:
    kind = MethodType(spec.method.type)
    wb = 4 if spec.hyperparameters.precision == Precision.FP32 else 2
    if kind == MethodType.QLORA:
        rest = shape.params - shape.linear_params
        return shape.linear_params * (0.5 + 1 / 64) + rest * 2 + trainable * 4
    if kind == MethodType.FULL:
        return shape.params * wb
    return shape.params * wb + trainable * 4


def optimizer_bytes(spec: FineTuneJobSpec, trainable: int) -> float:
    opt = str(spec.hyperparameters.optimizer)
    state = 0.0 if opt == "sgd" else 2.0 if "8bit" in opt else 1.0 if opt == "adafactor" else 8.0
    kind = MethodType(spec.method.type)
    grad = 2.0 if kind == MethodType.FULL and spec.hyperparameters.precision != "fp32" else 4.0
    return trainable * (grad + state)


def activation_bytes(
    shape: ModelShape,
    spec: FineTuneJobSpec,
    tokens: int,
    *,
    liger: bool = False,
    compile: bool = False,
) -> float:
    h, layers = shape.hidden, shape.layers
    scale = 2.0 if spec.hyperparameters.precision == Precision.FP32 else 1.0
    if not spec.hyperparameters.gradient_checkpointing:
        k = K_NO_CKPT_COMPILE if compile else K_NO_CKPT_LIGER if liger else K_NO_CKPT
        return tokens * layers * h * k * scale
    k = K_RECOMPUTE_QLORA if MethodType(spec.method.type) == MethodType.QLORA else K_RECOMPUTE_LORA
    if liger:
        k *= LIGER_RECOMPUTE
    return tokens * (2 * layers * h + k * h + C_LOGITS * shape.vocab) * scale


def peak_micro_batch_tokens(
    lengths: list[int],
    micro_batch: int,
    micro_batches: int,
    *,
    padding_free: bool,
    max_len: int,
    seed: int = 0,
) -> int:
    """The largest micro-batch (tokens, padding included) expected over the run: the mean,
    over a few simulated runs, of the largest of `micro_batches` random micro-batches drawn
    from the sampled row lengths."""
    if not lengths:
        return 0
    rng = random.Random(seed)
    ls = [min(max_len, n) for n in lengths]
    draws = min(micro_batches, 2000)
    trials = 8
    total = 0
    for _ in range(trials):
        most = 0
        for _ in range(draws):
            rows = [ls[rng.randrange(len(ls))] for _ in range(micro_batch)]
            most = max(most, sum(rows) if padding_free else micro_batch * max(rows))
        total += most
    return round(total / trials)


def peak_memory(
    shape: ModelShape,
    spec: FineTuneJobSpec,
    micro_batch_tokens: int,
    *,
    world_size: int = 1,
    liger: bool = False,
    compile: bool = False,
) -> MemoryEstimate:
    trainable = trainable_params(shape, spec)
    weights = weight_bytes(shape, spec, trainable)
    opt = optimizer_bytes(spec, trainable)
    if str(spec.resources.distribution.strategy) == "fsdp" and world_size > 1:
        weights /= world_size
        opt /= world_size
    act = activation_bytes(shape, spec, micro_batch_tokens, liger=liger, compile=compile)
    return MemoryEstimate(
        weights_gib=weights / GIB,
        optimizer_gib=opt / GIB,
        activations_gib=act / GIB,
        peak_gib=(weights + opt + act) / GIB,
        trainable_params=trainable,
        params=shape.params,
        micro_batch_tokens=micro_batch_tokens,
    )


# ---------------------------------------------------------------------------------- throughput

# Tokens per second on one H100 80GB (docs/benchmarks.md, "Results", the trainer's defaults:
# varlen attention, padding-free; "ours" rows). Keys: method -> [(parameters, tokens/s)].
THROUGHPUT_H100: dict[str, list[tuple[float, float]]] = {
    "lora": [(1.236e9, 26776.0), (8.03e9, 6538.0)],  # 1B "without Liger"; 8B "ours"
    "qlora": [(1.236e9, 14335.0), (8.03e9, 6918.0)],  # 1B and 8B "ours"
}


def tokens_per_second(params: int, method: str, gpus: int = 1) -> float:
    kind = MethodType(method)
    key = "qlora" if kind == MethodType.QLORA else "lora"
    (p1, t1), (p2, t2) = THROUGHPUT_H100[key]
    b = math.log(t2 / t1) / math.log(p2 / p1)
    # outside the measured range the power law is an extrapolation: no faster than 4x the
    # smallest model's rate (tiny models are bound by per-step overheads, not FLOPs)
    tps = min(t1 * (params / p1) ** b, 4 * t1)
    if kind == MethodType.FULL:
        tps *= 2 / 3
    return tps * (gpus if gpus <= 1 else 0.9 * gpus)
