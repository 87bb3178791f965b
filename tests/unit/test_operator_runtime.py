"""settings.py, jsonlog.py and workqueue.py (no cluster)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Hashable

import pytest
from kubetune_operator import jsonlog as klog
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.workqueue import WorkQueue


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KUBETUNE_NAMESPACES": "team-a, team-b",
        "KUBETUNE_TRAINER_IMAGE": "registry/trainer:1",
        "KUBETUNE_TRAINER_COMMAND": '["python", "-m", "kubetune_trainer"]',
        "KUBETUNE_GPU_RESOURCE_NAME": "amd.com/gpu",
        "KUBETUNE_DEFAULT_NODE_SELECTOR": '{"pool": "gpu"}',
        "KUBETUNE_DEFAULT_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]',
        "KUBETUNE_ALLOWED_SERVICE_ACCOUNTS": "irsa,wif",
        "KUBETUNE_LEADER_ELECTION": "false",
        "KUBETUNE_METRICS_PORT": "9090",
        "KUBETUNE_PROGRESS_INTERVAL_SECONDS": "2.5",
        "POD_NAMESPACE": "kubetune-system",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = OperatorSettings()
    assert s.namespaces == ["team-a", "team-b"]
    assert s.trainer_command == ["python", "-m", "kubetune_trainer"]
    assert s.default_node_selector == {"pool": "gpu"}
    assert s.default_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert s.allowed_service_accounts == ["irsa", "wif"]
    assert s.leader_election is False and s.metrics_port == 9090
    assert s.lease_namespace == "kubetune-system"
    assert s.progress_interval_seconds == 2.5


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("KUBETUNE_"):
            monkeypatch.delenv(k)
    s = OperatorSettings()
    assert s.namespaces == [] and s.trainer_command == ["kubetune-train"]
    assert s.trainer_image.startswith("ghcr.io/kubetune/trainer:")
    assert s.gpu_resource_name == "nvidia.com/gpu"
    assert s.gpu_product_label == "nvidia.com/gpu.product"
    assert (s.metrics_port, s.health_port) == (8080, 8081)
    assert s.leader_election is True and s.lease_name == "kubetune-operator"
    assert s.s3_region == "us-east-1" and s.progress_interval_seconds == 10


def test_settings_refuse_bad_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_TRAINER_COMMAND", "kubetune-train --fast")
    with pytest.raises(Exception, match="trainer_command"):
        OperatorSettings()


def test_json_log_lines_name_the_object() -> None:
    fmt = klog.JsonFormatter()
    rec = logging.LogRecord(
        "kubetune_operator.reconcile", logging.INFO, __file__, 1, "hi %s", ("x",), None
    )
    token = klog.current.set(("ns", "job"))
    try:
        line = json.loads(fmt.format(rec))
    finally:
        klog.current.reset(token)
    assert line["namespace"] == "ns" and line["name"] == "job" and line["message"] == "hi x"
    kopf_rec = logging.LogRecord("kopf.objects", logging.WARNING, __file__, 1, "m", (), None)
    kopf_rec.k8s_ref = {"namespace": "n2", "name": "j2"}
    kopf_rec.settings = object()  # Kopf's extras that are not plain values stay out
    line = json.loads(fmt.format(kopf_rec))
    assert (line["namespace"], line["name"]) == ("n2", "j2") and "settings" not in line
    plain = json.loads(fmt.format(logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)))
    assert plain["namespace"] is None and plain["name"] is None


def test_work_queue_serialises_and_coalesces_per_key() -> None:
    async def scenario() -> tuple[list[str], int]:
        calls: list[str] = []
        running: set[Hashable] = set()
        overlap = 0

        async def handler(key: Hashable) -> float | None:
            nonlocal overlap
            if key in running:
                overlap += 1
            running.add(key)
            calls.append(str(key))
            await asyncio.sleep(0.05)
            running.discard(key)
            return None

        q = WorkQueue(handler)
        for _ in range(10):
            q.request("a")
        q.request("b")
        await asyncio.sleep(0.01)
        for _ in range(10):
            q.request("a")  # arrives while "a" runs: one more pass, not ten
        await asyncio.sleep(0.3)
        await q.close()
        return calls, overlap

    calls, overlap = asyncio.run(scenario())
    assert overlap == 0
    assert calls.count("a") == 2 and calls.count("b") == 1


def test_work_queue_retries_failures_with_backoff() -> None:
    async def scenario() -> list[float]:
        times: list[float] = []
        loop = asyncio.get_running_loop()

        async def handler(key: Hashable) -> float | None:
            times.append(loop.time())
            if len(times) < 3:
                raise RuntimeError("API down")
            return None

        q = WorkQueue(handler)
        q.request("a")
        await asyncio.sleep(3.5)
        await q.close()
        return times

    times = asyncio.run(scenario())
    assert len(times) == 3
    assert 0.9 < times[1] - times[0] < 1.5 and 1.9 < times[2] - times[1] < 2.5
