"""FineTuneJobs queued by the real Kueue (hack/cluster kueue-up; the `kueue` fixture starts it).

Node agents advertise fake `nvidia.com/gpu` capacity, so Kueue's quota and the scheduler work as
on GPU nodes while the trainers run on CPU. Each test makes its own ResourceFlavor,
ClusterQueue(s) and LocalQueue(s), limited to its namespace, and removes them afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clusterlib import Cluster
from operator_harness import (  # noqa: F401 (fixtures)
    Ftj,
    Operators,
    op_identity_fixture,
    operators_fixture,
    stub_ftj,
)

pytestmark = [pytest.mark.integration]


class Queues:
    """Kueue objects of one test: cluster-scoped ones are named after the test namespace."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.suffix = namespace[-5:]
        self.cluster_scoped: list[tuple[str, str]] = []
        self.flavor = f"flavor-{self.suffix}"
        self._apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ResourceFlavor",
                "metadata": {"name": self.flavor},
            }
        )

    def _apply(self, obj: dict[str, Any]) -> None:
        if "namespace" not in obj["metadata"]:
            self.cluster_scoped.append((obj["kind"].lower(), obj["metadata"]["name"]))
        self.cluster.apply([obj])

    def cluster_queue(
        self,
        name: str,
        gpus: int,
        *,
        cohort: str | None = None,
        borrowing_limit: int | None = None,
        preemption: dict[str, Any] | None = None,
        strict_fifo: bool = False,
    ) -> str:
        name = f"{name}-{self.suffix}"
        gpu: dict[str, Any] = {"name": "nvidia.com/gpu", "nominalQuota": gpus}
        if borrowing_limit is not None:
            gpu["borrowingLimit"] = borrowing_limit
        spec: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
            "queueingStrategy": "StrictFIFO" if strict_fifo else "BestEffortFIFO",
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": self.flavor,
                            "resources": [
                                {"name": "cpu", "nominalQuota": 1000},
                                {"name": "memory", "nominalQuota": "10000Gi"},
                                gpu,
                            ],
                        }
                    ],
                }
            ],
        }
        if cohort:
            spec["cohortName"] = f"{cohort}-{self.suffix}"
        if preemption:
            spec["preemption"] = preemption
        self._apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
        return name

    def local_queue(self, name: str, cluster_queue: str) -> str:
        self.cluster.apply(
            [
                {
                    "apiVersion": "kueue.x-k8s.io/v1beta2",
                    "kind": "LocalQueue",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "spec": {"clusterQueue": cluster_queue},
                }
            ]
        )
        return name

    def priority_class(self, name: str, value: int) -> str:
        name = f"{name}-{self.suffix}"
        self._apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
        )
        return name

    def close(self) -> None:
        # Workloads go with their Jobs; the namespace fixture deletes those. ClusterQueues
        # keep a finalizer while workloads are admitted, so do not wait for them.
        for kind, name in reversed(self.cluster_scoped):
            with contextlib.suppress(Exception):
                self.cluster.kubectl("delete", kind, name, "--wait=false", check=False)


@pytest.fixture
def queues(kueue: Cluster, namespace: str) -> Iterator[Queues]:
    q = Queues(kueue, namespace)
    try:
        yield q
    finally:
        q.close()


@pytest.fixture
def gpu_node(cluster: Cluster, namespace: str) -> Iterator[str]:
    """A node agent with 8 fake GPUs: more than any quota below, so Kueue is what limits."""
    name = f"kq-{namespace[-5:]}"
    cluster.add_node(name, gpus=8)
    try:
        yield name
    finally:
        cluster.remove_node(name)


def gpu_stub(name: str, action: str = "ok", steps: int = 100, **spec: Any) -> dict[str, Any]:
    """A stub-trainer FineTuneJob asking one GPU (`steps`/10 seconds of 'training')."""
    return stub_ftj(
        name,
        action,
        resources={"gpus": 1, "cpu": "100m", "memory": "256Mi"},
        hyperparameters={"maxSteps": steps},
        **spec,
    )


def workload_of(cluster: Cluster, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
    items = cluster.kubectl_json(
        "get", "workloads", "-l", f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}",
        namespace=namespace,
    )["items"]  # fmt: skip
    return items[0] if items else None


def test_two_gpus_of_quota_run_two_of_five_jobs_the_rest_queue(
    cluster: Cluster, namespace: str, operators: Operators, queues: Queues, gpu_node: str
) -> None:
    cq = queues.cluster_queue("gpus2", gpus=2)
    lq = queues.local_queue("team", cq)
    operators.new()
    names = [f"q{i}" for i in range(5)]
    for name in names:
        cluster.apply(gpu_stub(name, steps=80, queueName=lq), namespace=namespace)
        time.sleep(1.1)  # distinct creation seconds: Kueue orders equal priorities by age
    ftjs = [Ftj(cluster, namespace, n) for n in names]

    # Exactly 2 admitted and running; the 3 others Queued with the quota they wait for.
    def snapshot() -> dict[str, dict[str, Any]] | None:
        sts = {f.name: f.status() for f in ftjs}
        phases = [st.get("phase") for st in sts.values()]
        waiting = [
            st for st in sts.values() if "nvidia.com/gpu" in (st.get("queue") or {}).get(
                "waitingFor", "")
        ]  # fmt: skip
        if phases.count("Running") == 2 and phases.count("Queued") == 3 and len(waiting) == 3:
            return sts
        return None

    sts = cluster.wait_for(snapshot, timeout=60, what="2 Running and 3 Queued")
    assert {n for n, st in sts.items() if st["phase"] == "Running"} == {"q0", "q1"}
    queued = sts["q4"]
    assert queued["queue"]["name"] == lq and queued["queue"]["admitted"] is False
    assert queued["queue"]["workload"].startswith("job-q4-run-1")
    assert "waiting in LocalQueue team" in queued["message"]
    assert {c["type"]: c for c in queued["conditions"]}["Reconciling"]["status"] == "True"
    for st in sts.values():
        if st["phase"] == "Running":
            assert st["queue"]["admitted"] is True and st["queue"]["clusterQueue"] == cq

    # Never more than 2 at once, and all 5 end Succeeded.
    admitted_order: list[str] = []
    deadline = time.monotonic() + 180
    while True:
        sts = {f.name: f.status() for f in ftjs}
        live = [
            n for n, st in sts.items() if (st.get("queue") or {}).get("admitted")
            and st.get("phase") not in ("Succeeded", "Failed")
        ]  # fmt: skip
        assert len(live) <= 2, sts
        for n, st in sts.items():
            if (st.get("queue") or {}).get("admitted") and n not in admitted_order:
                admitted_order.append(n)
        if all(st.get("phase") in ("Succeeded", "Failed") for st in sts.values()):
            break
        assert time.monotonic() < deadline, sts
        time.sleep(0.3)
    assert all(st["phase"] == "Succeeded" for st in sts.values()), sts
    # Admission order is queue order (creation order, one priority): the first two together,
    # then one at a time as quota frees up.
    assert set(admitted_order[:2]) == {"q0", "q1"} and admitted_order[2:] == ["q2", "q3", "q4"]
    # Kueue's own record agrees: each Job started (was unsuspended) no earlier than the one
    # created before it.
    starts = []
    for f in ftjs:
        (job,) = f.jobs()
        starts.append(job["status"]["startTime"])
    assert starts == sorted(starts), starts
