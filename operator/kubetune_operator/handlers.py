"""Kopf wiring: thin handlers that turn watch events into reconcile requests.

Kopf is used for what it is good at (watching with re-lists, 410 handling and inactivity
timeouts; startup/cleanup; signals), while the reconcile itself is level-based and lives in the
plain `reconcile.handle_reconcile`:

  * FineTuneJob, Job and Pod events (`on.event`) only mark the FineTuneJob dirty in a work queue;
    no change-detecting handlers, so Kopf keeps no per-object state, adds no finalizer, and
    writes neither progress nor last-handled-configuration into our objects;
  * a resync loop re-reconciles every FineTuneJob every KUBETUNE_RESYNC_SECONDS as a safety net;
  * the startup handler waits for the leader Lease before Kopf starts watching, so a standby
    replica runs no handlers at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Hashable
from typing import Any

import kopf
from aiohttp import web
from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, SCHEDULE_PLURAL

from . import jsonlog as klog
from . import metrics
from .k8s import ApiError, Kube
from .leader import LeaderElector
from .reconcile import Requeue, handle_reconcile
from .render import ANN_FINETUNEJOB, LABEL_JOB
from .schedule import LABEL_SCHEDULE
from .schedules import handle_schedule
from .settings import OperatorSettings
from .workqueue import WorkQueue

log = logging.getLogger(__name__)


class Runtime:
    """Everything the running operator holds: config, API client, queue, lease, servers."""

    def __init__(self, settings: OperatorSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube or Kube()
        self.queue = WorkQueue(self._reconcile)
        # FineTuneSchedules: one timer each (the pass returns when the next is due).
        self.schedules = WorkQueue(self._reconcile_schedule, concurrency=4, one_timer=True)
        self.elector: LeaderElector | None = None
        if settings.leader_election:
            self.elector = LeaderElector(
                self.kube,
                settings.lease_namespace,
                settings.lease_name,
                settings.identity,
                settings.lease_duration_seconds,
                settings.lease_renew_seconds,
            )
        self.leading = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._health: web.AppRunner | None = None

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        metrics.serve(self.settings.metrics_port)
        await self._serve_health()
        await self._wait_for_crd()
        if self.elector is not None:
            await self.elector.acquire()
            self._tasks.append(asyncio.create_task(self.elector.keep(self._lost_lease)))
        self.leading = True
        self._tasks.append(asyncio.create_task(self._resync()))
        log.info(
            "operator %s active (namespaces: %s)",
            self.settings.identity,
            ",".join(self.settings.namespaces) or "all",
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.close()
        await self.schedules.close()
        if self.elector is not None:
            await asyncio.to_thread(self.elector.release)
        if self._health is not None:
            await self._health.cleanup()

    async def _wait_for_crd(self) -> None:
        """Kopf serves only resources it found at start when scanning is off: wait for ours."""
        url = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{API_GROUP}"
        announced = False
        while True:
            try:
                crd = await asyncio.to_thread(self.kube.get, url)
            except ApiError as e:
                crd = None
                log.warning("could not read the FineTuneJob CRD: %s", e.message)
            conds = ((crd or {}).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                return
            if not announced:
                log.warning("waiting for the CRD %s.%s to be installed (crds/)", PLURAL, API_GROUP)
                announced = True
            await asyncio.sleep(2)

    def _lost_lease(self) -> None:
        # Another replica may already be acting: stop at once, as client-go does.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)

    # ------------------------------------------------------------------------ work

    def request(self, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            self.queue.request((namespace, name))

    async def _reconcile(self, key: Hashable) -> float | None:
        namespace, name = str(key[0]), str(key[1])  # type: ignore[index]
        token = klog.current.set((namespace, name))
        started = time.perf_counter()
        result = "error"
        try:
            outcome = await asyncio.to_thread(
                handle_reconcile, self.kube, self.settings, namespace, name
            )
            result = "ok"
        except Requeue as r:
            result = "requeue"
            log.info("retrying in %.0fs: %s", r.after, r)
            return r.after
        finally:
            metrics.RECONCILE_SECONDS.labels(result).observe(time.perf_counter() - started)
            klog.current.reset(token)
        metrics.set_phase(namespace, name, outcome.phase)
        return outcome.requeue_after

    def request_schedule(self, namespace: str | None, name: str | None) -> None:
        if namespace and name:
            self.schedules.request((namespace, name))

    async def _reconcile_schedule(self, key: Hashable) -> float | None:
        namespace, name = str(key[0]), str(key[1])  # type: ignore[index]
        token = klog.current.set((namespace, name))
        try:
            return await asyncio.to_thread(
                handle_schedule, self.kube, self.settings, namespace, name
            )
        finally:
            klog.current.reset(token)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                schedules = await asyncio.to_thread(
                    self.kube.list_schedules, list(self.settings.namespaces)
                )
            except Exception as e:  # an install without the FineTuneSchedule CRD
                log.debug("resync: could not list FineTuneSchedules: %s", e)
                schedules = []
            for item in schedules:
                meta = item["metadata"]
                self.request_schedule(meta.get("namespace"), meta.get("name"))
            try:
                items = await asyncio.to_thread(
                    self.kube.list_finetunejobs, list(self.settings.namespaces)
                )
            except Exception as e:
                log.warning("resync: could not list FineTuneJobs: %s", e)
                continue
            for item in items:
                self.request(item["metadata"].get("namespace"), item["metadata"].get("name"))

    # ------------------------------------------------------------------------ health

    async def _serve_health(self) -> None:
        if not self.settings.health_port:
            return

        async def healthz(_: web.Request) -> web.Response:
            if self.elector is not None and self.leading:
                stale = time.monotonic() - self.elector.last_renewed
                if stale > self.settings.lease_duration_seconds * 2:
                    return web.json_response({"status": "lease renewal stalled"}, status=500)
            return web.json_response({"status": "ok", "leader": self.leading})

        async def readyz(_: web.Request) -> web.Response:
            # A standby is ready too: it must not block a rolling update of the Deployment.
            return web.json_response({"status": "ok", "leader": self.leading})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self._health = web.AppRunner(app, access_log=None)
        await self._health.setup()
        await web.TCPSite(self._health, "0.0.0.0", self.settings.health_port).start()


_runtime: Runtime | None = None


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
    # Our own Lease decides who runs; Kopf's peering is not used.
    settings.peering.standalone = True
    # Kopf would turn handler logs and errors into Events; we post our own, and only those.
    settings.posting.enabled = False
    # Should any change-detecting handler ever be added: keep Kopf's state in annotations under
    # our prefix (the structural status schema would prune it), never in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/kopf-finalizer"
    # Reconnect a watch that has been silent for longer than the API server's bookmark period.
    settings.watching.inactivity_timeout = 70.0
    settings.watching.server_timeout = 300
    # Watch only our Jobs and Pods (server-side selection), not every pod in the cluster.
    settings.watching.label_selectors["batch", "v1", "jobs"] = LABEL_JOB
    settings.watching.label_selectors["v1", "pods"] = LABEL_JOB
    # With explicit namespaces, serve exactly those: no cluster-wide namespace/CRD scanning
    # (which would need list rights on namespaces that a namespaced install does not have).
    settings.scanning.disabled = bool(config.namespaces)


# ---------------------------------------------------------------------------- handlers


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    config = OperatorSettings()
    klog.setup(config.log_level)
    configure_kopf(settings, config)
    _runtime = Runtime(config)
    await _runtime.start()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.stop()


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def finetunejob_event(
    type: str | None, namespace: str | None, name: str | None, labels: Any = None, **_: Any
) -> None:
    if _runtime is None:
        return
    # A run of a schedule: its end may let a held run start (concurrencyPolicy Forbid).
    if schedule := (labels or {}).get(LABEL_SCHEDULE):
        _runtime.request_schedule(namespace, schedule)
    if type == "DELETED":
        if namespace and name:
            metrics.set_phase(namespace, name, None)
        return
    _runtime.request(namespace, name)


@kopf.on.event(API_GROUP, API_VERSION, SCHEDULE_PLURAL)
async def schedule_event(
    type: str | None, namespace: str | None, name: str | None, body: Any, **_: Any
) -> None:
    """A new schedule, or a spec change: a pass now. The schedule's own status writes (same
    generation as observed) queue nothing: its timer brings the next pass."""
    if _runtime is None or type == "DELETED":
        return
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    if type in (None, "ADDED") or meta.get("generation") != status.get("observedGeneration"):
        _runtime.request_schedule(namespace, name)


def _owner_name(annotations: Any, labels: Any) -> str | None:
    return (annotations or {}).get(ANN_FINETUNEJOB) or (labels or {}).get(LABEL_JOB)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT})
async def job_event(namespace: str | None, annotations: Any, labels: Any, **_: Any) -> None:
    if _runtime is not None:
        _runtime.request(namespace, _owner_name(annotations, labels))


@kopf.on.event("v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_event(namespace: str | None, annotations: Any, labels: Any, **_: Any) -> None:
    if _runtime is not None:
        _runtime.request(namespace, _owner_name(annotations, labels))
