"""handle_reconcile over a FakeKube: crash at every request, adopt what is ours, refuse the rest.

The crash test is exhaustive over each scenario: for every request n that the settling passes
make, a fresh cluster is set up, the operator dies just before (or just after) request n, and
then a restarted operator settles. The result must be the cluster a crash-free operator leaves:
the same objects with the same contents, one Job per run, the same status, no Event lost.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from fakekube import Call, Crash, FakeKube
from kubetune_api.v1alpha1 import Reason
from kubetune_operator import ledger, render
from kubetune_operator.reconcile import Requeue
from kubetune_operator.settings import OperatorSettings
from scenarios import (
    NAME,
    NS,
    SCENARIOS,
    UID,
    Scenario,
    admit,
    finetunejob,
    ftj,
    job_of,
    reconcile,
    settle,
)

VOLATILE = ("uid", "resourceVersion", "creationTimestamp")


def snapshot(kube: FakeKube) -> dict[tuple[Any, ...], Any]:
    """Every object but Events, without the fields that differ between two identical histories
    (uids, resourceVersions)."""
    out = {}
    for key, obj in kube.objects.items():
        if key[1] == "events":
            continue
        obj = copy.deepcopy(obj)
        for field in VOLATILE:
            obj["metadata"].pop(field, None)
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("uid") != UID:
                ref.pop("uid")
        labels = obj["metadata"].get("labels") or {}
        labels.pop("batch.kubernetes.io/controller-uid", None)
        out[key] = obj
    return out


def events(kube: FakeKube) -> Counter[str]:
    return Counter(o["reason"] for o in kube.all("Event"))


def _writes(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.verb not in ("get", "list")]


def clean(scenario: Scenario, settings: OperatorSettings) -> tuple[FakeKube, int]:
    kube = FakeKube()
    scenario.setup(kube, settings)
    start = len(kube.calls)
    settle(kube, settings, scenario.now)
    return kube, len(kube.calls) - start


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_scenario_settles_and_a_quiet_pass_writes_nothing(
    scenario: Scenario, operator_settings: OperatorSettings
) -> None:
    kube, _ = clean(scenario, operator_settings)
    before = kube.revision
    reconcile(kube, operator_settings, scenario.now)
    assert kube.revision == before
    jobs = kube.all("Job", NS)
    assert len({j["metadata"]["name"] for j in jobs}) == len(jobs)


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_a_crash_at_any_request_converges_to_the_crash_free_result(
    scenario: Scenario, before: bool, operator_settings: OperatorSettings
) -> None:
    reference, requests = clean(scenario, operator_settings)
    want, want_events = snapshot(reference), events(reference)
    assert requests > 0
    start = FakeKube()
    scenario.setup(start, operator_settings)
    for n in range(requests):
        kube = copy.deepcopy(start)  # the cluster as the pass finds it
        kube.crash_at(n, before=before)
        with pytest.raises(Crash):
            settle(kube, operator_settings, scenario.now)
        crashed_at = kube.calls[-1]
        settle(kube, operator_settings, scenario.now)
        where = f"crash {'before' if before else 'after'} request {n} ({crashed_at})"
        assert snapshot(kube) == want, where
        # An Event may be posted twice (events go before the status), never lost.
        assert set(events(kube)) == set(want_events), where


def first_pass_dies(
    kube: FakeKube, settings: OperatorSettings, verb: str, resource: str, before: bool
) -> None:
    """A new FineTuneJob's first pass, killed before or after its first `verb` on `resource`."""
    kube.put(finetunejob())
    kube.crash_on(verb, resource, before=before)
    with pytest.raises(Crash):
        reconcile(kube, settings)


def test_crash_after_job_create_before_status_adopts_the_job(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    first_pass_dies(fake_kube, operator_settings, "create", "jobs", before=False)
    job = job_of(fake_kube, 1)
    assert job is not None and not ftj(fake_kube).get("status")
    settle(fake_kube, operator_settings)
    # The Job found for a run newer than status.run is adopted, not made again.
    assert job_of(fake_kube, 1) == job
    assert job_of(fake_kube, 2) is None
    assert ftj(fake_kube)["status"]["run"] == 1
    assert ledger.recorded(ftj(fake_kube))["run"] == 1  # type: ignore[index]


def test_crash_after_configmap_before_job_creates_the_job_once(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    first_pass_dies(fake_kube, operator_settings, "create", "jobs", before=True)
    cm = fake_kube.find("ConfigMap", NS, render.config_map_name(NAME, 1))
    assert cm is not None and job_of(fake_kube, 1) is None
    settle(fake_kube, operator_settings)
    assert fake_kube.find("ConfigMap", NS, render.config_map_name(NAME, 1)) == cm
    assert [c.verb for c in fake_kube.calls if c.resource == "jobs"].count("create") == 2
    assert [j["metadata"]["name"] for j in fake_kube.all("Job", NS)] == [render.job_name(NAME, 1)]


def test_crash_between_record_and_status_rewrites_the_status(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    first_pass_dies(fake_kube, operator_settings, "patch", "finetunejobs/status", before=True)
    assert ledger.recorded(ftj(fake_kube)) is not None and not ftj(fake_kube).get("status")
    settle(fake_kube, operator_settings)
    record = ledger.recorded(ftj(fake_kube))
    assert record == {k: v for k, v in ftj(fake_kube)["status"].items() if k != "progress"}


# ------------------------------------------------------------------------------ adoption


def _ours(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": NAME, "uid": UID,
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    return obj


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    (cond,) = [c for c in obj["status"]["conditions"] if c["type"] == type_]
    return dict(cond)


def _rendered(settings: OperatorSettings, kind: str) -> dict[str, Any]:
    from kubetune_api.v1alpha1 import FineTuneJobSpec
    from kubetune_operator.render import Owner, Run
    from kubetune_operator.runs import spec_hash

    spec = FineTuneJobSpec.model_validate(finetunejob()["spec"])
    objs = render.run_objects(spec, Owner(NS, NAME, UID), Run(1, 1, spec_hash(spec)), settings)
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


@pytest.mark.parametrize("kind", ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"])
def test_an_existing_child_we_control_is_adopted(
    kind: str, fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(finetunejob())
    mine = fake_kube.put(_ours(_rendered(operator_settings, kind)))
    settle(fake_kube, operator_settings)
    after = fake_kube.find(kind, NS, mine["metadata"]["name"])
    assert after is not None and after["metadata"]["uid"] == mine["metadata"]["uid"]
    assert ftj(fake_kube)["status"]["run"] == 1
    assert len(fake_kube.all("Job", NS)) == 1


@pytest.mark.parametrize("kind", ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"])
@pytest.mark.parametrize("owner", ["nobody", "another-object"])
def test_a_child_name_taken_by_an_object_we_do_not_control_is_a_name_conflict(
    kind: str, owner: str, fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(finetunejob())
    foreign = _rendered(operator_settings, kind)
    foreign["metadata"]["ownerReferences"] = (
        []
        if owner == "nobody"
        else [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "x",
                "uid": "other",
                "controller": True,
            }
        ]
    )
    if kind == "Job":  # a pre-created Job that would run someone else's pod template
        foreign["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    theirs = fake_kube.put(foreign)
    settle(fake_kube, operator_settings)
    stalled = _condition(ftj(fake_kube), "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == Reason.NAME_CONFLICT.value
    assert f"{kind} {theirs['metadata']['name']} already exists" in stalled["message"]
    # Never changed, never deleted, nothing started.
    assert fake_kube.find(kind, NS, theirs["metadata"]["name"]) == theirs
    plural = fake_kube.key(kind)[1]
    assert not [
        c
        for c in fake_kube.calls
        if c.verb in ("patch", "update", "delete")
        and c.resource == plural
        and c.name == theirs["metadata"]["name"]
    ]
    if kind != "Job":
        assert job_of(fake_kube, 1) is None
    # Freeing the name lets the run start.
    fake_kube.remove(kind, NS, theirs["metadata"]["name"])
    settle(fake_kube, operator_settings)
    assert job_of(fake_kube, 1) is not None
    assert _condition(ftj(fake_kube), "Stalled")["status"] == "False"


def test_a_child_left_by_a_deleted_namesake_is_waited_for(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(finetunejob())
    old = _rendered(operator_settings, "ConfigMap")
    old["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-namesake"
    old = fake_kube.put(old)
    with pytest.raises(Requeue):
        reconcile(fake_kube, operator_settings)
    assert fake_kube.find("ConfigMap", NS, old["metadata"]["name"]) == old
    fake_kube.remove("ConfigMap", NS, old["metadata"]["name"])  # the garbage collector
    settle(fake_kube, operator_settings)
    assert job_of(fake_kube, 1) is not None


def test_a_deleted_or_deleting_finetunejob_is_left_alone(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    assert reconcile(fake_kube, operator_settings).phase is None
    obj = finetunejob()
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    fake_kube.put(obj)
    before = fake_kube.revision
    reconcile(fake_kube, operator_settings)
    assert fake_kube.revision == before and not _writes(fake_kube.calls)


def test_kueue_suspend_and_admission_are_never_undone(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    """A Job in a Kueue queue is created suspended; Kueue unsuspends it on admission and may
    suspend it again on preemption. The operator patches neither (runPolicy.suspend is unset)."""
    fake_kube.put(finetunejob(queueName="team-q"))
    settle(fake_kube, operator_settings)
    job = job_of(fake_kube, 1)
    assert job is not None and job["spec"]["suspend"] is True
    admit(fake_kube, 1)
    settle(fake_kube, operator_settings)
    fake_kube.edit("Job", NS, job["metadata"]["name"], {"spec": {"suspend": True}})  # preempted
    settle(fake_kube, operator_settings)
    assert job_of(fake_kube, 1)["spec"]["suspend"] is True  # type: ignore[index]
    assert not [c for c in fake_kube.calls if c.resource == "jobs" and c.verb == "patch"]


def test_a_status_forged_by_the_trainer_is_reverted(
    fake_kube: FakeKube, operator_settings: OperatorSettings
) -> None:
    fake_kube.put(finetunejob())
    settle(fake_kube, operator_settings)
    honest = ftj(fake_kube)["status"]
    fake_kube.edit("FineTuneJob", NS, NAME, {"status": {"run": 7, "phase": "Succeeded"}})
    settle(fake_kube, operator_settings)
    assert ftj(fake_kube)["status"] == honest
    assert job_of(fake_kube, 7) is None and job_of(fake_kube, 8) is None
