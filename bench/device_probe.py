"""Print what the GPU machine has that the benchmark relies on (one JSON line)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import inspect
import json

import torch

out: dict[str, object] = {"torch_cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
for name in [
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "trl",
    "datasets",
    "bitsandbytes",
    "liger-kernel",
    "triton",
    "pyarrow",
    "huggingface-hub",
    "flash-attn",
    "kernels",
    "numpy",
]:
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        out[name] = None
out["torch_varlen"] = importlib.util.find_spec("torch.nn.attention.varlen") is not None
if out["torch_varlen"]:
    from torch.nn.attention.varlen import varlen_attn

    out["varlen_signature"] = str(inspect.signature(varlen_attn))
for mod in ("datasets", "trl", "peft", "bitsandbytes", "liger_kernel.transformers"):
    try:
        __import__(mod)
        out[f"import_{mod}"] = "ok"
    except Exception as e:  # report, don't stop
        out[f"import_{mod}"] = f"{type(e).__name__}: {e}"[:300]
print(json.dumps(out))
