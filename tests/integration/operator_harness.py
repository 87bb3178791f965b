"""Running the real operator (`kubetune-operator`) against the local cluster, for the tests.

The operator runs as a subprocess with the identity the Helm chart gives it: the chart's
ServiceAccount, ClusterRole and leader-election Role (rendered with `helm template` and
applied), and a token for that ServiceAccount from the TokenRequest API in its kubeconfig. So
a missing RBAC rule in the chart fails these tests, as it would fail in a cluster.

Each test gets its own operator, watching only the test's namespace (so tests do not see each
other's FineTuneJobs), with short lease and resync times.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster

VENV_BIN = Path(sys.executable).parent
STUB_TRAINER = Path(__file__).with_name("operator_stub_trainer.py")
OPERATOR_NAMESPACE = "kubetune-op-tests"
RELEASE = "kt-op"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
S3_SECRET = "s3-credentials"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorIdentity:
    kubeconfig: Path
    lease_namespace: str
    lease_name: str


def install_operator_identity(cluster: Cluster, workdir: Path) -> OperatorIdentity:
    """The chart's RBAC for the operator, and a kubeconfig with its ServiceAccount's token."""
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.wait_crd_established("finetunejobs.kubetune.io")
    if cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    rendered = subprocess.run(
        [cluster.helm_path, "template", RELEASE, str(REPO / "helm" / "kubetune"),
         "--namespace", OPERATOR_NAMESPACE],
        capture_output=True, text=True, check=True, env=cluster.process_env(),
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]
    cluster.apply(docs)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    lease = next(
        (d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"]), None
    )
    lease_name = "kubetune-operator"
    if lease is not None:
        for rule in lease["rules"]:
            if rule.get("resourceNames"):
                lease_name = rule["resourceNames"][0]
    kubeconfig = cluster.token_kubeconfig(
        sa, OPERATOR_NAMESPACE, workdir / "operator.kubeconfig", duration="6h"
    )
    return OperatorIdentity(kubeconfig, OPERATOR_NAMESPACE, lease_name)


@dataclass
class Operator:
    """One `kubetune-operator` process."""

    cluster: Cluster
    identity: OperatorIdentity
    namespaces: list[str]
    workdir: Path
    name: str = "op-a"
    stub: bool = True
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None  # default: kubetune-operator
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # The operator needs no S3 credentials and must not see them.
            if not k.startswith(("AWS_", "KUBETUNE_"))
        }
        self.metrics_port = self.metrics_port or free_port()
        self.health_port = self.health_port or free_port()
        env.update(
            {
                "KUBECONFIG": str(self.identity.kubeconfig),
                "KUBETUNE_NAMESPACES": ",".join(self.namespaces),
                "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:test",
                "KUBETUNE_S3_ENDPOINT": self.cluster.s3_endpoint,
                "KUBETUNE_S3_REGION": self.cluster.aws_region,
                "KUBETUNE_S3_CREDENTIALS_SECRET": S3_SECRET,
                "KUBETUNE_METRICS_PORT": str(self.metrics_port),
                "KUBETUNE_HEALTH_PORT": str(self.health_port),
                "KUBETUNE_LEASE_NAMESPACE": self.identity.lease_namespace,
                "KUBETUNE_LEASE_NAME": self.identity.lease_name,
                "KUBETUNE_LEASE_DURATION_SECONDS": "6",
                "KUBETUNE_LEASE_RENEW_SECONDS": "1",
                "KUBETUNE_RESYNC_SECONDS": "10",
                "KUBETUNE_PROGRESS_INTERVAL_SECONDS": "1",
                "KUBETUNE_IDENTITY": self.name,
                "KUBETUNE_LOG_LEVEL": "INFO",
            }
        )
        if self.stub:
            env["KUBETUNE_TRAINER_COMMAND"] = json.dumps([sys.executable, str(STUB_TRAINER)])
        env.update(self.env)
        return env

    def start(self, wait_active: bool = True) -> Operator:
        assert self.proc is None or self.proc.poll() is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command or [str(VENV_BIN / "kubetune-operator")],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        if wait_active:
            self.wait_active()
        return self

    def active_lines(self) -> int:
        return self.log().count('"operator ' + self.name + " active")

    def wait_active(self, timeout: float = 60) -> None:
        want = self.starts
        self.cluster.wait_for(
            lambda: self.active_lines() >= want or self._died(),
            timeout=timeout,
            interval=0.2,
            what=f"operator {self.name} to become active",
        )
        assert self.proc is not None and self.proc.poll() is None, self.tail()

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator {self.name} exited:\n{self.tail()}")
        return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, the lease is not released."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()


# ---------------------------------------------------------------------------- FineTuneJobs


def stub_ftj(name: str, action: str = "ok", **spec: Any) -> dict[str, Any]:
    """A FineTuneJob for the stub trainer (operator_stub_trainer.py): `action` is its script."""
    body: dict[str, Any] = {
        "model": {"hubId": f"stub/{action}"},
        "dataset": {"inline": [{"text": "hello"}]},
        "hyperparameters": {"maxSteps": 10},
        "output": {"uri": "s3://kubetune/op-tests"},
        "runPolicy": {"backoffLimit": 0},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": body,
    }


class Ftj:
    """Read helpers for one FineTuneJob and its children."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name

    def get(self) -> dict[str, Any]:
        return dict(
            self.cluster.kubectl_json("get", "finetunejob", self.name, namespace=self.namespace)
        )

    def status(self) -> dict[str, Any]:
        return dict(self.get().get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        for c in self.status().get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def wait_phase(self, *phases: str, timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status()
            return st if st.get("phase") in phases else None

        try:
            return self.cluster.wait_for(check, timeout=timeout, interval=0.5,
                                         what=f"{self.name} phase in {phases}")  # fmt: skip
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {json.dumps(self.status(), indent=1)}") from None

    def wait(self, fn: Any, what: str, timeout: float = 90) -> Any:
        return self.cluster.wait_for(fn, timeout=timeout, interval=0.5, what=what)

    def wait_refused(
        self, reason: str, timeout: float = 60
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A job the operator refuses: Failed, Stalled for `reason`. (status, Stalled condition)"""
        st = self.wait_phase("Failed", "Succeeded", timeout=timeout)
        assert st["phase"] == "Failed", st
        cond = self.condition("Stalled")
        assert cond["status"] == "True" and cond["reason"] == reason, cond
        return st, cond

    def wait_run(self, run: int, phase: str, timeout: float = 90) -> dict[str, Any]:
        """The status once run `run` is in `phase` (read once a poll: run and phase agree)."""

        def check() -> dict[str, Any] | None:
            st = self.status()
            return st if st.get("run") == run and st.get("phase") == phase else None

        return dict(self.wait(check, f"run {run} {phase}", timeout=timeout))

    def wait_step(self, step: int, what: str, timeout: float = 600) -> None:
        """Until the current run has reported progress step `step` or a later one."""
        self.wait(
            lambda: (self.status().get("progress") or {}).get("step", 0) >= step or None,
            what,
            timeout=timeout,
        )

    def jobs(self) -> list[dict[str, Any]]:
        items = self.cluster.kubectl_json(
            "get", "jobs", "-l", f"kubetune.io/job={self.name}", namespace=self.namespace
        )["items"]
        return list(items)

    def pods(self, run: int | None = None) -> list[dict[str, Any]]:
        sel = f"kubetune.io/job={self.name}" + (f",kubetune.io/run={run}" if run else "")
        return list(
            self.cluster.kubectl_json("get", "pods", "-l", sel, namespace=self.namespace)["items"]
        )

    def events(self) -> list[dict[str, Any]]:
        items = self.cluster.kubectl_json(
            "get", "events", "--field-selector",
            f"involvedObject.kind=FineTuneJob,involvedObject.name={self.name}",
            namespace=self.namespace,
        )["items"]  # fmt: skip
        # Creation order: resourceVersions grow (timestamps have only second precision).
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def event_reasons(self) -> list[str]:
        return [e["reason"] for e in self.events()]

    def patch_spec(self, patch: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "finetunejob", self.name, "--type=merge",
                             "-p", json.dumps({"spec": patch}), namespace=self.namespace)  # fmt: skip


def create_s3_secret(cluster: Cluster, namespace: str, secret_key: str | None = None) -> None:
    cluster.kubectl(
        "create", "secret", "generic", S3_SECRET,
        f"--from-literal=AWS_ACCESS_KEY_ID={cluster.aws_access_key_id}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_key or cluster.aws_secret_access_key}",
        namespace=namespace,
    )  # fmt: skip


def wait_gone(cluster: Cluster, fn: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not fn():
            return
        time.sleep(0.5)
    raise AssertionError(f"still present after {timeout}s: {what}")


# ---------------------------------------------------------------------------- fixtures
# Registered for every integration test in tests/integration/conftest.py; the fixtures are
# named op_identity and operators.


@pytest.fixture(scope="session", name="op_identity")
def op_identity_fixture(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> OperatorIdentity:
    return install_operator_identity(cluster, tmp_path_factory.mktemp("operator-identity"))


class Operators:
    """Factory for operator processes of one test; all are stopped at the end of the test,
    and their log tails are printed (pytest shows them when the test fails)."""

    def __init__(self, cluster: Cluster, identity: OperatorIdentity, namespace: str,
                 workdir: Path) -> None:  # fmt: skip
        self.cluster = cluster
        self.identity = identity
        self.namespace = namespace
        self.workdir = workdir
        self.all: list[Operator] = []

    def new(self, name: str = "op-a", *, start: bool = True, **kw: Any) -> Operator:
        op = Operator(self.cluster, self.identity, [self.namespace], self.workdir, name=name, **kw)
        self.all.append(op)
        if start:
            op.start()
        return op

    def close(self) -> None:
        for op in self.all:
            op.stop()
        for op in self.all:
            print(f"----- operator {op.name} (last lines) -----\n{op.tail(60)}")


@pytest.fixture(name="operators")
def operators_fixture(
    cluster: Cluster, op_identity: OperatorIdentity, namespace: str, tmp_path: Path
) -> Iterator[Operators]:
    create_s3_secret(cluster, namespace)
    ops = Operators(cluster, op_identity, namespace, tmp_path)
    try:
        yield ops
    finally:
        ops.close()
