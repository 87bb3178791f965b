"""Leader election with a coordination.k8s.io/v1 Lease (the client-go algorithm, simplified).

Only the holder of the Lease runs the controller; a standby replica waits. The holder renews
every `renew_seconds`; a standby takes the Lease over only after it has seen the same
holder/renewTime unchanged for a full `duration_seconds` on its own clock (so clock skew between
nodes does not matter). Every write carries the resourceVersion it read, so two replicas racing
for an expired Lease cannot both win: one gets 409 Conflict. A holder that cannot renew within
the renew deadline (2/3 of the duration) gives up leadership before anyone else may take it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from . import metrics
from .k8s import ApiError, Kube, path

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration_seconds
        self.renew = renew_seconds
        self.clock = clock
        # Each request must end well within the renew deadline.
        self.timeout = (2.0, max(1.0, duration_seconds / 5))
        self.is_leader = False
        self.last_renewed = 0.0
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0

    # ------------------------------------------------------------------------- one step

    def try_acquire_or_renew(self) -> bool:
        """One attempt (blocking I/O). True if this replica holds the Lease afterwards."""
        url = path("Lease", self.namespace, self.name)
        now = _now()
        lease = self.kube.get(url, timeout=self.timeout)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, 0),
            }
            try:
                self.kube.request(
                    "POST",
                    path("Lease", self.namespace),
                    body=body,
                    expected=(409,),
                    timeout=self.timeout,
                )
            except ApiError as e:
                if e.status == 409:
                    return self._lost_race()
                raise
            return self._won()

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        if holder and holder != self.identity:
            held_for = float(spec.get("leaseDurationSeconds") or self.duration)
            if self.clock() - self._observed_at < held_for:
                self.is_leader = False
                return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity and self.is_leader:
            new_spec = self._spec(spec.get("acquireTime") or now, now, transitions)
        else:
            new_spec = self._spec(now, now, transitions + (1 if holder else 0))
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": new_spec,
        }
        try:
            self.kube.request("PUT", url, body=body, expected=(409,), timeout=self.timeout)
        except ApiError as e:
            if e.status == 409:
                return self._lost_race()
            raise
        return self._won()

    def _spec(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    def _won(self) -> bool:
        if not self.is_leader:
            log.info("acquired leader lease %s/%s as %s", self.namespace, self.name, self.identity)
        self.is_leader = True
        self.last_renewed = self.clock()
        metrics.LEADER.set(1)
        return True

    def _lost_race(self) -> bool:
        self.is_leader = False
        metrics.LEADER.set(0)
        return False

    def release(self) -> None:
        """Give the Lease up (on a clean shutdown) so a standby takes over at once."""
        if not self.is_leader:
            return
        url = path("Lease", self.namespace, self.name)
        try:
            lease = self.kube.get(url)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = dict(lease)
                body["spec"] = {
                    **lease["spec"],
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": _now(),
                }
                self.kube.request("PUT", url, body=body)
                log.info("released leader lease %s/%s", self.namespace, self.name)
        except ApiError as e:
            log.warning("could not release the leader lease: %s", e.message)
        self.is_leader = False
        metrics.LEADER.set(0)

    # ------------------------------------------------------------------------- loops

    async def acquire(self) -> None:
        """Block until this replica is the leader."""
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire_or_renew):
                    return
            except ApiError as e:
                log.warning("leader election: %s", e.message)
            if not announced:
                log.info(
                    "standing by: lease %s/%s is held by %s",
                    self.namespace,
                    self.name,
                    self._observed[0] if self._observed else "?",
                )
                announced = True
            await asyncio.sleep(min(2.0, self.renew))

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until leadership is lost, then call `on_lost` (which should stop the process)."""
        deadline = self.duration * 2 / 3
        while True:
            await asyncio.sleep(self.renew)
            try:
                ok = await asyncio.to_thread(self.try_acquire_or_renew)
            except ApiError as e:
                log.warning("could not renew the leader lease: %s", e.message)
                ok = self.clock() - self.last_renewed < deadline
            if not ok:
                self.is_leader = False
                metrics.LEADER.set(0)
                log.error("lost the leader lease %s/%s", self.namespace, self.name)
                on_lost()
                return
