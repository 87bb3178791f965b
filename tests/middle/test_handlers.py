"""The Kopf wiring (handlers.py) over a FakeKube: a watch event only queues the FineTuneJob it
belongs to, and the queued reconcile does the work; a Requeue comes back after its delay."""

from __future__ import annotations

import asyncio
from typing import Any

from fakekube import FakeKube
from kubetune_operator import handlers, render
from kubetune_operator.handlers import Runtime
from kubetune_operator.settings import OperatorSettings
from scenarios import NAME, NS, finetunejob, job_of


async def _drain(runtime: Runtime, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(0)
    while runtime.queue.busy() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def test_events_of_children_queue_their_finetunejob(
    fake_kube: FakeKube, operator_settings: OperatorSettings, monkeypatch: Any
) -> None:
    fake_kube.put(finetunejob())
    runtime = Runtime(operator_settings, kube=fake_kube)
    monkeypatch.setattr(handlers, "_runtime", runtime)

    async def scenario() -> None:
        # A Pod event names its FineTuneJob through the annotation (or the job label).
        await handlers.pod_event(
            namespace=NS, annotations={render.ANN_FINETUNEJOB: NAME}, labels={}
        )
        await _drain(runtime)
        assert job_of(fake_kube, 1) is not None
        writes = len([c for c in fake_kube.calls if c.verb != "get"])
        # An event of an object of no FineTuneJob queues nothing.
        await handlers.job_event(namespace=NS, annotations={}, labels={})
        await _drain(runtime)
        assert len([c for c in fake_kube.calls if c.verb != "get"]) == writes
        await runtime.queue.close()

    asyncio.run(scenario())


def test_a_requeue_is_retried_after_its_delay(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    """A child left by a deleted namesake: the reconcile asks to be retried in 2s."""
    fake_kube.put(finetunejob())
    old = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": render.trainer_sa_name(NAME), "namespace": NS,
        "ownerReferences": [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                             "name": NAME, "uid": "uid-of-the-deleted-one", "controller": True}],
    }}  # fmt: skip
    fake_kube.put(old)
    runtime = Runtime(operator_settings, kube=fake_kube)
    assert asyncio.run(runtime._reconcile((NS, NAME))) == 2.0
    fake_kube.remove("ServiceAccount", NS, render.trainer_sa_name(NAME))
    assert asyncio.run(runtime._reconcile((NS, NAME))) is None
    assert job_of(fake_kube, 1) is not None
