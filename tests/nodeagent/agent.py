"""The node agent process: one Node, its heartbeats, its pods and its log endpoint.

The Node (object, status, registration, heartbeats, Lease) is agentnode.py, the log endpoint
agentlogs.py, each pod a pods.PodWorker thread; this module parses arguments, watches pods and
runs the loops."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from .agentlogs import AgentLogs
from .agentnode import AgentNode
from .cgroups import MemoryCgroups
from .images import LocalImages
from .kube import JSON, ApiError, Kube
from .pods import NodeContext, PodWorker, delete_pod_now
from .util import now

log = logging.getLogger("nodeagent")

DEFAULT_PASS_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "TORCH_HOME",
    "OMP_NUM_THREADS",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m nodeagent",
        description="Test node agent: registers a Node and runs its pods as local processes "
        "(the kubetune stand-in for kubelet + container runtime).",
    )
    env = os.environ.get
    p.add_argument(
        "--kubeconfig", default=env("KUBECONFIG"), help="credentials of the agent itself"
    )
    p.add_argument("--node", required=True, help="Node name to register and serve")
    p.add_argument("--state-dir", required=True, type=Path, help="sandboxes, logs, pvc dirs")
    p.add_argument("--ca-file", required=True, type=Path, help="cluster CA (for pods' kubeconfig)")
    p.add_argument("--serving-cert", type=Path, help="TLS cert of the log endpoint (kubectl logs)")
    p.add_argument("--serving-key", type=Path)
    p.add_argument("--log-port", type=int, default=0, help="port of the log endpoint (0: any)")
    p.add_argument(
        "--cpu", default=env("KUBETUNE_NODE_CPU", "8"), help="allocatable cpu (default 8)"
    )
    p.add_argument(
        "--memory", default=env("KUBETUNE_NODE_MEMORY", "32Gi"), help="allocatable memory"
    )
    p.add_argument("--pods", default="110", help="allocatable pods")
    p.add_argument("--ephemeral-storage", default="100Gi")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity (fake devices)")
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="node label (repeatable)"
    )
    p.add_argument(
        "--taint",
        action="append",
        default=[],
        metavar="KEY[=VALUE]:EFFECT",
        help="node taint (repeatable)",
    )
    p.add_argument(
        "--unpullable-images",
        default=env("KUBETUNE_AGENT_UNPULLABLE_IMAGES", ""),
        help="regex: containers whose image matches never start and report ErrImagePull/ImagePullBackOff",
    )
    p.add_argument(
        "--entrypoints",
        default=env("KUBETUNE_AGENT_ENTRYPOINTS", ""),
        help='JSON {"image-regex": ["cmd", ...]}: what to run for containers without `command`',
    )
    p.add_argument(
        "--pass-env",
        default=env("KUBETUNE_AGENT_PASS_ENV", ",".join(DEFAULT_PASS_ENV)),
        help="comma-separated host environment variables that pods inherit",
    )
    p.add_argument(
        "--cgroup-parent",
        default="kubetune",
        help="memory cgroups go to <parent>/<node>/<pod uid>/<container> (unique per cluster)",
    )
    p.add_argument(
        "--no-mount-ns", action="store_true", help="do not run containers in mount namespaces"
    )
    p.add_argument(
        "--delete-node-on-exit", action="store_true", help="delete the Node object on shutdown"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


class Agent(AgentNode, AgentLogs):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node: str = args.node
        self.kube = Kube(args.kubeconfig)
        self.stop = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.done_uids: set[str] = set()
        self.lock = threading.Lock()
        self.node_uid = ""
        self.log_port = 0
        state_dir: Path = args.state_dir.resolve()
        self.state_dir = state_dir / args.node
        self.state_dir.mkdir(parents=True, exist_ok=True)
        host = urlparse(self.kube.host)
        mount_ns = not args.no_mount_ns and os.geteuid() == 0 and bool(_which("unshare"))
        if not mount_ns:
            log.warning("containers run WITHOUT mount namespaces: volumeMounts are not mapped")
        base_env = {k: os.environ[k] for k in args.pass_env.split(",") if k and k in os.environ}
        base_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        base_env["PYTHONUNBUFFERED"] = "1"
        entrypoints = [
            (re.compile(k), list(v)) for k, v in json.loads(args.entrypoints or "{}").items()
        ]
        self.cgroups = MemoryCgroups(f"{args.cgroup_parent.strip('/')}/{self.node}")
        self.allocatable = {
            "cpu": str(args.cpu),
            "memory": str(args.memory),
            "pods": str(args.pods),
            "ephemeral-storage": str(args.ephemeral_storage),
        }
        if args.gpus:
            self.allocatable["nvidia.com/gpu"] = str(args.gpus)
        self.ctx = NodeContext(
            kube=self.kube,
            node=self.node,
            state_dir=self.state_dir,
            api_host=host.hostname or "127.0.0.1",
            api_port=host.port or 443,
            ca_file=args.ca_file.resolve(),
            cgroups=self.cgroups,
            use_mount_ns=mount_ns,
            base_env=base_env,
            unpullable=re.compile(args.unpullable_images) if args.unpullable_images else None,
            entrypoints=entrypoints,
            node_allocatable=self.allocatable,
            stop=self.stop,
            post_event=self.post_event,
            images=LocalImages(),
        )

    def post_event(self, pod: JSON, type_: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        ts = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except Exception as e:
            log.debug(
                "event %s for %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], e
            )

    def on_pod(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            if uid in self.done_uids:
                if pod["metadata"].get("deletionTimestamp"):
                    meta = pod["metadata"]
                    threading.Thread(
                        target=delete_pod_now,
                        args=(self.kube, meta["namespace"], meta["name"], uid),
                        daemon=True,
                    ).start()
                return
            if self.stop.is_set():
                return
            worker = PodWorker(self.ctx, pod, self.worker_done)
            self.workers[uid] = worker
        worker.start()

    def on_deleted(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            self.done_uids.discard(uid)
        if worker is not None:
            worker.update(pod)
            worker.mark_gone()

    def worker_done(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)
            self.done_uids.add(uid)

    def sync_loop(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                with self.lock:
                    missing = [w for uid, w in self.workers.items() if uid not in seen]
                    self.done_uids &= seen
                for w in missing:
                    w.mark_gone()
                relist_at = time.monotonic() + 300
                while not self.stop.is_set() and time.monotonic() < relist_at:
                    for ev in self.kube.watch(
                        "/api/v1/pods",
                        fieldSelector=selector,
                        resourceVersion=rv,
                        timeout_seconds=60,
                    ):
                        kind, obj = ev.get("type"), ev.get("object") or {}
                        if kind == "ERROR":
                            raise ApiError(
                                int(obj.get("code", 500)), json.dumps(obj), "WATCH", "/api/v1/pods"
                            )
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self.on_deleted(obj)
                        else:
                            self.on_pod(obj)
                        if self.stop.is_set():
                            return
            except ApiError as e:
                if e.status == 410:
                    log.info("watch expired (410); re-listing")
                else:
                    log.warning("pod watch failed: %s; re-listing", e)
                    self.stop.wait(1.0)
            except Exception as e:
                log.warning("pod watch failed: %s; re-listing", e)
                self.stop.wait(1.0)

    def run(self) -> None:
        self.started = now()
        self.machine_id = uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.node}.kubetune").hex
        self.boot_id = uuid.uuid4().hex
        self.version = str(self.kube.get("/version").get("gitVersion", "v0.0.0"))
        self.cgroups.remove_all()  # processes left by an agent that was SIGKILLed
        self.start_log_server()
        self.register()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.sync_loop, name="pod-sync", daemon=True).start()
        log.info(
            "node %s ready (allocatable %s, labels %s, cgroups v%s, mount namespaces %s)",
            self.node,
            self.allocatable,
            self.args.label,
            self.cgroups.version or "-",
            self.ctx.use_mount_ns,
        )
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down: stopping the processes of %d pods", len(self.workers))
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.join(timeout=15)
        self.cgroups.remove_all()
        if self.args.delete_node_on_exit:
            with contextlib.suppress(Exception):
                self.kube.delete(f"/api/v1/nodes/{self.node}")
                log.info("deleted node %s", self.node)


def _which(name: str) -> str | None:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    agent = Agent(args)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    return 0
