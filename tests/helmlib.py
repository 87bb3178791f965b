"""The Helm chart rendered by the real helm (v3.22.0 from the tool cache: `hack/build-tools
helm`), no cluster needed: what the chart tests in tests/unit read their objects from; and their
contracts, for the integration tests that check them on a real API server."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "kubetune"
RELEASE_NS = "kubetune-system"

Obj = dict[str, Any]


@cache
def helm_bin() -> str:
    if os.environ.get("KUBETUNE_HELM"):
        return os.environ["KUBETUNE_HELM"]
    out = subprocess.run(
        [str(REPO / "hack" / "build-tools"), "paths"], capture_output=True, text=True, check=True
    ).stdout
    paths = dict(line.split("=", 1) for line in out.split())
    helm = Path(paths["KUBETUNE_HELM_BIN"]) / "helm"
    assert helm.exists(), f"helm is not built: run `hack/build-tools helm` (expected {helm})"
    return str(helm)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def set_args(values: dict[str, Any] | None) -> list[str]:
    """Values as one --set-json per top-level key (exact types, no --set string guessing)."""
    out: list[str] = []
    for k, v in (values or {}).items():
        out += ["--set-json", f"{k}={json.dumps(v)}"]
    return out


def render(values: dict[str, Any] | None = None, release: str = "kt") -> list[Obj]:
    res = helm("template", release, str(CHART), "--namespace", RELEASE_NS, *set_args(values))
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str) -> Obj:
    found = find(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def chart_contract(name: str) -> ModuleType:
    """A chart test module of tests/unit (e.g. test_chart_rbac: the RBAC contract), loaded by
    path for an integration test that checks the same contract against the real API server."""
    unit = str(REPO / "tests" / "unit")
    if unit not in sys.path:  # its modules import each other by name, as pytest lets them
        sys.path.insert(0, unit)
    spec = importlib.util.spec_from_file_location(f"_kt_{name}", f"{unit}/{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
