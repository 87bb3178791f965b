"""The layering the API package exists for, read from the source's imports: the operator and the
SDK stand on `kubetune_api` and never import the trainer package (which needs torch), and the API
imports neither of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "kubetune_api": REPO / "api/kubetune_api",
    "kubetune_operator": REPO / "operator/kubetune_operator",
    "kubetune_trainer": REPO / "trainer-image/kubetune_trainer",
    "kubetune": REPO / "sdk/kubetune",
}
# What each package may never import (at module level or inside a function).
FORBIDDEN = {
    "kubetune_api": {"kubetune_operator", "kubetune_trainer", "kubetune", "torch"},
    "kubetune_operator": {"kubetune_trainer", "torch"},
    "kubetune": {"kubetune_trainer", "torch"},
    "kubetune_trainer": {"kubetune_operator", "kubetune"},
}


def imported_packages(source: str) -> set[str]:
    """Top-level package names of every absolute import in `source`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_reads_both_import_forms() -> None:
    src = "import torch.nn as nn\nfrom kubetune_trainer.s3 import x\nfrom . import y\n"
    assert imported_packages(src) == {"torch", "kubetune_trainer"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import(package: str) -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {bad}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for bad in sorted(imported_packages(path.read_text()) & FORBIDDEN[package])
    ]
    assert not offenders, "\n".join(offenders)
