"""The node agent's log endpoint: what the API server proxies `kubectl logs` to (a mixin of
agent.Agent)."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from .pods import PodWorker

log = logging.getLogger("nodeagent")


class AgentLogs:
    """Part of agent.Agent (uses its attributes: args, kube, node, ...)."""

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
