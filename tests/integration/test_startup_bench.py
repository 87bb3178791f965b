"""bench/startup_bench.py (issue 19 floor 3's instrument) against the real MinIO, on CPU: the
time to first step comes from the run's own manifest, and the second run on the same cache is a
cache hit that downloads nothing. The s5cmd case needs `hack/build-tools s5cmd`, which `make
test` does not build; the GPU call runs it (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_startup_bench_reads_the_manifest_and_shows_the_cache_hit(
    cluster: Any, tmp_path: Path
) -> None:
    out = tmp_path / "startup.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "startup_bench.py"),
            "--model",
            "tiny",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--cases",
            "s3,cache-hit",
            "--root",
            str(tmp_path / "root"),
            "--out",
            str(out),
        ],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    by_case = {r["case"]: r for r in recs if "case" in r}
    assert set(by_case) == {"s3", "cache-hit"}
    first, again = by_case["s3"], by_case["cache-hit"]
    # the first run downloaded into an empty cache, the second found it there
    assert first["cache_hit"] is False
    assert any("model cache: stored" in ln for ln in first["log"]), first["log"]
    assert again["cache_hit"] is True, again["log"]
    for r in (first, again):
        startup = r["startup"]
        assert 0 < startup["modelResolveSeconds"] <= startup["firstStepSeconds"]
        assert r["time_to_first_step_s"] == startup["firstStepSeconds"]
    summary = recs[-1]["summary"]["median_time_to_first_step_s"]
    assert set(summary) == {"s3", "cache-hit"}
