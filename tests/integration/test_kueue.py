"""FineTuneJobs queued by the real Kueue (hack/cluster kueue-up; the `kueue` fixture starts it).

Node agents advertise fake `nvidia.com/gpu` capacity, so Kueue's quota and the scheduler work as
on GPU nodes while the trainers run on CPU. Each test makes its own ResourceFlavor,
ClusterQueue(s) and LocalQueue(s), limited to its namespace, and removes them afterwards.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj
from test_operator_distributed import fail_with_logs, manifest, trainer_log

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


def test_without_queue_name_the_namespaces_default_local_queue_is_used(
    cluster: Cluster, namespace: str, operators: Operators, queues: Queues, gpu_node: str
) -> None:
    """No spec.queueName: Kueue's webhook puts the Job in the LocalQueue named `default`; the
    operator reads the label back from the Job, and the run is queued and admitted there."""
    cq = queues.cluster_queue("dflt", gpus=1)
    queues.local_queue("default", cq)
    operators.new()
    cluster.apply(gpu_stub("hang", "hang"), namespace=namespace)
    hang = Ftj(cluster, namespace, "hang")
    assert hang.wait_phase("Running", timeout=60)["queue"]["name"] == "default"
    cluster.apply(gpu_stub("plain", steps=30), namespace=namespace)
    plain = Ftj(cluster, namespace, "plain")
    st = plain.wait(
        lambda: (s := plain.status()).get("phase") == "Queued" and s, "Queued", timeout=60
    )
    assert st["queue"]["name"] == "default", st
    (job,) = plain.jobs()
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default"
    assert job["spec"]["suspend"] is True
    cluster.kubectl("delete", "finetunejob", "hang", namespace=namespace)
    st = plain.wait_phase("Succeeded", "Failed", timeout=90)
    assert st["phase"] == "Succeeded" and st["queue"]["clusterQueue"] == cq, st


def test_run_policy_suspend_of_a_queued_run_deactivates_its_workload(
    cluster: Cluster, namespace: str, operators: Operators, queues: Queues, gpu_node: str
) -> None:
    """runPolicy.suspend on an admitted run: its Workload goes inactive, Kueue evicts it and
    keeps the Job suspended (it would unsuspend a Job only the operator suspended); resuming
    activates it and Kueue admits it again."""
    cq = queues.cluster_queue("susp", gpus=1)
    lq = queues.local_queue("team", cq)
    operators.new()
    cluster.apply(gpu_stub("susp", "hang", queueName=lq), namespace=namespace)
    ftj = Ftj(cluster, namespace, "susp")
    ftj.wait_phase("Running", timeout=60)
    ftj.patch_spec({"runPolicy": {"suspend": True}})
    st = ftj.wait_phase("Suspended", timeout=60)
    assert {c["type"]: c for c in st["conditions"]}["Suspended"]["reason"] == "Suspended"
    time.sleep(5)  # Kueue does not start it again
    (job,) = ftj.jobs()
    assert job["spec"]["suspend"] is True
    wl = workload_of(cluster, namespace, job)
    assert wl is not None and wl["spec"]["active"] is False
    assert ftj.status()["phase"] == "Suspended"
    ftj.wait(lambda: not [p for p in ftj.pods() if p["status"]["phase"] == "Running"] or None,
             "the pod stopped", timeout=60)  # fmt: skip
    ftj.patch_spec({"runPolicy": {"suspend": False}})
    st = ftj.wait_phase("Running", timeout=60)
    assert st["queue"]["admitted"] is True and not st["queue"].get("preemptions"), st


def test_cohort_queues_borrow_unused_quota_from_each_other(
    cluster: Cluster, namespace: str, operators: Operators, queues: Queues, gpu_node: str
) -> None:
    """Two ClusterQueues of 1 GPU each in one cohort: two jobs in either queue both run while
    the other queue is idle, one of them on borrowed quota; first one way, then the other."""
    cqs = {t: queues.cluster_queue(f"cq-{t}", gpus=1, cohort="pool") for t in ("a", "b")}
    lqs = {t: queues.local_queue(f"team-{t}", cqs[t]) for t in ("a", "b")}
    operators.new()
    for team in ("a", "b"):
        names = [f"{team}{i}" for i in range(2)]
        for n in names:
            cluster.apply(gpu_stub(n, steps=100, queueName=lqs[team]), namespace=namespace)
        ftjs = [Ftj(cluster, namespace, n) for n in names]

        def both_running(ftjs: list[Ftj] = ftjs) -> list[dict[str, Any]] | None:
            sts = [f.status() for f in ftjs]
            return sts if all(st.get("phase") == "Running" for st in sts) else None

        sts = cluster.wait_for(both_running, timeout=60, what=f"both jobs of team {team} running")
        assert all(st["queue"]["clusterQueue"] == cqs[team] for st in sts), sts

        # Kueue updates the ClusterQueue's usage asynchronously, after it admits.
        def gpu_usage(team: str = team) -> tuple[str, str] | None:
            usage = cluster.kubectl_json("get", "clusterqueue", cqs[team])["status"]
            for r in usage["flavorsUsage"][0]["resources"]:
                if r["name"] == "nvidia.com/gpu" and r["total"] != "0":
                    return (r["total"], r["borrowed"])
            return None

        usage = cluster.wait_for(gpu_usage, timeout=20, what=f"{cqs[team]} usage")
        assert usage == ("2", "1"), usage
        for f in ftjs:
            assert f.wait_phase("Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"


def test_a_multi_node_run_is_admitted_as_one_workload_all_pods_or_none(
    cluster: Cluster, namespace: str, operators: Operators, queues: Queues
) -> None:
    """Issue 14's gang admission: `nodes: 2` is one Kueue Workload of 2 pods. With only one GPU
    of quota free, neither pod starts (no half group holding a GPU); when quota frees up, both
    are admitted together and the run Succeeds."""
    nodes = [f"gang{i}-{namespace[-5:]}" for i in range(2)]
    for n in nodes:
        cluster.add_node(n, gpus=4)
    try:
        cq = queues.cluster_queue("gang", gpus=2)
        lq = queues.local_queue("team", cq)
        operators.new()
        cluster.apply(gpu_stub("filler", "hang", queueName=lq), namespace=namespace)
        Ftj(cluster, namespace, "filler").wait_phase("Running", timeout=60)

        group = gpu_stub("group", steps=30, queueName=lq)
        group["spec"]["resources"]["nodes"] = 2
        cluster.apply(group, namespace=namespace)
        ftj = Ftj(cluster, namespace, "group")
        st = ftj.wait(
            lambda: (
                (s := ftj.status()).get("phase") == "Queued"
                and "nvidia.com/gpu" in (s.get("queue") or {}).get("waitingFor", "")
                and s
            ),
            "the group Queued for GPU quota",
            timeout=60,
        )
        (job,) = ftj.jobs()
        wl = workload_of(cluster, namespace, job)
        assert wl is not None and wl["metadata"]["name"] == st["queue"]["workload"]
        # One workload for the whole group: one pod set of 2 pods, 1 GPU each.
        (podset,) = wl["spec"]["podSets"]
        assert podset["count"] == 2
        # 1 GPU is free, but no pod of the group starts on it.
        time.sleep(5)
        assert job["spec"]["suspend"] is True and ftj.pods() == []
        assert ftj.status()["phase"] == "Queued"

        cluster.kubectl("delete", "finetunejob", "filler", namespace=namespace)
        st = ftj.wait_phase("Running", "Succeeded", "Failed", timeout=60)
        assert st["phase"] != "Failed", st
        pods = ftj.pods()
        assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
        wl = workload_of(cluster, namespace, ftj.jobs()[0])
        assert wl is not None
        (assignment,) = wl["status"]["admission"]["podSetAssignments"]
        assert assignment["count"] == 2
        assert ftj.wait_phase("Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    finally:
        for n in nodes:
            cluster.remove_node(n)


@pytest.mark.slow
def test_high_priority_preempts_a_run_which_resumes_from_its_checkpoint(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    queues: Queues,
    gpu_node: str,
    tiny_fixtures: None,
) -> None:
    """The real trainer (CPU). A low-priority run holds the ClusterQueue's only GPU; a
    high-priority one arrives: Kueue preempts the first (Suspended/Preempted, not a failure:
    backoffLimit 0 still lets it finish), runs the second, then readmits the first, which
    resumes from its last checkpoint rather than step 0 and ends Succeeded."""
    cq = queues.cluster_queue("prio", gpus=1, preemption={"withinClusterQueue": "LowerPriority"})
    lq = queues.local_queue("team", cq)
    low_class = queues.priority_class("low", 100)
    high_class = queues.priority_class("high", 1000)
    operators.new(stub=False)

    low = manifest("low", {"gpus": 1}, maxSteps=30, saveSteps=10, evalSteps=30)
    low["spec"]["runPolicy"] = {"backoffLimit": 0}
    low["spec"].update(queueName=lq, workloadPriorityClass=low_class)
    cluster.apply(low, namespace=namespace)
    low_ftj = Ftj(cluster, namespace, "low")
    low_ftj.wait_step(12, "step 12 (after the checkpoint of step 10)")

    high = manifest("high", {"gpus": 1}, maxSteps=10, saveSteps=10, evalSteps=10)
    high["spec"].update(queueName=lq, workloadPriorityClass=high_class)
    cluster.apply(high, namespace=namespace)
    high_ftj = Ftj(cluster, namespace, "high")

    st = low_ftj.wait_phase("Suspended", "Succeeded", "Failed", timeout=60)
    assert st["phase"] == "Suspended", st
    suspended = {c["type"]: c for c in st["conditions"]}["Suspended"]
    assert (
        suspended["reason"] == "Preempted"
        and "resumes from its last checkpoint" in (suspended["message"])
    )
    assert st["queue"]["preemptions"] == 1 and st["queue"]["admitted"] is False
    assert "Preempted" in low_ftj.event_reasons()

    hst = high_ftj.wait_phase("Succeeded", "Failed", timeout=600)
    if hst["phase"] != "Succeeded":
        fail_with_logs(cluster, namespace, high_ftj, hst)
    st = low_ftj.wait_phase("Succeeded", "Failed", timeout=600)
    if st["phase"] != "Succeeded":
        fail_with_logs(cluster, namespace, low_ftj, st)
    # Resumed from the checkpoint, not step 0, in the same run: no retry, no history entry.
    pods = sorted(low_ftj.pods(), key=lambda p: p["metadata"]["creationTimestamp"])
    log = trainer_log(cluster, namespace, pods[-1])
    m = re.search(r"resuming from \S+ \(step (\d+)\)", log)
    assert m and int(m.group(1)) >= 10, log[-3000:]
    assert st["metrics"]["resumed_from_step"] == int(m.group(1))
    assert st["run"] == 1 and not st.get("history"), st
    assert "Retrying" not in low_ftj.event_reasons()
    assert "Resumed" in low_ftj.event_reasons()
