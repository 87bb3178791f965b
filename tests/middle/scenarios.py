"""The middle tier's scenarios: a FineTuneJob's life driven through `handle_reconcile` over a
FakeKube, with the Job controller and the kubelet played by the helpers below.

Each `Scenario` has a `setup` (the cluster as the pass finds it: may itself reconcile) and is
then settled: reconcile passes until one writes nothing. test_reconcile_crash.py crashes the
operator at every request of the settling passes; test_rbac_seen.py checks that the chart grants
every (verb, resource) they use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fakekube import Crash, FakeKube
from kubetune_operator import render
from kubetune_operator.reconcile import Outcome, handle_reconcile
from kubetune_operator.settings import OperatorSettings

NS = "team-a"
NAME = "llama-sft"
UID = "0b7c1c9e-1111-2222-3333-444455556666"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

JSON = dict[str, Any]


def job_spec(**over: Any) -> JSON:
    """A minimal valid FineTuneJob spec (hub model, one S3 data file, S3 output), with `over`'s
    top-level fields replacing or adding to it."""
    return {
        "model": {"hubId": "org/model"},
        "dataset": {"s3Uri": "s3://data/train.jsonl"},
        "output": {"uri": "s3://bucket/out"},
    } | over


def finetunejob(**spec: Any) -> JSON:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": job_spec(**spec),
    }


def reconcile(kube: FakeKube, settings: OperatorSettings, now: datetime = NOW) -> Outcome:
    return handle_reconcile(kube, settings, NS, NAME, now=now)


def settle(
    kube: FakeKube, settings: OperatorSettings, now: datetime = NOW, passes: int = 8
) -> Outcome:
    """Reconcile until a pass changes nothing (the operator's steady state)."""
    for _ in range(passes):
        seen = kube.revision
        outcome = reconcile(kube, settings, now)
        if kube.revision == seen:
            return outcome
    raise AssertionError(f"no steady state after {passes} passes: {kube.calls[-20:]}")


def ftj(kube: FakeKube) -> JSON:
    obj = kube.find("FineTuneJob", NS, NAME)
    assert obj is not None
    return obj


def job_of(kube: FakeKube, run: int) -> JSON | None:
    return kube.find("Job", NS, render.job_name(NAME, run))


# ---------------------------------------------------------------- the Job controller, kubelet


def pod(
    kube: FakeKube, run: int, phase: str, terminated: JSON | None = None, index: int = 0
) -> JSON:
    """A pod of run `run`'s Job in `phase` (the trainer container `terminated` as given)."""
    job = job_of(kube, run)
    assert job is not None, f"run {run} has no Job"
    uid = job["metadata"]["uid"]
    labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
    labels["batch.kubernetes.io/controller-uid"] = uid
    state: JSON = {"terminated": terminated} if terminated else {"running": {}}
    return kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job['metadata']['name']}-{index}-abcde",
                "namespace": NS,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": uid,
                        "controller": True,
                    }
                ],
            },
            "spec": job["spec"]["template"]["spec"],
            "status": {
                "phase": phase,
                "startTime": "2026-01-01T11:00:00Z",
                "containerStatuses": [
                    {"name": render.CONTAINER, "state": state, "restartCount": 0}
                ],
            },
        }
    )


def complete(kube: FakeKube, run: int) -> None:
    """Run `run`'s trainer succeeded and the Job controller marked its Job Complete."""
    result = {
        "outcome": "Succeeded",
        "message": "training completed",
        "artifacts": {"adapterUri": f"s3://bucket/out/{UID}/run-{run}/adapter"},
        "metrics": {"train_loss": 0.5},
    }
    pod(kube, run, "Succeeded", {
        "exitCode": 0, "reason": "Completed", "message": json.dumps(result),
        "startedAt": "2026-01-01T11:00:00Z", "finishedAt": "2026-01-01T11:30:00Z",
    })  # fmt: skip
    stamp = "2026-01-01T11:30:00Z"
    kube.edit("Job", NS, render.job_name(NAME, run), {"status": {
        "succeeded": 1, "completionTime": stamp,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": stamp}],
    }})  # fmt: skip


def fail(kube: FakeKube, run: int, code: int = 11) -> None:
    """Run `run`'s trainer exited `code` and the Job controller marked its Job Failed."""
    pod(kube, run, "Failed", {
        "exitCode": code, "reason": "Error", "startedAt": "2026-01-01T11:00:00Z",
        "finishedAt": "2026-01-01T11:10:00Z",
        "message": json.dumps({"outcome": "Failed", "reason": "DatasetInvalid", "message": "row 3"}),
    })  # fmt: skip
    stamp = "2026-01-01T11:10:00Z"
    kube.edit("Job", NS, render.job_name(NAME, run), {"status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
         "lastTransitionTime": stamp},
    ]}})  # fmt: skip


def admit(kube: FakeKube, run: int) -> None:
    """Kueue admits run `run`'s Job: it unsuspends it (the operator must leave that alone)."""
    kube.edit("Job", NS, render.job_name(NAME, run), {"spec": {"suspend": False}})


def change_spec(kube: FakeKube, **spec: Any) -> None:
    """The user edits the spec (the API server bumps the generation)."""
    obj = ftj(kube)
    meta = obj["metadata"]
    kube.edit(
        "FineTuneJob",
        NS,
        NAME,
        {"spec": spec, "metadata": {"generation": int(meta.get("generation") or 1) + 1}},
    )


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Callable[[FakeKube, OperatorSettings], None]
    now: datetime = NOW

    def __str__(self) -> str:
        return self.name


def _new(spec: JSON | None = None) -> Callable[[FakeKube, OperatorSettings], None]:
    def setup(kube: FakeKube, settings: OperatorSettings) -> None:
        kube.put(finetunejob(**(spec or {})))

    return setup


def _running(kube: FakeKube, settings: OperatorSettings, spec: JSON | None = None) -> None:
    kube.put(finetunejob(**(spec or {})))
    settle(kube, settings)
    pod(kube, 1, "Running")
    settle(kube, settings)


def _completed(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings)
    complete(kube, 1)


def _restarted(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings)
    change_spec(kube, hyperparameters={"learningRate": 0.001})


def _queued_then_done(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings, {"runPolicy": {"onSpecChange": "Queue"}})
    change_spec(kube, hyperparameters={"learningRate": 0.001})
    settle(kube, settings)
    complete(kube, 1)


def _failed(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings)
    fail(kube, 1)


def _queued_in_kueue_then_admitted(kube: FakeKube, settings: OperatorSettings) -> None:
    kube.put(finetunejob(queueName="team-q"))
    settle(kube, settings)
    admit(kube, 1)


def _suspended(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings)
    change_spec(kube, runPolicy={"suspend": True})


def _ttl_expired(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings, {"runPolicy": {"ttlSecondsAfterFinished": 60}})
    complete(kube, 1)
    settle(kube, settings)  # the outcome is recorded first; the Job expires an hour later


def _children_drifted(kube: FakeKube, settings: OperatorSettings) -> None:
    """Someone edited our trainer Role and repointed our RoleBinding while the FineTuneJob had
    no run yet (its first pass crashed before the Job): the next pass puts both back."""
    kube.put(finetunejob())
    kube.crash_on("create", "jobs")
    with suppress(Crash):
        reconcile(kube, settings)
    sa = render.trainer_sa_name(NAME)
    kube.edit("Role", NS, sa, {"rules": [{"apiGroups": ["*"], "resources": ["*"],
                                           "verbs": ["*"]}]})  # fmt: skip
    kube.edit("RoleBinding", NS, sa, {"roleRef": {"name": "cluster-admin", "kind": "ClusterRole"}})
    kube.edit("ConfigMap", NS, render.config_map_name(NAME, 1), {"data": {"config.json": "{}"}})


def _binding_and_service_drifted(kube: FakeKube, settings: OperatorSettings) -> None:
    """A run of two pods crashed before its Job; then someone added a subject to our
    RoleBinding (patched back) and pointed our headless Service elsewhere (replaced)."""
    kube.put(finetunejob(resources=TWO_NODES))
    kube.crash_on("create", "jobs")
    with suppress(Crash):
        reconcile(kube, settings)
    sa = render.trainer_sa_name(NAME)
    binding = kube.find("RoleBinding", NS, sa)
    assert binding is not None
    intruder = {"kind": "ServiceAccount", "name": "intruder", "namespace": NS}
    kube.edit("RoleBinding", NS, sa, {"subjects": [*binding["subjects"], intruder]})
    kube.edit("Service", NS, render.job_name(NAME, 1), {"spec": {"selector": {"app": "x"}}})


def _two_nodes_restarted(kube: FakeKube, settings: OperatorSettings) -> None:
    _running(kube, settings, {"resources": TWO_NODES})
    change_spec(kube, hyperparameters={"learningRate": 0.001})


TWO_NODES = {"nodes": 2, "gpus": 1}
SCENARIOS = [
    Scenario("first-run", _new()),
    Scenario("first-run-of-two-nodes", _new({"resources": TWO_NODES})),
    Scenario("two-node-spec-change-restarts", _two_nodes_restarted),
    Scenario("completed", _completed),
    Scenario("failed", _failed),
    Scenario("kueue-admits", _queued_in_kueue_then_admitted),
    Scenario("spec-change-restarts", _restarted),
    Scenario("queued-change-after-completion", _queued_then_done),
    Scenario("suspend", _suspended),
    Scenario("ttl-expired", _ttl_expired, now=NOW + timedelta(hours=1)),
    Scenario("children-drifted", _children_drifted),
    Scenario("binding-and-service-drifted", _binding_and_service_drifted),
]


# ------------------------------------------------------------------ every request it makes


def exercise(settings: OperatorSettings) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every request the operator's code makes across the middle
    tier's scenarios: reconcile passes (each scenario, name conflicts), the leader election
    (acquire, renew, take over, release), the CRD wait and the resync list."""
    import asyncio

    from kubetune_operator.handlers import Runtime
    from kubetune_operator.leader import LeaderElector

    seen: set[tuple[str, str, str]] = set()
    for scenario in SCENARIOS:
        kube = FakeKube()
        scenario.setup(kube, settings)
        settle(kube, settings, scenario.now)
        seen |= kube.verbs()
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"):
        kube = FakeKube()
        kube.put(finetunejob())
        sa = render.trainer_sa_name(NAME)
        name = sa if kind in ("ServiceAccount", "Role", "RoleBinding") else render.job_name(NAME, 1)
        group, _ = kube.key(kind)
        kube.put({"apiVersion": f"{group}/v1" if group else "v1", "kind": kind,
                  "metadata": {"name": name, "namespace": NS}})  # fmt: skip
        settle(kube, settings)
        seen |= kube.verbs()

    kube = FakeKube()
    t = [0.0]
    a = LeaderElector(kube, settings.lease_namespace, settings.lease_name, "a", clock=lambda: t[0])
    b = LeaderElector(kube, settings.lease_namespace, settings.lease_name, "b", clock=lambda: t[0])
    assert a.try_acquire_or_renew() and a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    t[0] += 100
    assert b.try_acquire_or_renew()
    b.release()
    seen |= kube.verbs()

    kube = FakeKube()
    kube.put({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "finetunejobs.kubetune.io"},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    })  # fmt: skip
    runtime = Runtime(settings, kube=kube)
    asyncio.run(runtime._wait_for_crd())
    kube.put(finetunejob())
    assert kube.list_finetunejobs([]) and kube.list_finetunejobs([NS])  # the resync loop's list
    seen |= kube.verbs()

    try:  # imported as `scenarios` (tests/middle) or as `middle.scenarios` (tests/unit)
        from schedule_scenarios import exercise_schedules
    except ImportError:
        from middle.schedule_scenarios import exercise_schedules

    return seen | exercise_schedules(settings)
