"""Kubernetes API I/O for the operator: plain JSON over the `kubernetes` client's transport.

Objects are dicts in and dicts out (the renderers are pure functions producing dicts), so no
typed-model round trip can drop a field. Conventions:
  * `create` treats 409 AlreadyExists as success and returns the existing object: every child
    has a deterministic name, so a handler that runs twice creates nothing twice;
  * `get` returns None for 404;
  * every unexpected error is counted in `kubetune_api_errors_total`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.util.retry import Retry

from . import metrics

log = logging.getLogger(__name__)

JSON = dict[str, Any]
REQUEST_TIMEOUT = (5.0, 30.0)

# kind -> (API path prefix, plural) for everything the operator reads or writes. No Secret:
# the operator never reads one (pods reference them by name; the chart grants none).
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "FineTuneJob": ("/apis/kubetune.io/v1alpha1", "finetunejobs"),
    "FineTuneSchedule": ("/apis/kubetune.io/v1alpha1", "finetuneschedules"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),  # Kueue's, read-only
}


class ApiError(Exception):
    """A non-2xx answer. `status` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        detail = ""
        try:
            detail = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            detail = body[:300]
        super().__init__(f"{status} {reason}: {detail}".strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    p = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        p += f"/{quote(name)}"
    if sub:
        p += f"/{sub}"
    return p


def load_api_client() -> client.ApiClient:
    """In-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config. The transport
    retries only failed connections (never a request the server may have received): callers
    retry through the work queue, and the leader election must notice a dead API in time."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.retries = Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0)
    return client.ApiClient(configuration=configuration)


class Kube:
    """Synchronous API access (call it from a worker thread, not the event loop)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or load_api_client()

    # ------------------------------------------------------------------------- transport

    def request(
        self,
        method: str,
        url: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        expected: tuple[int, ...] = (),
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        resource = url.rsplit("/namespaces/", 1)[-1].split("/")[1] if "/namespaces/" in url else url
        try:
            m, full, h, b, post = self.api.param_serialize(
                method=method,
                resource_path=url,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(m, full, h, b, post, _request_timeout=timeout)
            resp.read()
        except ApiException as e:
            metrics.API_ERRORS.labels(method, resource, str(e.status or 0)).inc()
            raise ApiError(int(e.status or 0), str(e.reason), str(e.body or "")) from None
        except Exception as e:  # connection refused, timeouts, TLS errors
            metrics.API_ERRORS.labels(method, resource, "0").inc()
            raise ApiError(0, type(e).__name__, str(e)) from None
        if resp.status >= 400:
            text = resp.data.decode("utf-8", "replace") if resp.data else ""
            if resp.status not in expected:
                metrics.API_ERRORS.labels(method, resource, str(resp.status)).inc()
            raise ApiError(resp.status, str(resp.reason), text)
        return json.loads(resp.data) if resp.data else None

    # ------------------------------------------------------------------------- generic

    def get(self, url: str, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> JSON | None:
        try:
            return dict(self.request("GET", url, expected=(404,), timeout=timeout))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list_objects(self, url: str, label_selector: str | None = None) -> list[JSON]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self.request("GET", url, query=query).get("items") or [])

    def create(self, obj: JSON) -> tuple[JSON, bool]:
        """Create `obj`; (the object, True) if created, (the existing one, False) on 409."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta["namespace"])
        try:
            return dict(self.request("POST", url, body=obj, expected=(409,))), True
        except ApiError as e:
            if e.status != 409:
                raise
        existing = self.get(path(obj["kind"], meta["namespace"], meta["name"]))
        if existing is None:  # deleted in between: try once more
            return dict(self.request("POST", url, body=obj)), True
        return existing, False

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete; False if it was already gone, or (with `uid`, a precondition the API server
        checks) if the object of that name is another one now (409)."""
        body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path(kind, namespace, name), body=body, expected=(404, 409))
        except ApiError as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: JSON, sub: str | None = None
    ) -> JSON:
        return dict(
            self.request(
                "PATCH",
                path(kind, namespace, name, sub),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    # ------------------------------------------------------------------------- specific

    def get_finetunejob(self, namespace: str, name: str) -> JSON | None:
        return self.get(path("FineTuneJob", namespace, name))

    def list_finetunejobs(self, namespaces: list[str]) -> list[JSON]:
        if not namespaces:
            prefix, plural = KINDS["FineTuneJob"]
            return list(self.request("GET", f"{prefix}/{plural}").get("items") or [])
        out: list[JSON] = []
        for ns in namespaces:
            out += self.list_objects(path("FineTuneJob", ns))
        return out

    def list_schedules(self, namespaces: list[str]) -> list[JSON]:
        if not namespaces:
            prefix, plural = KINDS["FineTuneSchedule"]
            return list(self.request("GET", f"{prefix}/{plural}").get("items") or [])
        out: list[JSON] = []
        for ns in namespaces:
            out += self.list_objects(path("FineTuneSchedule", ns))
        return out

    def patch_status(self, namespace: str, name: str, patch: JSON) -> JSON:
        return self.merge_patch("FineTuneJob", namespace, name, patch, sub="status")

    def post_event(
        self,
        involved: JSON,
        type_: str,
        reason: str,
        message: str,
        component: str,
        instance: str,
    ) -> None:
        """A core/v1 Event about `involved` (best effort: failures are logged, not raised)."""
        meta = involved["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta['name'][:200]}.",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.request("POST", path("Event", meta["namespace"]), body=event)
        except ApiError as e:
            log.warning("could not post event %s: %s", reason, e.message)
