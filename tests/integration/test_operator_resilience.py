"""The operator killed at any point, restarted, or running twice: one Job per run, and the
status ends right (stub trainer)."""

from __future__ import annotations

import time

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def job_names(ftj: Ftj) -> list[str]:
    return sorted(j["metadata"]["name"] for j in ftj.jobs())


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.6, 1.2, 2.5])
def test_sigkill_at_any_point_then_restart(
    cluster: Cluster, namespace: str, operators: Operators, delay: float
) -> None:
    op = operators.new()
    cluster.apply(stub_ftj("crash", "ok", hyperparameters={"maxSteps": 30}), namespace=namespace)
    time.sleep(delay)
    op.kill()
    op.start()
    ftj = Ftj(cluster, namespace, "crash")
    st = ftj.wait_phase("Succeeded", "Failed", timeout=90)
    assert st["phase"] == "Succeeded", st
    assert job_names(ftj) == ["crash-run-1"]
    assert len(ftj.pods()) == 1
    assert st["run"] == 1 and "history" not in st
    reasons = ftj.event_reasons()
    assert reasons[-1] == "Completed", reasons


def test_sigkill_mid_run_keeps_status_and_progress(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    op = operators.new()
    cluster.apply(stub_ftj("mid", "ok", hyperparameters={"maxSteps": 60}), namespace=namespace)
    ftj = Ftj(cluster, namespace, "mid")
    ftj.wait_phase("Running")
    op.kill()
    # The run goes on without the operator (the trainer reports its own progress).
    ftj.wait(
        lambda: ftj.status().get("progress", {}).get("step", 0) > 0, "progress without operator"
    )
    time.sleep(4)
    op.start()
    st = ftj.wait_phase("Succeeded", "Failed", timeout=60)
    assert st["phase"] == "Succeeded" and job_names(ftj) == ["mid-run-1"]


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 1.0])
def test_sigkill_during_a_restart_spec_change(
    cluster: Cluster, namespace: str, operators: Operators, delay: float
) -> None:
    op = operators.new()
    cluster.apply(stub_ftj("change", "hang"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "change")
    ftj.wait_phase("Running")
    ftj.patch_spec({"hyperparameters": {"maxSteps": 11}})
    time.sleep(delay)
    op.kill()
    op.start()
    st = ftj.wait_run(2, "Running")
    ftj.wait(lambda: job_names(ftj) == ["change-run-2"], "exactly the run-2 Job")
    assert [h["run"] for h in st["history"]] == [1]
    assert st["runGeneration"] == 2


def test_two_replicas_with_leader_election(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    a = operators.new("op-a")
    b = operators.new("op-b", start=False)
    b.start(wait_active=False)
    b_standing_by = lambda: "standing by" in b.log()  # noqa: E731
    cluster.wait_for(b_standing_by, timeout=30, what="op-b to stand by")
    names = [f"pair-{i}" for i in range(3)]
    for name in names:
        cluster.apply(stub_ftj(name), namespace=namespace)
    for name in names:
        ftj = Ftj(cluster, namespace, name)
        assert ftj.wait_phase("Succeeded", "Failed")["phase"] == "Succeeded"
        assert job_names(ftj) == [f"{name}-run-1"]
    assert "created Job" not in b.log()  # the standby ran no handlers
    assert b.active_lines() == 0

    # Failover: the leader dies without releasing the Lease; the standby takes over.
    a.kill()
    t0 = time.monotonic()
    b.wait_active(timeout=60)
    takeover = time.monotonic() - t0
    cluster.apply(stub_ftj("after-failover"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "after-failover")
    assert ftj.wait_phase("Succeeded", "Failed")["phase"] == "Succeeded"
    assert job_names(ftj) == ["after-failover-run-1"]
    print(f"failover after SIGKILL of the leader: {takeover:.1f}s (lease duration 6s)")


def test_two_active_replicas_still_create_one_job_per_run(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    """The backstop: with leader election off, both replicas act; deterministic names and
    409-is-success still give exactly one Job per run."""
    off = {"KUBETUNE_LEADER_ELECTION": "false"}
    operators.new("op-a", env=dict(off))
    operators.new("op-b", env=dict(off))
    names = [f"twin-{i}" for i in range(4)]
    for name in names:
        cluster.apply(stub_ftj(name, "ok", hyperparameters={"maxSteps": 20}), namespace=namespace)
    for name in names:
        ftj = Ftj(cluster, namespace, name)
        assert ftj.wait_phase("Succeeded", "Failed")["phase"] == "Succeeded"
        assert job_names(ftj) == [f"{name}-run-1"]
        assert len(ftj.pods()) == 1
    ftj = Ftj(cluster, namespace, names[0])
    ftj.patch_spec({"hyperparameters": {"maxSteps": 10}})
    st = ftj.wait_run(2, "Succeeded")
    assert [h["run"] for h in st["history"]] == [1]
    assert job_names(ftj) == [f"{names[0]}-run-1", f"{names[0]}-run-2"]


def test_adopts_the_job_of_a_crash_between_create_and_status(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    """Deterministically the worst crash window: the Job exists, the status does not know it."""
    from kubernetes import config
    from kubetune_operator.k8s import Kube
    from kubetune_operator.reconcile import spec_problem, start_run
    from kubetune_operator.render import Owner, Run
    from kubetune_operator.runs import spec_hash
    from kubetune_operator.settings import OperatorSettings

    cluster.apply(stub_ftj("window"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "window")
    obj = ftj.get()
    op = operators.new(start=False)
    settings = OperatorSettings(**{k[9:].lower(): v for k, v in op.environment().items()
                                   if k.startswith("KUBETUNE_")})  # fmt: skip
    spec, problem = spec_problem(obj["spec"], "window", settings)
    assert spec is not None and problem is None
    kube = Kube(config.new_client_from_config(config_file=cluster.kubeconfig))
    owner = Owner(namespace, "window", obj["metadata"]["uid"])
    start_run(kube, spec, owner, Run(1, 1, spec_hash(spec)), settings)
    assert ftj.status() == {"observedGeneration": 0}  # the CRD default: nothing written yet

    op.start()
    st = ftj.wait_phase("Succeeded", "Failed")
    assert st["phase"] == "Succeeded" and st["run"] == 1
    assert job_names(ftj) == ["window-run-1"] and len(ftj.pods()) == 1
