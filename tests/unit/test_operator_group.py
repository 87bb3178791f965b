"""group.py + render.py: runs of several processes and several pods (pure; no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.v1alpha1 import RDZV_PORT
from kubetune_operator import group, render
from pydantic import ValidationError
from test_operator_render import OWNER, RUN, make_spec, settings


def _objects(**resources: Any) -> dict[str, dict[str, Any]]:
    spec = make_spec(resources=resources)
    return {o["kind"]: o for o in render.run_objects(spec, OWNER, RUN, settings())}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def test_one_gpu_is_one_plain_process() -> None:
    objs = _objects(gpus=1)
    assert _container(objs["Job"])["args"] == ["--config", render.CONFIG_PATH]
    assert "Service" not in objs and objs["Job"]["spec"]["completions"] == 1


def test_two_gpus_launch_two_processes_in_one_pod() -> None:
    objs = _objects(gpus=2)
    c = _container(objs["Job"])
    assert c["command"] == ["kubetune-train"]
    assert c["args"] == ["--config", render.CONFIG_PATH, "--nproc-per-node", "2"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    job = objs["Job"]["spec"]
    assert job["completions"] == job["parallelism"] == 1 and "completionMode" not in job
    assert "Service" not in objs


def test_cpu_processes_and_fsdp_alone_use_the_launcher() -> None:
    c = _container(_objects(distribution={"processesPerNode": 2})["Job"])
    assert c["args"][-2:] == ["--nproc-per-node", "2"]
    # FSDP needs a process group even with one process
    c = _container(_objects(gpus=1, distribution={"strategy": "fsdp"})["Job"])
    assert c["args"][-2:] == ["--nproc-per-node", "1"]


def test_nodes_render_an_indexed_job_a_headless_service_and_rendezvous_on_index_0() -> None:
    objs = _objects(gpus=8, nodes=2)
    job, svc = objs["Job"], objs["Service"]
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    # runPolicy.backoffLimit counts group restarts: every pod fails in each one
    default = make_spec().run_policy.backoff_limit
    assert spec["backoffLimit"] == default * 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == name
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    # the Service selects exactly this run's pods
    labels = spec["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["selector"][render.LABEL_RUN] == str(RUN.number)
    assert svc["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    args = _container(job)["args"]
    assert args[2:] == [
        "--nproc-per-node",
        "8",
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        f"{name}-0.{name}.{OWNER.namespace}.svc:{RDZV_PORT}",
        "--rdzv-id",
        f"{OWNER.uid}-{RUN.number}",
    ]
    # creation order: the Service before the Job whose pods it names
    kinds = [
        o["kind"]
        for o in render.run_objects(make_spec(resources={"nodes": 2}), OWNER, RUN, settings())
    ]
    assert kinds.index("Service") < kinds.index("Job") == len(kinds) - 1


def test_scheduling_deadline_only_for_groups() -> None:
    assert group.scheduling_deadline(make_spec(resources={"gpus": 8})) is None
    assert group.scheduling_deadline(make_spec(resources={"nodes": 2})) == 600
    spec = make_spec(resources={"nodes": 2}, runPolicy={"schedulingTimeoutSeconds": 120})
    assert group.scheduling_deadline(spec) == 120


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"resources": {"gpus": 2, "distribution": {"processesPerNode": 1}}}, "processesPerNode"),
        (
            {
                "method": {"type": "prompt-tuning"},
                "resources": {"distribution": {"strategy": "fsdp"}},
            },
            "resources.distribution.strategy",
        ),
        ({"resources": {"nodes": 0}}, "nodes"),
    ],
)
def test_impossible_combinations_are_refused_naming_the_field(
    over: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        make_spec(**over)


def test_processes_per_node_equal_to_gpus_is_fine() -> None:
    spec = make_spec(resources={"gpus": 2, "distribution": {"processesPerNode": 2}})
    assert spec.resources.world_size() == 2
    assert make_spec(resources={"gpus": 4, "nodes": 3}).resources.world_size() == 12


class _FakeKube:
    """Just what reconcile.ensure calls; `existing` is what the API server already holds."""

    def __init__(self, existing: dict[str, Any]) -> None:
        self.existing = existing
        self.calls: list[str] = []

    def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.calls.append("create")
        return (self.existing, False) if len(self.calls) == 1 else (obj, True)

    def delete(self, kind: str, namespace: str, name: str, **kw: Any) -> bool:
        self.calls.append(f"delete {kind}")
        return True

    def merge_patch(self, *a: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append("patch")
        return {}


def test_a_services_selector_is_the_operators() -> None:
    """Anyone may pre-create `<job>-run-<n>`: a foreign Service is never adopted (NameConflict),
    and ours whose selector was changed is replaced, since the group's rendezvous goes where
    it points."""
    from kubetune_operator.reconcile import NameConflict, ensure

    svc = _objects(nodes=2)["Service"]
    svc["metadata"]["uid"] = "svc-uid"
    foreign = {**svc, "metadata": {**svc["metadata"], "ownerReferences": []}}
    with pytest.raises(NameConflict):
        ensure(_FakeKube(foreign), svc, OWNER)  # type: ignore[arg-type]
    steered = {**svc, "spec": {**svc["spec"], "selector": {"app": "someone-else"}}}
    kube = _FakeKube(steered)
    ensure(kube, svc, OWNER)  # type: ignore[arg-type]
    assert kube.calls == ["create", "delete Service", "create"]
    kube = _FakeKube(svc)  # ours, unchanged: nothing to do
    ensure(kube, svc, OWNER)  # type: ignore[arg-type]
    assert kube.calls == ["create"]
