"""Accumulation folding: the spec's optimizer step (batchSize x gradientAccumulationSteps rows)
trained in fewer, larger padding-free micro-batches when the GPU's memory allows (issue 13
floor 4). Pure: the pipeline calls `fold_accumulation` with the model's config.json, its
parameter count and the GPU's memory, and logs the decision into the run's manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Bytes of GPU memory per base-model parameter, by how the base is held (weights only; the
# adapters, their optimizer state and the activations are counted apart). Full fine-tuning keeps
# bf16 weights, fp32 gradients and two fp32 Adam moments: 2 + 4 + 8.
_WEIGHT_BYTES = {"qlora": 0.6, "full": 14.0}
_DEFAULT_WEIGHT_BYTES = 2.0
# Of the GPU's memory, the share the fold may plan on (the CUDA context, the allocator's slack
# and the caching of varying shapes take the rest).
_GPU_SHARE = 0.8


@dataclass(frozen=True)
class Fold:
    """How the trainer runs the user's optimizer step: `micro_batch` rows per micro-batch,
    `accumulation` micro-batches; the same rows per optimizer step as the spec's split."""

    micro_batch: int
    accumulation: int
    factor: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "perDeviceBatchSize": self.micro_batch,
            "gradientAccumulationSteps": self.accumulation,
            "factor": self.factor,
            "reason": self.reason,
        }


def activation_bytes_per_token(shape: dict[str, Any], checkpointing: bool) -> float:
    """A deliberately high estimate of the activation memory one token of a micro-batch holds at
    the peak of a decoder's backward pass, from config.json: bf16 hidden states kept per layer
    (all of a layer's internals without checkpointing; the layer inputs plus one layer's
    internals with it) and fp32 logits with their gradient."""
    h = int(shape.get("hidden_size") or shape.get("n_embd") or 4096)
    inter = int(shape.get("intermediate_size") or 4 * h)
    layers = int(shape.get("num_hidden_layers") or shape.get("n_layer") or 32)
    vocab = int(shape.get("vocab_size") or 32000)
    layer_internals = (12 * h + 5 * inter) * 2
    kept = layers * h * 2 + layer_internals if checkpointing else layers * layer_internals
    return float(kept + vocab * 8)


def fold_accumulation(
    *,
    batch_size: int,
    grad_accum: int,
    padding_free: bool,
    max_seq_length: int,
    shape: dict[str, Any],
    parameters: int | None,
    method: str,
    checkpointing: bool,
    gpu_memory: int | None,
) -> Fold:
    """Train the spec's optimizer step (batch_size x grad_accum rows) in fewer, larger
    padding-free micro-batches when the GPU's memory allows the worst case (every row at
    max_seq_length). Padding-free micro-batches cost a fixed CPU overhead each, and the loss is
    normalized by the step's token count either way (trl's num_items_in_batch), so the gradients
    are the user's split's (tests/unit/test_speed_fold.py). Pure."""

    def keep(reason: str) -> Fold:
        return Fold(batch_size, grad_accum, 1, reason)

    if grad_accum <= 1:
        return keep("gradientAccumulationSteps 1: nothing to fold")
    if not padding_free:
        return keep("padded batches: micro-batches kept as the spec splits them")
    if not gpu_memory or not parameters:
        return keep("GPU memory or model size unknown: micro-batches kept")
    weights = parameters * _WEIGHT_BYTES.get(method, _DEFAULT_WEIGHT_BYTES)
    budget = gpu_memory * _GPU_SHARE - weights
    per_row = activation_bytes_per_token(shape, checkpointing) * max_seq_length
    best = 1
    for factor in range(grad_accum, 1, -1):
        if grad_accum % factor == 0 and batch_size * factor * per_row <= budget:
            best = factor
            break
    if best == 1:
        return keep(
            f"{batch_size * 2} rows of {max_seq_length} tokens would not fit the memory budget: "
            "micro-batches kept"
        )
    micro, acc = batch_size * best, grad_accum // best
    return Fold(
        micro,
        acc,
        best,
        f"accumulation folded: {batch_size} x {grad_accum} -> {micro} x {acc} rows per "
        f"micro-batch x micro-batches (same {batch_size * grad_accum} rows per optimizer step; "
        f"worst case {micro * max_seq_length} tokens ~{micro * per_row / 2**30:.1f} GiB of "
        f"activations within {budget / 2**30:.1f} GiB)",
    )
