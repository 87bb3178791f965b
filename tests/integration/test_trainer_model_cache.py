"""The model cache across pods (issue 19, floor 4): a pod killed right after downloading the
base model leaves it in the cache (the shared cache PVC: KUBETUNE_MODEL_CACHE, as the operator
sets it for spec.model.cacheClaimName), and the next pod of the same job reuses it: its log
says so and not one request for the model's objects reaches MinIO (counted at the TCP proxy in
front of it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.s3 import split_s3_uri
from kubetune_trainer.testing import harness
from s3proxy import S3Proxy
from trainer_fixtures import TrainerS3, causal_spec, unique


@pytest.fixture
def proxy(cluster: Any) -> Any:
    p = S3Proxy(cluster.s3_endpoint)
    p.up()
    yield p
    p.down()


def model_reads(proxy: S3Proxy, bucket: str, key_prefix: str) -> list[tuple[str, str]]:
    """GET/HEAD requests for the model's objects (the bucket listing is not one of them)."""
    path = f"/{bucket}/{key_prefix}"
    return [(m, p) for m, p in proxy.requests if m in ("GET", "HEAD") and p.startswith(path)]


def test_the_next_pod_takes_the_model_from_the_cache_without_reading_it_from_s3(
    trainer_s3: TrainerS3,
    proxy: S3Proxy,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "model-cache-pvc"
    env = {
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_ENDPOINT_URL_S3": proxy.url,
        "KUBETUNE_MODEL_CACHE": str(cache),
    }
    spec = causal_spec(
        trainer_s3,
        "lora",
        dataset={"validation": None},
        hyperparameters={"evalStrategy": "no", "evalSteps": None, "maxSteps": 2, "saveSteps": 2},
    )
    bucket, model_key = split_s3_uri(spec["model"]["s3Uri"])
    cfg = harness.trainer_config(spec, name=unique("cache"), work_dir=tmp_path / "pod1")

    # pod 1: downloads the model into the cache, then is killed
    t0 = time.monotonic()
    proc, term, log = harness.start(cfg, tmp_path / "pod1", env)
    harness.wait_for_log(proc, log, "model cache: stored", 300)
    proc.kill()
    killed = harness.finish(proc, term, log, t0, timeout=30)
    assert killed.returncode == -9 and not killed.lines("model cache hit")
    first = model_reads(proxy, bucket, model_key)
    assert any(m == "GET" for m, _ in first), proxy.requests  # the counting sees downloads

    # pod 2 of the same job (same config, a fresh scratch volume): a verified cache hit
    proxy.requests.clear()
    cfg["workDir"] = str(tmp_path / "pod2")
    res = harness.run(cfg, tmp_path / "pod2", env, timeout=600)
    assert res.returncode == 0, res.output[-4000:]
    assert res.lines("model cache hit"), res.output[-3000:]
    assert not res.lines("downloading model"), res.output[-3000:]
    assert model_reads(proxy, bucket, model_key) == []
    assert any(p.startswith(f"/{bucket}?") or "list-type" in p for _, p in proxy.requests)
    print(f"\n[model-cache] pod 1 read the model with {len(first)} requests; pod 2 with none")
