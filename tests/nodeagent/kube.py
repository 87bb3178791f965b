"""A small JSON client for the Kubernetes API, used by the node agent.

Credentials come from a kubeconfig through the official ``kubernetes`` package
(``kubernetes.config.load_kube_config``); requests go straight through urllib3 and return plain
dicts, which keeps the agent independent of the generated model classes and gives it exact
control over patch content types and watch streams.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            parsed = json.loads(body)
            self.reason = str(parsed.get("reason", ""))
            self.message = str(parsed.get("message", body))
        except ValueError:
            self.reason = ""
            self.message = body
        super().__init__(f"{method} {path}: HTTP {status}: {self.message}")


class Kube:
    """Thread-safe, dict-in/dict-out access to one API server."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(
            config_file=kubeconfig, client_configuration=cfg, persist_config=False
        )
        self.host = str(cfg.host).rstrip("/")
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self._headers: dict[str, str] = {"Accept": "application/json"}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            self._headers["Authorization"] = token
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=64, ssl_context=ctx)
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        url = self.host + path
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(
            method,
            url,
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            retries=False,
        )
        text = resp.data.decode("utf-8", errors="replace")
        if resp.status >= 300:
            raise ApiError(resp.status, text, method, path)
        return json.loads(text) if text else {}

    def get(self, path: str, **params: Any) -> JSON:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, *, timeout_seconds: int = 240, **params: Any) -> Iterator[JSON]:
        """Yield watch events ({"type": ..., "object": ...}) until the server closes the stream.

        ERROR events are yielded as they are; the caller re-lists on 410 Gone.
        """
        query = dict(params, watch="true", timeoutSeconds=timeout_seconds)
        query["allowWatchBookmarks"] = "true"
        url = self.host + path + "?" + urlencode({k: v for k, v in query.items() if v is not None})
        resp = self._pool.request(
            "GET",
            url,
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout_seconds + 30),
            retries=False,
        )
        try:
            if resp.status >= 300:
                raise ApiError(resp.status, resp.read().decode(errors="replace"), "WATCH", path)
            buf = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
    return f"{path}/{sub}" if sub else path
