"""Runs of several processes on the real control plane, with the real trainer on CPU (gloo):
`gpus: 2` on one node (one pod, two processes through the launcher) and `nodes: 2` (an Indexed
Job of two pods on two node agents, torchrun's static rendezvous on index 0, two processes per
pod). The node agents advertise fake GPUs, so the scheduler places the pods as it would on GPU
nodes; the processes themselves train on CPU."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster
from operator_harness import Ftj, Operators
from test_operator_e2e import keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]
QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


def manifest(name: str, resources: dict[str, Any], **hp: Any) -> dict[str, Any]:
    doc = copy.deepcopy(QUICKSTART)
    doc["metadata"] = {"name": name}
    doc["spec"]["hyperparameters"].update(
        {"maxSteps": 8, "loggingSteps": 1, "evalSteps": 4, "saveSteps": 4, **hp}
    )
    doc["spec"]["tracking"] = {"reportTo": []}
    doc["spec"]["resources"] = {"cpu": "2", "memory": "4Gi", **resources}
    return doc


def losses(log: str) -> dict[int, float]:
    """Training loss per step from the trainer's progress lines."""
    return {
        int(step): float(loss)
        for step, loss in re.findall(r"\bstep (\d+)/\d+ epoch [0-9.]+ loss ([0-9.]+)", log)
    }


def trainer_log(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> str:
    return cluster.pod_log(namespace, pod["metadata"]["name"], "trainer")


def fail_with_logs(cluster: Cluster, namespace: str, ftj: Ftj, st: dict[str, Any]) -> None:
    logs = "\n".join(
        f"--- {p['metadata']['name']} ---\n{trainer_log(cluster, namespace, p)[-3000:]}"
        for p in ftj.pods()
    )
    pytest.fail(f"not Succeeded: {json.dumps(st, indent=1)}\n{logs}")


def test_two_gpus_run_two_processes_in_one_pod(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    s3: Any,
    tiny_fixtures: None,
) -> None:
    node = f"gpu2-{namespace[-5:]}"
    cluster.add_node(node, gpus=2)
    try:
        operators.new(stub=False)
        cluster.apply(manifest("ddp", {"gpus": 2}), namespace=namespace)
        ftj = Ftj(cluster, namespace, "ddp")
        (job,) = ftj.wait(lambda: ftj.jobs() or None, "the run's Job", timeout=60)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][-2:] == ["--nproc-per-node", "2"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        st = ftj.wait_phase("Succeeded", "Failed", timeout=600)
        if st["phase"] != "Succeeded":
            fail_with_logs(cluster, namespace, ftj, st)
        (pod,) = ftj.pods()
        assert pod["spec"]["nodeName"] == node
        log = trainer_log(cluster, namespace, pod)
        # two processes under torchrun, sharing the asked global batch of 8
        assert "global batch 8 = 4 per device x 2 processes x 1 accumulation" in log
        assert log.count("manifest sha256") == 1
        assert len(keys(s3, st["artifacts"]["manifestUri"])) == 1
        assert st["progress"]["step"] == 8 and st["gpuSeconds"] > 0
    finally:
        cluster.remove_node(node)


def test_two_nodes_train_as_one_group(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    s3: Any,
    tiny_fixtures: None,
) -> None:
    """Two node agents with 2 fake GPUs each; `nodes: 2, gpus: 2` needs both (4 processes).
    Per-step losses match one process training on the same global batch."""
    nodes = [f"grp{i}-{namespace[-5:]}" for i in range(2)]
    for n in nodes:
        cluster.add_node(n, gpus=2)
    try:
        operators.new(stub=False)
        t0 = time.monotonic()
        cluster.apply(manifest("group", {"gpus": 2, "nodes": 2}), namespace=namespace)
        ftj = Ftj(cluster, namespace, "group")
        (job,) = ftj.wait(lambda: ftj.jobs() or None, "the run's Job", timeout=60)
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
        svc = cluster.kubectl_json("get", "service", job["metadata"]["name"], namespace=namespace)
        assert svc["spec"]["clusterIP"] == "None"
        st = ftj.wait_phase("Succeeded", "Failed", timeout=900)
        if st["phase"] != "Succeeded":
            fail_with_logs(cluster, namespace, ftj, st)
        pods = sorted(
            ftj.pods(),
            key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"],
        )
        assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes)
        rank0 = trainer_log(cluster, namespace, pods[0])
        assert "global batch 8 = 2 per device x 4 processes x 1 accumulation" in rank0
        # rank 0 alone uploads and reports: one manifest, written once
        assert rank0.count("manifest sha256") == 1
        assert "manifest sha256" not in trainer_log(cluster, namespace, pods[1])
        assert len(keys(s3, st["artifacts"]["manifestUri"])) == 1
        assert st["progress"]["step"] == 8
        # gpuSeconds sums both pods: at least 2 GPUs x 2 pods for as long as the shorter ran
        assert st["gpuSeconds"] > 0
        print(f"\n2 nodes x 2 processes: Succeeded in {time.monotonic() - t0:.0f}s")

        # the same spec in one process: the same global batch, the same losses per step
        cluster.apply(manifest("single", {}), namespace=namespace)
        single = Ftj(cluster, namespace, "single")
        st1 = single.wait_phase("Succeeded", "Failed", timeout=600)
        if st1["phase"] != "Succeeded":
            fail_with_logs(cluster, namespace, single, st1)
        one = losses(trainer_log(cluster, namespace, single.pods()[0]))
        group = losses(rank0)
        assert set(one) == set(group) == set(range(1, 9)), (one, group)
        for step, loss in one.items():
            assert abs(group[step] - loss) <= 0.05 * loss, (step, one, group)
        # the Service goes with the run's Job when the FineTuneJob is deleted
        cluster.kubectl("delete", "ftj", "group", "--wait=true", namespace=namespace)
    finally:
        for n in nodes:
            cluster.remove_node(n)


def test_group_that_cannot_be_fully_scheduled_fails_at_its_deadline(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    tiny_fixtures: None,
) -> None:
    """One GPU node for a two-node run: index 1 stays Unschedulable, the status says so, and
    at runPolicy.schedulingTimeoutSeconds the run fails and the scheduled pod is stopped."""
    node = f"half-{namespace[-5:]}"
    cluster.add_node(node, gpus=2)
    try:
        # the real trainer: index 0 starts and waits in the rendezvous, holding its GPUs
        operators.new(stub=False)
        doc = manifest("half", {"gpus": 2, "nodes": 2})
        doc["spec"]["runPolicy"] = {"schedulingTimeoutSeconds": 30}
        cluster.apply(doc, namespace=namespace)
        ftj = Ftj(cluster, namespace, "half")

        def unschedulable() -> dict[str, Any] | None:
            c = ftj.condition("Ready")
            return c if c.get("reason") == "Unschedulable" else None

        cond = ftj.wait(unschedulable, "Unschedulable", timeout=60)
        assert ftj.status()["phase"] == "Pending"
        assert "Insufficient nvidia.com/gpu" in cond["message"], cond
        assert re.search(r"index \d", cond["message"]), cond
        st = ftj.wait_phase("Failed", timeout=120)
        assert ftj.condition("Ready")["reason"] == "Unschedulable"
        assert "schedulingTimeoutSeconds (30s)" in st["message"], st
        # the Job and its pods are gone: no GPU stays held by the half that was scheduled
        ftj.wait(lambda: (not ftj.jobs() and not ftj.pods()) or None, "pods gone", timeout=90)
        assert ftj.status()["phase"] == "Failed"
    finally:
        cluster.remove_node(node)


def _worker_pids(pod_name: str) -> list[int]:
    """The training processes (torchrun's workers, with LOCAL_RANK) the node agent runs for
    `pod_name`: processes on this host whose environment names that pod."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"KUBETUNE_POD_NAME={pod_name}".encode() in env and any(
            e.startswith(b"LOCAL_RANK=") for e in env
        ):
            out.append(int(proc.name))
    return out


def test_a_killed_process_restarts_the_group_from_the_checkpoint(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    tiny_fixtures: None,
) -> None:
    """SIGKILL one training process of index 1 mid-run: its pod fails, index 0's processes
    fail on the broken collective, the Job starts both pods again, and the new group resumes
    from the last checkpoint (not step 0) and ends Succeeded; the restart is one attempt."""
    nodes = [f"kill{i}-{namespace[-5:]}" for i in range(2)]
    for n in nodes:
        cluster.add_node(n, gpus=1)
    try:
        operators.new(stub=False)
        doc = manifest("restart", {"gpus": 1, "nodes": 2}, maxSteps=40, saveSteps=4, evalSteps=40)
        doc["spec"]["runPolicy"] = {"backoffLimit": 1}
        cluster.apply(doc, namespace=namespace)
        ftj = Ftj(cluster, namespace, "restart")
        ftj.wait_step(6, "step 6 (after the checkpoint of step 4)")
        (victim,) = [
            p
            for p in ftj.pods()
            if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
            and p["status"]["phase"] == "Running"
        ]
        pids = _worker_pids(victim["metadata"]["name"])
        assert pids, "no training process found for index 1"
        os.kill(pids[0], signal.SIGKILL)
        st = ftj.wait_phase("Succeeded", "Failed", timeout=900)
        if st["phase"] != "Succeeded":
            fail_with_logs(cluster, namespace, ftj, st)
        pods = ftj.pods()
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        assert len(failed) == 2, [p["metadata"]["name"] for p in pods]  # the whole group
        (rank0,) = [
            p
            for p in pods
            if p["status"]["phase"] == "Succeeded"
            and p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0"
        ]
        log = trainer_log(cluster, namespace, rank0)
        m = re.search(r"resuming from \S+ \(step (\d+)\)", log)
        assert m and int(m.group(1)) >= 4, log[-3000:]
        assert st["progress"]["step"] == 40
        events = [e for e in ftj.events() if e["reason"] == "Retrying"]
        assert events and all("attempt 2" in e["message"] for e in events), events
    finally:
        for n in nodes:
            cluster.remove_node(n)
