"""Live progress into the FineTuneJob's `status.progress`, through the status subresource.

A merge patch of the `Progress` model (camelCase), rate-limited to one per interval, sent from
a background thread so a slow or unreachable API server never stalls training. Failures are
logged (at most once a minute) and otherwise ignored: progress is informative, not essential.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, Progress

log = logging.getLogger(__name__)

FIELD_MANAGER = "kubetune-trainer"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def patch_body(fields: dict[str, Any]) -> dict[str, Any]:
    """{"status": {"progress": {...}}} with camelCase keys and unset fields left out."""
    return {"status": {"progress": Progress(**fields).wire()}}


class ProgressReporter:
    def __init__(
        self,
        namespace: str,
        name: str,
        run: int,
        interval: float,
        enabled: bool = True,
    ) -> None:
        self.namespace, self.name = namespace, name
        self.interval = max(0.0, interval)
        self.enabled = enabled
        self.state: dict[str, Any] = {"run": run}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dirty = False
        self._force = False
        self._last_sent = 0.0
        self._last_error_log = 0.0
        self._api: Any = None
        self.sent = 0
        self.failures = 0
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def update(self, force: bool = False, **fields: Any) -> None:
        """Merge fields into the progress; sent within `interval` (at once when forced)."""
        if not self.enabled:
            return
        with self._lock:
            for k, v in fields.items():
                if v is not None:
                    self.state[k] = v
            self._dirty = True
            self._force = self._force or force
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> None:
        """Send pending progress now and wait (bounded) for it to go out."""
        if not self.enabled:
            return
        with self._lock:
            if not self._dirty:
                return
            self._force = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._dirty:
                    return
            time.sleep(0.05)

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            with self._lock:
                due = self._dirty and (
                    self._force or time.monotonic() - self._last_sent >= self.interval
                )
                if not due:
                    continue
                snapshot = dict(self.state)
                self._dirty = False
                self._force = False
            self._last_sent = time.monotonic()
            snapshot["updated_at"] = now_rfc3339()
            self._send(snapshot)
            if self._dirty:
                self._wake.set()  # pending again; the interval check decides

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CustomObjectsApi()
        return self._api

    def _send(self, fields: dict[str, Any]) -> None:
        try:
            self._client().patch_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                self.namespace,
                PLURAL,
                self.name,
                patch_body(fields),
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _request_timeout=10,
            )
            self.sent += 1
        except Exception as e:  # never let reporting break training
            self.failures += 1
            if time.monotonic() - self._last_error_log > 60:
                self._last_error_log = time.monotonic()
                status = getattr(e, "status", None)
                log.warning(
                    "could not report progress to %s/%s%s: %s",
                    self.namespace,
                    self.name,
                    f" (HTTP {status})" if status else "",
                    str(getattr(e, "reason", "") or e).splitlines()[0][:300],
                )
