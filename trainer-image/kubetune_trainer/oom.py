"""CUDA out-of-memory: recognised without importing torch, and explained in the fields to change."""

from __future__ import annotations

from kubetune_api.v1alpha1 import method_record


def is_gpu_oom(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or an error that wraps its message), without importing torch."""
    return any(t.__name__ == "OutOfMemoryError" for t in type(e).__mro__) or (
        "CUDA out of memory" in str(e)
    )


def gpu_oom_message(batch_size: int, grad_accum: int, max_seq_length: int, method: str) -> str:
    lower = max(1, batch_size // 2)
    fixes = [
        f"set hyperparameters.batchSize {lower} and hyperparameters.gradientAccumulationSteps "
        f"{grad_accum * batch_size // lower} (the same global batch)",
        "lower dataset.maxSeqLength",
        "set hyperparameters.gradientCheckpointing: true",
    ]
    if method_record(method).oom_suggests_qlora:
        fixes.append("use method.type qlora (4-bit base)")
    fixes.append("or request a GPU with more memory (resources.gpuType)")
    return (
        f"CUDA out of memory at hyperparameters.batchSize {batch_size}, dataset.maxSeqLength "
        f"{max_seq_length}, method {method}; a retry at the same settings would fail the same "
        f"way, so this run stops. To fit: {'; '.join(fixes)}"
    )
