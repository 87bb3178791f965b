"""Stages `save` and `merge`: the adapter (PEFT, safetensors) and a standalone merged model.

Merging never touches the training copy: the base is reloaded in the merged dtype (for qlora
that is a full-precision reload, not the 4-bit weights), the saved adapter applied to it, and
`merge_and_unload` folds it in. Full and bitfit write the trained model itself as merged/.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import ArtifactsMissing, method_record

log = logging.getLogger(__name__)


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _state(state_dict: dict[str, Any] | None) -> dict[str, Any]:
    """save_pretrained's state_dict argument: the weights FSDP gathered on rank 0, if any."""
    return {} if state_dict is None else {"state_dict": state_dict}


def save_adapter(
    model: Any, tokenizer: Any, dest: Path, state_dict: dict[str, Any] | None = None
) -> None:
    model.save_pretrained(str(dest), safe_serialization=True, **_state(state_dict))
    tokenizer.save_pretrained(str(dest))
    if not (dest / "adapter_model.safetensors").is_file():
        raise ArtifactsMissing(
            f"saving the adapter produced no adapter_model.safetensors in {dest}"
        )
    log.info("adapter saved (%s)", ", ".join(sorted(p.name for p in dest.iterdir())))


def save_full(
    model: Any, tokenizer: Any, dest: Path, dtype: str, state_dict: dict[str, Any] | None = None
) -> None:
    """The whole trained model (full, bitfit) in the merged dtype."""
    if state_dict is not None:
        state_dict = {k: v.to(torch_dtype(dtype)) for k, v in state_dict.items()}
    else:
        model = model.to(torch_dtype(dtype))
    model.save_pretrained(str(dest), safe_serialization=True, **_state(state_dict))
    tokenizer.save_pretrained(str(dest))
    log.info("model saved to %s (%s)", dest, dtype)


def release(*objs: Any) -> None:
    """Drop references and free accelerator memory before loading another copy."""
    del objs
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def merge(
    base_path: Path,
    adapter_dir: Path,
    dest: Path,
    *,
    task: str,
    dtype: str,
    classification: Any,
    trust_remote_code: bool,
    tokenizer: Any,
) -> None:
    import torch
    from peft import PeftModel

    from .modelload import label_maps, model_class

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if classification is not None:
        id2label, label2id = label_maps(classification)
        kwargs.update(num_labels=classification.count, id2label=id2label, label2id=label2id)
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    device = merge_device(base_path, dtype, free)
    if device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    log.info("merging on %s in %s", device, dtype)
    base = model_class(task).from_pretrained(str(base_path), **kwargs)
    if classification is not None and getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    release(base, model, merged)
    log.info("merged model saved (%s)", dtype)


def save_stage(
    ctx: Any, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None
) -> None:
    """artifacts/adapter for adapter methods; artifacts/merged (the whole model) otherwise.
    `state_dict`: the whole weights gathered from FSDP shards (pipeline._gathered)."""
    spec = ctx.cfg.spec
    ctx.report(stage="save")
    if method_record(spec.method.type).adapter:
        save_adapter(model, tokenizer, ctx.artifacts / "adapter", state_dict)
    else:
        save_full(
            model, tokenizer, ctx.artifacts / "merged", str(spec.output.merged_dtype), state_dict
        )


def merge_stage(ctx: Any, tokenizer: Any) -> None:
    """artifacts/merged from the saved adapter (the training copy is gone by now); drops the
    adapter afterwards when output.adapter is false."""
    spec = ctx.cfg.spec
    out = spec.output
    record = method_record(spec.method.type)
    if not record.adapter:
        return
    adapter_dir = ctx.artifacts / "adapter"
    if out.merged_model and record.mergeable:
        ctx.report(stage="merge")
        merge(
            ctx.model_path,
            adapter_dir,
            ctx.artifacts / "merged",
            task=str(spec.task),
            dtype=str(out.merged_dtype),
            classification=spec.classification,
            trust_remote_code=spec.model.trust_remote_code,
            tokenizer=tokenizer,
        )
    elif out.merged_model:
        log.info("method %s cannot be merged into the weights: adapter only", record.type.value)
    if not out.adapter:
        shutil.rmtree(adapter_dir)


def merge_device(base_path: Path, dtype: str, free_gpu_bytes: int | None) -> str:
    """cuda when the base model in `dtype` fits comfortably in free GPU memory, else cpu
    (after qlora the bf16 model can be 4x what trained on the GPU)."""
    if free_gpu_bytes is None:
        return "cpu"
    stored = sum(p.stat().st_size for p in base_path.glob("*.safetensors")) or sum(
        p.stat().st_size for p in base_path.glob("*.bin")
    )
    # weights are usually stored in 16 bits; float32 doubles them
    need = stored * (2 if dtype == "float32" else 1)
    return "cuda" if need * 1.3 < free_gpu_bytes else "cpu"
