"""Pure decisions for a run of several processes: which strategy (DDP or FSDP), how much memory
each GPU needs (from the model's shapes), what TrainingArguments that becomes, and the global
batch. No torch import: the operator, the docs and the unit tests read it too.

docs/scaling.md explains the choice; the trainer logs it and records it in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kubetune_api.v1alpha1 import METHODS, DistributionStrategy, LoadDtype, MethodType

GIB = 2**30
# Bytes per parameter for what every method keeps of the base model (weights as loaded).
# qlora: nf4 is 0.5 byte, plus one fp32 absmax per 64 weights, double-quantized to ~0.127 bit.
_BASE_BYTES = {"fp32": 4.0, "bf16": 2.0, "nf4": 0.5 + 0.127 / 8}
# Full fine-tuning with AdamW in mixed precision: fp32 weights (4) + fp32 grads (4) + two fp32
# Adam moments (8).
FULL_BYTES_PER_PARAM = 16.0
# Activations, CUDA context, allocator slack and the adapter's own weights/optimizer: a share
# of the model plus a fixed amount. Coarse on purpose; docs/scaling.md states it.
OVERHEAD_SHARE = 0.20
OVERHEAD_FIXED = 2 * GIB


# --------------------------------------------------------------------------- model shapes


def parameter_count(cfg: dict[str, Any]) -> int | None:
    """Parameters of a decoder-only transformer from its config.json (Llama/Mistral/Qwen/
    Gemma shapes: attention with grouped KV heads, gated MLP); None when the shapes are not
    there. Within a few percent of the real count for those families."""
    cfg = cfg.get("text_config", cfg)
    try:
        h = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg["vocab_size"])
        inter = int(cfg.get("intermediate_size") or 4 * h)
        heads = int(cfg.get("num_attention_heads") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * h * inter  # gate, up, down
    norms = 2 * h
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * (attn + mlp + norms) + embed + h


def base_format(method: MethodType, precision_16bit: bool = True) -> str:
    record = METHODS[method]
    if record.quantized_base:
        return "nf4"
    if record.load_dtype == LoadDtype.TRAINING_PRECISION and precision_16bit:
        return "bf16"
    return "fp32"


def memory_per_gpu(
    params: int, method: MethodType, strategy: DistributionStrategy, world: int
) -> int:
    """Estimated bytes one GPU needs to train a model of `params` parameters with `method`:
    the model state, divided across `world` processes under FSDP, plus the overhead."""
    if METHODS[method].trains_all_weights:
        state = params * FULL_BYTES_PER_PARAM
    else:
        # the frozen base as loaded (bitfit: fp32), plus tiny trainable weights in the overhead
        state = params * _BASE_BYTES[base_format(method)]
    if strategy == DistributionStrategy.FSDP:
        state /= max(1, world)
    return int(state * (1 + OVERHEAD_SHARE) + OVERHEAD_FIXED)


# ------------------------------------------------------------------------------- strategy


@dataclass(frozen=True)
class Plan:
    """The resolved distribution of one run."""

    strategy: str  # "single", "ddp" or "fsdp"
    world_size: int
    reason: str
    memory_per_gpu_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(
    asked: DistributionStrategy,
    method: MethodType,
    world: int,
    params: int | None,
    gpu_memory_bytes: int | None,
) -> Plan:
    """DDP when every process can hold the whole model (adapter methods that fit one GPU),
    FSDP for full fine-tuning and for models that do not fit; what the spec asks wins."""

    def plan(strategy: DistributionStrategy, reason: str) -> Plan:
        mem = memory_per_gpu(params, method, strategy, world) if params else None
        return Plan(DistributionStrategy(strategy).value, world, reason, mem)

    if asked != DistributionStrategy.AUTO:
        return plan(asked, "resources.distribution.strategy")
    if world <= 1:
        return Plan("single", world, "one process", None)
    if gpu_memory_bytes is None:
        return plan(DistributionStrategy.DDP, "no GPU: data parallel over CPU processes")
    if METHODS[method].virtual_tokens:
        return plan(DistributionStrategy.DDP, f"{method.value} cannot be sharded")
    if METHODS[method].trains_all_weights:
        return plan(DistributionStrategy.FSDP, "full fine-tuning: shard weights and optimizer")
    if params is None:
        return plan(DistributionStrategy.DDP, "model size unknown: data parallel")
    need = memory_per_gpu(params, method, DistributionStrategy.DDP, world)
    if need <= gpu_memory_bytes:
        return plan(
            DistributionStrategy.DDP,
            f"fits one GPU (~{need / GIB:.0f} of {gpu_memory_bytes / GIB:.0f} GiB)",
        )
    return plan(
        DistributionStrategy.FSDP,
        f"does not fit one GPU (~{need / GIB:.0f} of {gpu_memory_bytes / GIB:.0f} GiB): shard",
    )


def training_kwargs(plan: Plan, method: MethodType) -> dict[str, Any]:
    """TrainingArguments for the strategy (HF Trainer hands FSDP to accelerate's plugin)."""
    if plan.strategy == DistributionStrategy.FSDP.value:
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {
                # Wrap each decoder layer (accelerate reads the classes from the model's
                # _no_split_modules); whole state dicts so rank 0 saves and checkpoints alone.
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "state_dict_type": "FULL_STATE_DICT",
                "use_orig_params": not METHODS[method].trains_all_weights,
                "sync_module_states": True,
                "cpu_ram_efficient_loading": False,
            },
        }
    if plan.strategy == DistributionStrategy.DDP.value:
        # Adapters leave most parameters frozen; DDP only has to know nothing is unused.
        return {"ddp_find_unused_parameters": False}
    return {}


def quant_storage(plan: Plan, compute_dtype: str) -> str | None:
    """QLoRA under FSDP: bitsandbytes must store the 4-bit weights in the dtype of the other
    parameters (bf16) so FSDP can flatten them together."""
    return compute_dtype if plan.strategy == DistributionStrategy.FSDP.value else None


# ---------------------------------------------------------------------------------- batch


def split_batch(per_device: int, accumulation: int, processes: int) -> dict[str, Any]:
    """Keep the global batch the spec asks for (batchSize x gradientAccumulationSteps, what one
    process would train on) when the processes can share it exactly: accumulation first, then
    the per-device batch is divided by the process count. When they cannot, each process keeps
    the asked micro-batch and accumulation, the global batch grows by the process count, and
    `kept` says so (the trainer warns). Recorded in the manifest as is."""
    asked = per_device * accumulation
    if processes <= 1:
        pd, acc, kept = per_device, accumulation, True
    elif accumulation % processes == 0:
        pd, acc, kept = per_device, accumulation // processes, True
    elif asked % processes == 0:
        # the smallest accumulation a micro-batch can carry the rest of the split with
        share = asked // processes
        acc = next(a for a in range(1, share + 1) if share % a == 0 and share // a <= per_device)
        pd, kept = share // acc, True
    else:
        pd, acc, kept = per_device, accumulation, False
    return {
        "perDeviceBatchSize": pd,
        "processes": processes,
        "gradientAccumulationSteps": acc,
        "globalBatchSize": pd * processes * acc,
        "askedGlobalBatchSize": asked,
        "kept": kept,
    }
