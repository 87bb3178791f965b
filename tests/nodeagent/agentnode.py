"""The node agent's Node: its object and status (capacity, allocatable, conditions), registration,
heartbeats and the node Lease (a mixin of agent.Agent)."""

from __future__ import annotations

import logging
import platform
from typing import Any

from .kube import JSON, ApiError
from .util import now, now_micro

log = logging.getLogger("nodeagent")
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40


class AgentNode:
    """Part of agent.Agent (uses its attributes: args, kube, node, ...)."""

    def node_object(self) -> JSON:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubetune.dev/node-agent": "true",
        }
        for item in self.args.label:
            k, _, v = item.partition("=")
            labels[k] = v
        node: JSON = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": labels},
            "spec": {},
        }
        taints = []
        for t in self.args.taint:
            kv, _, effect = t.rpartition(":")
            k, _, v = kv.partition("=")
            taints.append({"key": k, "value": v or None, "effect": effect})
        if taints:
            node["spec"]["taints"] = taints
        return node

    def node_status(self, version: str) -> JSON:
        ts = now()
        allocatable: dict[str, Any] = dict(self.allocatable)
        if "nvidia.com/gpu" not in allocatable:
            allocatable["nvidia.com/gpu"] = None  # merge patch: drop a stale GPU capacity

        def cond(ctype: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": self.started,
            }

        return {
            "capacity": allocatable,
            "allocatable": allocatable,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "node agent has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "node agent has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "node agent has sufficient PID available",
                ),
                cond(
                    "Ready", "True", "KubeletReady", "kubetune node agent is posting ready status"
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": self.machine_id,
                "systemUUID": self.machine_id,
                "bootID": self.boot_id,
                "kernelVersion": platform.release(),
                "osImage": "kubetune node agent (processes on the host)",
                "containerRuntimeVersion": "kubetune-nodeagent://0.1.0",
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body = self.node_object()
        try:
            created = self.kube.create("/api/v1/nodes", body)
            log.info("registered node %s", self.node)
        except ApiError as e:
            if e.status != 409:
                raise
            patch: JSON = {"metadata": {"labels": body["metadata"]["labels"]}}
            if "taints" in body["spec"]:
                patch["spec"] = {"taints": body["spec"]["taints"]}
            created = self.kube.merge_patch(f"/api/v1/nodes/{self.node}", patch)
            log.info("node %s already registered; labels updated", self.node)
        self.node_uid = created["metadata"]["uid"]
        self.heartbeat()

    def heartbeat(self) -> None:
        try:
            self.kube.merge_patch(
                f"/api/v1/nodes/{self.node}/status", {"status": self.node_status(self.version)}
            )
        except ApiError as e:
            if e.status == 404 and not self.stop.is_set():
                log.warning("node %s disappeared; registering it again", self.node)
                self.register()
                return
            raise
        self.renew_lease()

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        try:
            self.kube.merge_patch(
                path,
                {
                    "spec": {
                        "holderIdentity": self.node,
                        "renewTime": now_micro(),
                        "leaseDurationSeconds": LEASE_SECONDS,
                    }
                },
            )
        except ApiError as e:
            if e.status != 404:
                raise
            self.kube.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.node,
                                "uid": self.node_uid,
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": self.node,
                        "leaseDurationSeconds": LEASE_SECONDS,
                        "renewTime": now_micro(),
                    },
                },
            )

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
