"""The leader elector (leader.py) over a FakeKube, each replica with its own injected clock."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from fakekube import Call, FakeKube
from kubetune_operator.k8s import ApiError
from kubetune_operator.leader import LeaderElector

LEASE_NS, LEASE = "kubetune-system", "kubetune-operator"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def replica(kube: FakeKube, identity: str, clock: Clock, **kw: Any) -> LeaderElector:
    return LeaderElector(
        kube, LEASE_NS, LEASE, identity, duration_seconds=15, renew_seconds=5, clock=clock, **kw
    )


def lease(kube: FakeKube) -> dict[str, Any]:
    obj = kube.find("Lease", LEASE_NS, LEASE)
    assert obj is not None
    return dict(obj["spec"])


def test_first_replica_creates_the_lease_then_renews_it(fake_kube: FakeKube) -> None:
    a = replica(fake_kube, "a", Clock())
    assert a.try_acquire_or_renew() and a.is_leader
    first = lease(fake_kube)
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0
    assert a.try_acquire_or_renew()
    renewed = lease(fake_kube)
    assert renewed["acquireTime"] == first["acquireTime"] and renewed["leaseTransitions"] == 0
    assert [(c.verb, c.resource) for c in fake_kube.calls] == [
        ("get", "leases"), ("create", "leases"), ("get", "leases"), ("update", "leases"),
    ]  # fmt: skip


def test_a_standby_waits_a_full_duration_on_its_own_clock(fake_kube: FakeKube) -> None:
    clock_a, clock_b = Clock(), Clock()
    clock_b.t = 5_000_000.0  # another node's monotonic clock: only differences count
    a, b = replica(fake_kube, "a", clock_a), replica(fake_kube, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    # The holder keeps renewing: however long b watches, the record keeps changing.
    for _ in range(10):
        clock_a.t += 5
        clock_b.t += 5
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    # The holder stops (killed without releasing): b waits out the duration, then takes over.
    clock_b.t += 14.9
    assert not b.try_acquire_or_renew()
    clock_b.t += 0.2
    assert b.try_acquire_or_renew() and b.is_leader
    spec = lease(fake_kube)
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    # The old holder comes back: it sees b's fresh record and stands by.
    assert not a.try_acquire_or_renew() and not a.is_leader


def test_two_standbys_racing_for_an_expired_lease_cannot_both_win(fake_kube: FakeKube) -> None:
    clock = Clock()
    a = replica(fake_kube, "a", clock)
    assert a.try_acquire_or_renew()
    b, c = replica(fake_kube, "b", clock), replica(fake_kube, "c", clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.t += 16

    def c_writes_first(call: Call) -> None:
        if call.verb == "update":  # b has read the Lease and is about to write it
            fake_kube.on_request = None
            assert c.try_acquire_or_renew()

    fake_kube.on_request = c_writes_first
    assert not b.try_acquire_or_renew()  # b's write carries a stale resourceVersion: 409
    assert c.is_leader and not b.is_leader
    assert lease(fake_kube)["holderIdentity"] == "c"


def test_release_hands_over_at_once(fake_kube: FakeKube) -> None:
    clock = Clock()
    a, b = replica(fake_kube, "a", clock), replica(fake_kube, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader and lease(fake_kube)["holderIdentity"] is None
    assert b.try_acquire_or_renew()  # no wait: nobody holds it


def test_release_leaves_a_lease_someone_else_holds(fake_kube: FakeKube) -> None:
    clock = Clock()
    a, b = replica(fake_kube, "a", clock), replica(fake_kube, "b", clock)
    assert a.try_acquire_or_renew()
    clock.t += 100
    assert not b.try_acquire_or_renew()
    clock.t += 16
    assert b.try_acquire_or_renew()
    a.release()  # a still believes it leads
    assert lease(fake_kube)["holderIdentity"] == "b"


@pytest.mark.parametrize("failing_for", [5.0, 12.0])
def test_keep_survives_api_errors_only_within_the_renew_deadline(
    fake_kube: FakeKube, failing_for: float
) -> None:
    """A holder that cannot reach the API keeps leading until 2/3 of the duration (10s) has
    passed since its last renewal, then gives up: before any standby may take over (15s)."""
    clock = Clock()
    a = LeaderElector(fake_kube, LEASE_NS, LEASE, "a", 15, renew_seconds=0.001, clock=clock)
    assert a.try_acquire_or_renew()
    renewed_at = clock.t
    lost: list[bool] = []

    def api_down(call: Call) -> None:
        clock.t += 1.0
        if clock.t - renewed_at > failing_for:
            fake_kube.on_request = None  # back
            lost.append(False)
            raise _Stop
        raise ApiError(0, "ConnectionRefusedError", "connection refused")

    fake_kube.on_request = api_down
    with contextlib.suppress(_Stop):
        asyncio.run(asyncio.wait_for(a.keep(lambda: lost.append(True)), 5))
    if failing_for < 10:
        assert lost == [False] and a.is_leader  # never gave up
    else:
        assert lost == [True] and not a.is_leader
        assert 10 <= clock.t - renewed_at <= 11


class _Stop(Exception):
    """Ends the keep() loop in the test once the API is back."""
