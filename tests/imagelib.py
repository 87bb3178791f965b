"""The locally built images, for the tests that run containers inside them.

``built(*names)`` runs ``hack/images`` (cached under ~/.cache/kubetune/containers: a second call
with unchanged sources answers in seconds) and returns {name: local image ref}. It fails, never
skips, when the image tools are missing: .ci/run installs them, and a silent skip would hide a
broken image. KUBETUNE_IMAGES=off skips explicitly (a machine that cannot run containers).
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HACK_IMAGES = REPO / "hack" / "images"
PODMAN = REPO / "hack" / "podman"


@functools.cache
def _build(names: tuple[str, ...]) -> dict[str, str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(HACK_IMAGES), *names], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"hack/images {' '.join(names)} failed (rc {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    print(f"\n[images] hack/images {' '.join(names)} took {time.monotonic() - t0:.1f}s")
    refs = {}
    for line in proc.stdout.splitlines():
        name, _, ref = line.partition(" ")
        if ref:
            refs[name] = ref
    return refs


def built(*names: str) -> dict[str, str]:
    if os.environ.get("KUBETUNE_IMAGES") == "off":
        pytest.skip("KUBETUNE_IMAGES=off: image tests disabled on this machine")
    return _build(tuple(names))


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PODMAN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
