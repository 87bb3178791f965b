"""The operator image has no torch: importing every operator module (which pulls in the trainer's
torch-free contract modules) must not import torch, transformers, peft or trl."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import kubetune_operator

HEAVY = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets")


def test_operator_modules_import_without_ml_libraries() -> None:
    modules = [
        m.name for m in pkgutil.iter_modules(kubetune_operator.__path__, "kubetune_operator.")
    ]
    assert "kubetune_operator.status" in modules and "kubetune_operator.render" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
