"""Training-speed defaults: what the trainer turns on, decided from the device, the installed
packages, the method and the task, and small functions that apply the decisions.

A switch is on by default only where `bench/trainer_bench.py` measured it faster on an H100
without moving the loss curve beyond noise (numbers and commands: docs/benchmarks.md):

- **Padding-free batching** (trl `padding_free`) **through varlen attention**: the micro-batch's
  rows are concatenated into one row with `position_ids` restarting at 0 per row, so no FLOPs or
  memory go to padding, and attention runs per sequence. The attention is `flash_attention_2`
  when the flash-attn package is installed, otherwise `kubetune_varlen`, registered here, which
  calls PyTorch's own FlashAttention-2 varlen kernels (`torch.nn.attention.varlen`), so no extra
  wheel is needed. Measured on Llama-3.2-1B-like LoRA: 24,960 tok/s against 9,922 padded (sdpa)
  and 14,751 padding-free through sdpa's block-diagonal mask; the loss is the same sum over the
  same tokens (max step-wise difference 0.0014).
- **CUDA allocator with expandable segments** (`configure_allocator`): varying batch shapes
  otherwise fragment the cache (reserved 9.98 GiB for 9.67 GiB allocated with it, on 8B QLoRA).
  A memory setting; it does not change the arithmetic.

- **Liger kernels** (RMSNorm, RoPE, SwiGLU) for llama/mistral/qwen decoders: fewer, fused ops,
  which pays where the step is bound by the CPU launching kernels (the seed's batch of 4): on
  Mistral-7B, H200, LoRA 9,028 -> 9,934 tok/s and 34.6 -> 28.8 GiB peak; QLoRA 4,211 -> 4,805
  tok/s after warm-up and 6.26 -> 5.87 GiB; the loss curve stays within 0.014 of the stock
  recipe's (bench/product_bench.py, docs/benchmarks.md 2026-12-04). It was off before, measured
  not faster on a GPU-bound 16-row 1B step (0.193 s against 0.189 s). Liger's fused linear
  cross-entropy is never used: trl's SFTTrainer computes the loss with its own fused, chunked LM
  head and refuses Liger's.

Off by default, with the measured reason:

- **torch.compile**: +10% tokens/s on 1B LoRA after ~70 s of compilation per run (and more per
  new shape); not worth it by default.

On CPU everything is off and the trainer runs with transformers' defaults (sdpa).

`plan()` and the types it uses are pure (no torch import); `detect_environment()` and the
`apply_*`/`register_*` functions import torch lazily, so the operator can import this module.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass, field
from typing import Any

from kubetune_api.v1alpha1 import method_record

VARLEN_ATTENTION = "kubetune_varlen"

# Model families (config.model_type) whose Liger patch covers RMSNorm, RoPE and SwiGLU and was
# exercised by the benchmark (llama) or shares its decoder layout (mistral, qwen2/3).
_LIGER_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class Environment:
    """What the trainer runs on: detected once by `detect_environment()`."""

    cuda: bool = False
    capability: tuple[int, int] | None = None
    # Importable optional packages: "flash_attn", "liger_kernel", "bitsandbytes".
    packages: frozenset[str] = frozenset()
    # torch ships FlashAttention-2 varlen kernels behind torch.nn.attention.varlen.
    torch_varlen: bool = False


@dataclass(frozen=True)
class SpeedPlan:
    """The decisions, with a reason for each, written to the run's log and manifest."""

    attn_implementation: str = "sdpa"
    padding_free: bool = False
    liger: bool = False
    torch_compile: bool = False
    expandable_segments: bool = False
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def model_init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained`/`from_config`."""
        return {"attn_implementation": self.attn_implementation}

    def sft_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for trl's `SFTConfig` (merge over the trainer's own)."""
        kwargs: dict[str, Any] = {"padding_free": self.padding_free}
        if self.torch_compile:
            kwargs["torch_compile"] = True
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return {
            "attn_implementation": self.attn_implementation,
            "padding_free": self.padding_free,
            "liger": self.liger,
            "torch_compile": self.torch_compile,
            "expandable_segments": self.expandable_segments,
            "reasons": list(self.reasons),
        }


def plan(
    env: Environment,
    *,
    method: str,
    task: str = "causal-lm",
    model_type: str | None = None,
    packing: bool = False,
    liger_requested: bool | None = None,
    batch_size: int = 0,
    grad_accum: int = 1,
) -> SpeedPlan:
    """Decide the speed switches. Pure: same inputs, same plan.

    `method` and `task` are the spec's values (`lora`, `qlora`, ..., `causal-lm`,
    `sequence-classification`); `model_type` is the model config's `model_type`; `packing` is
    `spec.dataset.packing` (bfd packing in trl implies padding-free batching; it then needs varlen
    attention just the same); `liger_requested` turns the Liger kernels off (False) or leaves
    them to the plan (None: on where installed and patchable; True is the same); `batch_size`
    and `grad_accum` are the spec's (accumulation folding is `accumulation.fold_accumulation`,
    decided once the model's shape and the GPU's memory are known).
    """
    reasons: list[str] = []
    if not env.cuda:
        return SpeedPlan(reasons=("no CUDA device: transformers defaults (sdpa), nothing fused",))
    ampere = env.capability is not None and env.capability >= (8, 0)

    attn = "sdpa"
    if task != "causal-lm":
        # Encoders attend both ways and classification batches stay padded: nothing to gain.
        reasons.append(f"{task}: padded batches, sdpa")
    elif method_record(method).virtual_tokens:
        # The PEFT wrapper prepends virtual tokens or past key/values: these need an attention
        # mask over the real sequence layout, so padding-free batching and varlen attention stay
        # off.
        reasons.append(f"{method}: virtual tokens need a padded attention mask; sdpa")
    elif not ampere:
        reasons.append("GPU older than sm80: no FlashAttention kernels; sdpa")
    elif "flash_attn" in env.packages:
        attn = "flash_attention_2"
        reasons.append("flash-attn installed: flash_attention_2")
    elif env.torch_varlen:
        attn = VARLEN_ATTENTION
        reasons.append("torch FlashAttention-2 varlen kernels: kubetune_varlen attention")
    else:
        reasons.append("no varlen attention available: sdpa")

    padding_free = attn in {"flash_attention_2", VARLEN_ATTENTION}
    if padding_free:
        reasons.append("padding-free batching (no FLOPs or memory on padding)")
    elif packing and task == "causal-lm":
        # trl's bfd packing is padding-free by construction; with sdpa, transformers builds a
        # block-diagonal mask, which is correct but spends attention FLOPs across documents.
        reasons.append("packing requested without varlen attention: block-diagonal sdpa mask")
    elif task == "causal-lm":
        reasons.append("padded batches")
    liger = (
        liger_requested is not False
        and "liger_kernel" in env.packages
        and ampere
        and task == "causal-lm"
        and (model_type or "") in _LIGER_MODEL_TYPES
    )
    if liger:
        reasons.append("Liger RMSNorm, RoPE, SwiGLU kernels (fewer launches per step)")
    elif liger_requested is False:
        reasons.append("Liger kernels off (KUBETUNE_LIGER=0)")
    else:
        reasons.append("Liger kernels unavailable for this model or device")
    reasons.append("torch.compile off (+10% after ~70 s of compiling: not worth it by default)")
    return SpeedPlan(
        attn_implementation=attn,
        padding_free=padding_free,
        liger=liger,
        torch_compile=False,
        expandable_segments=True,
        reasons=tuple(reasons),
    )


def detect_environment() -> Environment:
    """Probe the device and the optional packages (imports torch)."""
    import torch

    packages = frozenset(
        name
        for name in ("flash_attn", "liger_kernel", "bitsandbytes")
        if importlib.util.find_spec(name) is not None
    )
    cuda = torch.cuda.is_available()
    capability = tuple(torch.cuda.get_device_capability()) if cuda else None
    return Environment(
        cuda=cuda,
        capability=capability,  # type: ignore[arg-type]
        packages=packages,
        torch_varlen=importlib.util.find_spec("torch.nn.attention.varlen") is not None,
    )


# ---------------------------------------------------------------------------------------------
# Applying the plan
# ---------------------------------------------------------------------------------------------


ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def configure_allocator(environ: Any = None) -> bool:
    """Ask for expandable segments in the CUDA caching allocator, unless the user set their own
    allocator configuration. Must run before CUDA is initialised (the trainer calls it first
    thing); harmless without a GPU. Returns whether it set the variable."""
    env = os.environ if environ is None else environ
    if env.get(ALLOC_CONF):
        return False
    env[ALLOC_CONF] = "expandable_segments:True"
    return True


def apply_liger(model: Any) -> bool:
    """Patch the model instance's RMSNorm, RoPE and SwiGLU with Liger kernels, in place.

    Call before wrapping with PEFT. Returns False (and changes nothing) when liger-kernel or a
    patch for the model type is missing.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _LIGER_MODEL_TYPES:
        return False
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return True


_GQA_NATIVE: bool | None = None


@functools.cache
def _varlen_params() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _varlen_call(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens: Any,
    max_len: int,
    scale: float | None,
    sliding_window: int | None = None,
) -> Any:
    """Causal varlen attention through torch's FlashAttention kernels. q: (T, Hq, D); k, v:
    (T, Hkv, D). `sliding_window` (Mistral-style: a token sees itself and the previous
    window - 1 tokens) needs the kernel's `window_size`, or no sequence longer than it."""
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_params()
    kwargs: dict[str, Any] = {}
    if "window_size" in params:
        left = -1 if sliding_window is None or max_len <= sliding_window else sliding_window - 1
        kwargs["window_size"] = (left, 0)
    else:
        kwargs["is_causal"] = True
    if scale is not None and "scale" in params:
        kwargs["scale"] = scale
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        elif not _GQA_NATIVE:
            groups = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


_CU_CACHE: list[Any] = []


def _cu_seqlens_from_position_ids(position_ids: Any) -> tuple[Any, int]:
    """Sequence boundaries of a padding-free batch. Every layer (and every recompute under
    gradient checkpointing) gets the same `position_ids` tensor, so the result is kept for that
    tensor: one host sync per batch instead of two per layer and pass."""
    if _CU_CACHE and _CU_CACHE[0] is position_ids and _CU_CACHE[1] == position_ids._version:
        return _CU_CACHE[2], _CU_CACHE[3]
    cu, max_len = _compute_cu_seqlens(position_ids)
    _CU_CACHE[:] = [position_ids, position_ids._version, cu, max_len]
    return cu, max_len


def _compute_cu_seqlens(position_ids: Any) -> tuple[Any, int]:
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int(cu.diff().max())


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """A transformers attention function (`AttentionInterface`) for padding-free batches.

    query: (1, Hq, T, D) holding several sequences back to back; their boundaries come from the
    collator's `cu_seq_lens_q`/`max_length_q` (trl's padding-free collator) or are read off
    `position_ids`. A sliding window (Mistral) goes to the kernel's `window_size`. Anything else
    (a padded batch, dropout, softcap) falls back to sdpa, so the model stays correct with any
    input.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    max_len: Any = kwargs.get("max_length_q")
    plain = (
        query.is_cuda
        and query.shape[0] == 1
        and attention_mask is None
        and not dropout
        and kwargs.get("softcap") is None
    )
    if plain and cu is None and kwargs.get("position_ids") is not None:
        cu, max_len = _cu_seqlens_from_position_ids(kwargs["position_ids"])
    window = kwargs.get("sliding_window")
    # Mistral passes its window on every call; it only matters for longer sequences, and then
    # only a kernel with `window_size` can honour it (else sdpa with the block-diagonal
    # sliding-window mask of the packed sequences).
    if (
        plain
        and cu is not None
        and window is not None
        and int(max_len) > int(window)
        and "window_size" not in _varlen_params()
    ):
        idx = torch.arange(query.shape[2], device=query.device)
        seg = torch.searchsorted(cu.to(query.device, torch.int64)[1:], idx, right=True)
        back = idx[:, None] - idx[None, :]
        mask = (seg[:, None] == seg[None, :]) & (back >= 0) & (back < int(window))
        return sdpa_attention_forward(
            module, query, key, value, mask[None, None], scaling=scaling, **kwargs
        )
    if not plain or cu is None:
        if attention_mask is not None and attention_mask.dim() == 2:
            # The flash-style mask function hands over the 2D padding mask: make it 4D causal.
            length = query.shape[2]
            causal = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
            attention_mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    _, hq, t, d = query.shape
    hkv = key.shape[1]
    # FlashAttention takes 16-bit inputs only; fp32 q/k/v happen when fp32 weights feed the
    # residual stream (peft's k-bit preparation upcasts the norms; an fp32 trainable embedding):
    # compute in the autocast dtype, return the caller's dtype.
    dtype = query.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = (
            torch.get_autocast_dtype("cuda")
            if torch.is_autocast_enabled("cuda")
            else torch.bfloat16
        )
    q = query.transpose(1, 2).reshape(t, hq, d).to(dtype)
    k = key.transpose(1, 2).reshape(t, hkv, d).to(dtype)
    v = value.transpose(1, 2).reshape(t, hkv, d).to(dtype)
    out = _varlen_call(
        q,
        k,
        v,
        cu.to(query.device, torch.int32),
        int(max_len),
        scaling,
        None if window is None else int(window),
    )
    return out.reshape(1, t, hq, d).to(query.dtype), None


def _probe_gqa_native() -> bool:
    """Whether torch's varlen kernel takes fewer KV heads than query heads as they are (FA2
    does); checked once on the GPU against sdpa with repeated heads."""
    global _GQA_NATIVE
    import torch
    import torch.nn.functional as F

    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(48, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(48, 2, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(48, 2, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        cu = torch.tensor([0, 16, 48], device="cuda", dtype=torch.int32)
        _GQA_NATIVE = True
        out = _varlen_call(q, k, v, cu, 32, None).float()
        ref = []
        for a, b in ((0, 16), (16, 48)):
            qs = q[a:b].transpose(0, 1)[None]
            ks = k[a:b].repeat_interleave(2, dim=1).transpose(0, 1)[None]
            vs = v[a:b].repeat_interleave(2, dim=1).transpose(0, 1)[None]
            ref.append(
                F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
            )
        err = (out - torch.cat(ref).float()).norm() / torch.cat(ref).float().norm()
        return bool(err < 2e-2)
    except Exception:
        return False


def register_varlen_attention() -> bool:
    """Register `kubetune_varlen` with transformers (attention and mask interfaces). Returns
    False when torch has no varlen kernels or no GPU is present."""
    global _GQA_NATIVE
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    # cuDNN's SDPA backend spends ~3.7 ms of CPU per call on every new sequence shape (issue 13:
    # 1,736 -> 2,589 tok/s on QLoRA 7B with it off); padding-free batches make every shape new.
    torch.backends.cuda.enable_cudnn_sdp(False)
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    if _GQA_NATIVE is None:
        _GQA_NATIVE = _probe_gqa_native()
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, flash_attention_mask)
    return True


def truncate_tokenized(dataset: Any, max_length: int) -> Any:
    """Cut every token-aligned column of a tokenized dataset to `max_length`.

    trl refuses `max_length` with padding-free batching unless it packs (it would not truncate
    then), so the trainer passes `max_length=None` and truncates here, after trl tokenized."""
    if dataset is None:
        return None
    columns = [
        c
        for c in ("input_ids", "attention_mask", "completion_mask", "assistant_masks", "labels")
        if c in dataset.column_names
    ]

    def cut(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {c: [row[:max_length] for row in batch[c]] for c in columns}

    return dataset.map(cut, batched=True, desc="truncating to maxSeqLength")


def prepare(plan_: SpeedPlan) -> SpeedPlan:
    """Make the plan's attention available before the model is built; if registration fails,
    return a plan that falls back to sdpa without padding-free batching."""
    if plan_.attn_implementation == VARLEN_ATTENTION and not register_varlen_attention():
        return SpeedPlan(
            attn_implementation="sdpa",
            padding_free=False,
            liger=plan_.liger,
            torch_compile=plan_.torch_compile,
            expandable_segments=plan_.expandable_segments,
            reasons=(*plan_.reasons, "kubetune_varlen unavailable at run time: sdpa, padded"),
        )
    return plan_
