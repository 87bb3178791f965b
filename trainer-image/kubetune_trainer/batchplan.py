"""How a run splits its work: the distribution strategy and the per-process share of the global
batch (distribute.py), then accumulation folding on that share (accumulation.py). Both read the
model's shapes and the GPU's memory; rank 0 logs them and the manifest keeps them."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import MethodType

from . import distribute

log = logging.getLogger("kubetune")


def distribution(
    spec: Any, model_path: Path, device: int | None
) -> tuple[distribute.Plan, dict[str, Any]]:
    """The strategy for this run (distribute.choose, from the model's shapes and the GPU's
    memory) and the per-process split of the global batch; both logged by rank 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = distribute.choose(
        spec.resources.distribution.strategy,
        MethodType(spec.method.type),
        world,
        distribute.parameter_count(model_shape(model_path)),
        gpu_memory(device),
    )
    h = spec.hyperparameters
    batch = distribute.split_batch(h.batch_size, h.gradient_accumulation_steps, world)
    log.info(
        "distribution: %s over %d process(es) (%s); global batch %d = %d per device x %d "
        "processes x %d accumulation",
        dist.strategy,
        world,
        dist.reason,
        batch["globalBatchSize"],
        batch["perDeviceBatchSize"],
        batch["processes"],
        batch["gradientAccumulationSteps"],
    )
    if not batch["kept"]:
        log.warning(
            "global batch %d, not the %d asked (batchSize x gradientAccumulationSteps): %d "
            "processes cannot share it exactly; make batchSize x gradientAccumulationSteps a "
            "multiple of the process count to keep it",
            batch["globalBatchSize"],
            batch["askedGlobalBatchSize"],
            world,
        )
    return dist, batch


def fold(
    speed: dict[str, Any],
    spec: Any,
    plan: Any,
    model_path: Path,
    batch: dict[str, Any],
    device: int | None,
) -> dict[str, Any]:
    """Accumulation folding (accumulation.fold_accumulation) on this process's share of the batch;
    logged, and kept in `speed` (the manifest's speed section)."""
    from .accumulation import fold_accumulation

    shape = model_shape(model_path)
    fold = fold_accumulation(
        batch_size=batch["perDeviceBatchSize"],
        grad_accum=batch["gradientAccumulationSteps"],
        padding_free=plan.padding_free,
        max_seq_length=spec.dataset.max_seq_length,
        shape=shape,
        parameters=distribute.parameter_count(shape),
        method=str(spec.method.type),
        checkpointing=spec.hyperparameters.gradient_checkpointing,
        gpu_memory=gpu_memory(device),
    )
    speed["accumulation"] = fold.as_dict()
    if fold.factor > 1:
        log.info("speed: %s", fold.reason)
    return {
        **batch,
        "perDeviceBatchSize": fold.micro_batch,
        "gradientAccumulationSteps": fold.accumulation,
    }


def gpu_memory(device: int | None) -> int | None:
    """Total memory of the CUDA device in bytes, or None on CPU."""
    if device is None:
        return None
    import torch

    return int(torch.cuda.get_device_properties(device).total_memory)


def model_shape(model_path: Path) -> dict[str, Any]:
    """The model's config.json (its shapes), or {} when it cannot be read."""
    try:
        shape = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return shape if isinstance(shape, dict) else {}
