"""Foundation: scheduling against the agent's Node(s), images, and memory limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clusterlib import Cluster, one_container_pod

GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"


def _pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    return one_container_pod(name, command, container=container)


def _condition(pod: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def test_gpu_pod_unschedulable_until_gpu_node_joins(cluster: Cluster, namespace: str) -> None:
    pod = _pod(
        "wants-gpu",
        ["sh", "-c", "echo gpus=$NVIDIA_VISIBLE_DEVICES > /dev/termination-log"],
        resources={"limits": {"nvidia.com/gpu": 1}},
    )
    pod["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "H100"}
    cluster.apply(pod, namespace)

    def unschedulable() -> dict[str, Any] | None:
        p = cluster.kubectl_json("get", "pod", "wants-gpu", namespace=namespace)
        c = _condition(p, "PodScheduled")
        return c if c and c["status"] == "False" else None

    cond = cluster.wait_for(unschedulable, timeout=30, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"] or "node(s) didn't match" in cond["message"]
    p = cluster.kubectl_json("get", "pod", "wants-gpu", namespace=namespace)
    assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")

    node = f"gpu-{namespace[-5:]}"
    cluster.add_node(node, gpus=2, labels={"nvidia.com/gpu.product": "H100"}, taints=[GPU_TAINT])
    try:
        n = cluster.kubectl_json("get", "node", node)
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == "H100"

        def succeeded() -> dict[str, Any] | None:
            q = cluster.kubectl_json("get", "pod", "wants-gpu", namespace=namespace)
            return q if q["status"].get("phase") == "Succeeded" else None

        done = cluster.wait_for(succeeded, timeout=60, what="GPU pod to run on the GPU node")
        assert done["spec"]["nodeName"] == node
        term = done["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["message"] == "gpus=0\n"
    finally:
        cluster.remove_node(node)
    cluster.wait_for(
        lambda: cluster.kubectl("get", "node", node, check=False).returncode != 0,
        timeout=30,
        what=f"node {node} to be deleted",
    )


def test_unpullable_image_reports_image_pull_backoff(cluster: Cluster, namespace: str) -> None:
    # hack/cluster makes the agent treat images on the reserved .invalid TLD as unpullable.
    pod = _pod("no-image", ["true"], image="registry.invalid/kubetune/trainer:missing")
    cluster.apply(pod, namespace)
    seen: set[str] = set()

    def waiting_reasons() -> bool:
        p = cluster.kubectl_json("get", "pod", "no-image", namespace=namespace)
        for cs in p["status"].get("containerStatuses") or []:
            w = cs["state"].get("waiting")
            if w:
                seen.add(w["reason"])
        assert p["status"]["phase"] == "Pending"
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    cluster.wait_for(
        waiting_reasons, timeout=40, interval=0.2, what="ErrImagePull and ImagePullBackOff"
    )


def test_memory_limit_oom_killed(cluster: Cluster, namespace: str) -> None:
    if (
        not Path("/sys/fs/cgroup/memory/kubetune").is_dir()
        and not Path("/sys/fs/cgroup/kubetune").is_dir()
    ):
        pytest.skip("the node agent has no memory cgroup on this machine (see its log)")
    hog = (
        "b = bytearray(512 * 1024 * 1024)\nb[::4096] = b'x' * (len(b) // 4096)\nprint('survived')\n"
    )
    pod = _pod("hog", ["python", "-c", hog], resources={"limits": {"memory": "64Mi"}})
    cluster.apply(pod, namespace)

    def failed() -> dict[str, Any] | None:
        p = cluster.kubectl_json("get", "pod", "hog", namespace=namespace)
        return p if p["status"].get("phase") in ("Failed", "Succeeded") else None

    p = cluster.wait_for(failed, timeout=60, what="pod hog to finish")
    assert p["status"]["phase"] == "Failed"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["reason"] == "OOMKilled"
    assert term["exitCode"] == 137
    assert "survived" not in cluster.pod_log(namespace, "hog")
