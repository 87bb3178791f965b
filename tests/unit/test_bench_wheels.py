"""The GPU machine has no network: what the API package needs at run time must travel in the
wheels `bench/make_wheels.sh` builds, or be on that machine already. The examples-table call of
2026-12-04 lost every kubetune side to `No module named 'cel'` (the API evaluates its CEL rules
in Python since issue 16); this test would have caught it on CPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Distributions the device image has (bench/make_wheels.sh's header; /work/.library/device docs):
# torch and its dependencies, transformers and its dependencies, accelerate, peft, pyarrow.
DEVICE_HAS = {"torch", "triton", "typing-extensions", "numpy", "pyyaml", "accelerate", "pyarrow"}

PROBE = """
import json, sys, importlib.metadata as md, pathlib
before = set(sys.modules)
from kubetune_api.v1alpha1 import FineTuneJobSpec
import yaml
doc = yaml.safe_load(pathlib.Path(sys.argv[1]).read_text())
FineTuneJobSpec.model_validate(doc["spec"])  # runs the CEL rules (lazy imports included)
mods = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
dists = md.packages_distributions()
print(json.dumps(sorted({d for m in mods for d in dists.get(m, [])})))
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_api_packages_runtime_dependencies_travel_in_the_device_wheels() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "examples" / "quickstart.yaml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    needed = {_norm(d) for d in json.loads(out)} - {"kubetune"}
    assert "common-expression-language" in needed  # the probe sees the lazy CEL import
    script = (REPO / "bench" / "make_wheels.sh").read_text()
    shipped = {_norm(m) for m in re.findall(r"([A-Za-z0-9_.-]+)==[0-9]", script)}
    missing = needed - shipped - {_norm(d) for d in DEVICE_HAS} - {"pyyaml"}
    assert not missing, f"add to bench/make_wheels.sh (e2e wheels): {sorted(missing)}"
