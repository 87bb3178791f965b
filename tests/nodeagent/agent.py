"""The node agent process: one Node, its heartbeats, its pods and its log endpoint."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from .cgroups import MemoryCgroups
from .images import LocalImages
from .kube import JSON, ApiError, Kube
from .pods import NodeContext, PodWorker, delete_pod_now
from .util import now, now_micro

log = logging.getLogger("nodeagent")

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40
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


class Agent:
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

    # ------------------------------------------------------------------ node

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

    # ------------------------------------------------------------------ pods

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

    # ------------------------------------------------------------------ log endpoint

    def log_file(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path | None, PodWorker | None]:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            if w.ns == namespace and w.pod_name == pod:
                r = w.find_run(container)
                if r is None:
                    return None, w
                restarts = r.restarts - 1 if previous else r.restarts
                path = w.log_dir / f"{container}.{restarts}.log"
                return (path if path.exists() else None), w
        # Pod no longer has a worker (finished before an agent restart): newest file on disk.
        candidates = sorted(
            self.ctx.logs_dir.glob(f"{namespace}_{pod}_*/{container}.*.log"), key=os.path.getmtime
        )
        return (candidates[-1] if candidates else None), None

    def start_log_server(self) -> None:
        if not (self.args.serving_cert and self.args.serving_key):
            return
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log endpoint: " + format, *args)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if parts == ["healthz"]:
                    self._send(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._send(
                        404, b"the kubetune node agent serves only /containerLogs and /healthz\n"
                    )
                    return
                q = parse_qs(url.query)
                previous = q.get("previous", ["false"])[0] == "true"
                path, worker = agent.log_file(parts[1], parts[2], parts[3], previous)
                if path is None:
                    self._send(
                        404,
                        f"no logs for container {parts[3]} of pod {parts[1]}/{parts[2]}\n".encode(),
                    )
                    return
                data = path.read_bytes()
                if "tailLines" in q:
                    n = int(q["tailLines"][0])
                    data = b"".join(data.splitlines(keepends=True)[-n:]) if n > 0 else b""
                if "limitBytes" in q:
                    data = data[: int(q["limitBytes"][0])]
                follow = (
                    q.get("follow", ["false"])[0] == "true" and worker is not None and not previous
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                if not follow:
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                offset = path.stat().st_size
                run = worker.find_run(parts[3]) if worker else None
                while run is not None and not agent.stop.is_set():
                    with open(path, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    if chunk:
                        offset += len(chunk)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif not run.running:
                        break
                    time.sleep(0.2)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", self.args.log_port), Handler)
        server.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.args.serving_cert), str(self.args.serving_key))
        ctx.load_verify_locations(cafile=str(self.args.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (kubelet-client cert) may read
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.log_port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="log-endpoint", daemon=True).start()
        log.info("log endpoint on https://127.0.0.1:%d", self.log_port)

    # ------------------------------------------------------------------ main

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
