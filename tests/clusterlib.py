"""The test-side handle on the local cluster (hack/cluster), used by tests/conftest.py.

Tests import :class:`Cluster` from here for type hints: ``from clusterlib import Cluster``
(tests/ is on sys.path because tests/conftest.py lives there).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
HACK_CLUSTER = REPO / "hack" / "cluster"
T = TypeVar("T")


@dataclass
class Cluster:
    """Handle on the running local cluster, for tests."""

    state_dir: Path
    kubeconfig: str
    apiserver: str
    ca_file: str
    s3_endpoint: str
    s3_bucket: str
    aws_access_key_id: str
    aws_secret_access_key: str
    aws_region: str
    env: dict[str, str] = field(default_factory=dict)
    started_here: bool = False

    # ---------------------------------------------------------------- API clients

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` with admin credentials."""
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client())

    def rbac(self) -> Any:
        from kubernetes import client

        return client.RbacAuthorizationV1Api(self.api_client())

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client())

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            region_name=self.aws_region,
        )

    # ---------------------------------------------------------------- kubectl

    def kubectl(
        self,
        *args: str,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run our kubectl (the built one, not /usr/bin/kubectl) with the admin kubeconfig."""
        cmd = [self.kubectl_path, "--kubeconfig", self.kubeconfig]
        if namespace:
            cmd += ["-n", namespace]
        cmd += list(args)
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.process_env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    @contextlib.contextmanager
    def applied(self, manifests: str) -> Iterator[None]:
        """`kubectl apply` the manifests for the block; deleted after it (not waited for)."""
        self.kubectl("apply", "-f", "-", input=manifests)
        try:
            yield
        finally:
            self.kubectl(
                "delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifests,
                check=False,
            )  # fmt: skip

    def kubectl_json(self, *args: str, namespace: str | None = None) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", namespace=namespace).stdout)

    def wait_crd_established(self, name: str, timeout: float = 60) -> None:
        """Poll until the CRD is Established. `kubectl wait --for=condition=Established` fails at
        once ("<nil> is of the type <nil>") when it reads a CRD whose status has no conditions
        yet, which happens right after a create on a busy API server."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.kubectl("get", "crd", name, "-o", "json", check=False)
            if got.returncode == 0:
                conds = (json.loads(got.stdout).get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.5)

    def apply(
        self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None
    ) -> None:
        """``kubectl apply`` a manifest (dict or list of dicts)."""
        docs = manifest if isinstance(manifest, list) else [manifest]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        self.kubectl("apply", "-f", "-", namespace=namespace, input=body)

    def token_kubeconfig(
        self, service_account: str, namespace: str, path: Path, duration: str = "1h"
    ) -> Path:
        """A kubeconfig at `path` that talks to this API server as `service_account` (a token from
        `kubectl create token`): a process that uses it has exactly that account's RBAC."""
        token = self.kubectl(
            "create", "token", service_account, f"--duration={duration}", namespace=namespace
        ).stdout.strip()
        user = {"name": service_account, "user": {"token": token}}
        server = {"server": self.apiserver, "certificate-authority": self.ca_file}
        context = {"cluster": "kubetune", "user": service_account}
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kubetune", "cluster": server}],
                    "users": [user],
                    "contexts": [{"name": "kubetune", "context": context}],
                    "current-context": "kubetune",
                }
            )
        )
        return path

    @property
    def kubectl_path(self) -> str:
        return self._tool("kubectl")

    @property
    def helm_path(self) -> str:
        return self._tool("helm")

    def _tool(self, name: str) -> str:
        for d in self.env.get("PATH", os.environ["PATH"]).split(os.pathsep):
            p = Path(d) / name
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
        raise FileNotFoundError(name)

    def process_env(self) -> dict[str, str]:
        """os.environ with the cluster's variables (for subprocesses)."""
        return {**os.environ, **self.env}

    # ---------------------------------------------------------------- node agents

    def add_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        taints: list[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        """Start another node agent (``hack/cluster agent-up``); wait until the Node is Ready.

        ``taints`` use kubectl syntax: ``key=value:NoSchedule``. Remove it with remove_node().
        """
        cmd = [str(HACK_CLUSTER), "agent-up", name]
        if gpus:
            cmd += ["--gpus", str(gpus)]
        for k, v in (labels or {}).items():
            cmd += ["--label", f"{k}={v}"]
        for t in taints or []:
            cmd += ["--taint", t]
        cmd += extra_args or []
        subprocess.run(cmd, check=True, env=self.process_env(), timeout=120)

    def remove_node(self, name: str) -> None:
        """Stop a node agent started by add_node(); its Node object is deleted."""
        subprocess.run(
            [str(HACK_CLUSTER), "agent-down", name], check=True, env=self.process_env(), timeout=60
        )

    def pod_log(
        self, namespace: str, pod: str, container: str | None = None, restart: int = -1
    ) -> str:
        """A container's stdout+stderr as the node agent wrote it (restart -1: the latest run).

        ``kubectl logs`` works too (the agent serves /containerLogs); this reads the files
        directly, so it also works after the pod is gone.
        """
        files = sorted(
            self.state_dir.glob(f"agent/*/logs/{namespace}_{pod}_*/{container or '*'}.*.log"),
            key=lambda p: int(p.name.rsplit(".", 2)[1]),
        )
        if not files:
            return ""
        return files[restart].read_text(errors="replace")

    # ---------------------------------------------------------------- waiting

    @staticmethod
    def wait_for(
        fn: Callable[[], T | None],
        *,
        timeout: float = 60,
        interval: float = 0.5,
        what: str = "condition",
    ) -> T:
        """Poll fn() until it returns something truthy; return it. Fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                value = fn()
            except AssertionError as e:  # allow fn to assert
                value, last = None, e
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what} (last: {last!r})"
                )
            time.sleep(interval)

    def job_condition(self, namespace: str, name: str) -> str | None:
        """'Complete' / 'Failed' once the Job has that condition True, else None."""
        job = self.kubectl_json("get", "job", name, namespace=namespace)
        for c in (job.get("status") or {}).get("conditions") or []:
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return str(c["type"])
        return None

    def wait_job(self, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the Job is Complete or Failed; return the Job (as JSON)."""
        self.wait_for(
            lambda: self.job_condition(namespace, name),
            timeout=timeout,
            what=f"job {namespace}/{name}",
        )
        return dict(self.kubectl_json("get", "job", name, namespace=namespace))

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", "pods"] + (["-l", selector] if selector else [])
        return list(self.kubectl_json(*args, namespace=namespace)["items"])

    # ---------------------------------------------------------------- manifests

    @staticmethod
    def job_manifest(
        name: str,
        command: list[str],
        *,
        backoff_limit: int = 0,
        image: str = "kubetune.local/test:latest",
        pod_spec: dict[str, Any] | None = None,
        container: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A batch/v1 Job with one container running `command` (restartPolicy Never)."""
        c: dict[str, Any] = {"name": "main", "image": image, "command": command}
        c.update(container or {})
        spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [c]}
        spec.update(pod_spec or {})
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"backoffLimit": backoff_limit, "template": {"spec": spec}},
        }


def one_container_pod(
    name: str,
    command: list[str],
    *,
    grace: int = 1,
    container: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A never-restarted pod whose one container `main` runs `command` in the node agent's test
    image; `container` adds or overrides container fields (e.g. another image), `spec` pod fields."""
    main = {"name": "main", "image": "kubetune.local/test", "command": command, **(container or {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            **spec,
            "containers": [main],
        },
    }


def cluster_is_up() -> bool:
    """`hack/cluster is-up`: every core component and the default node agent are healthy."""
    return subprocess.run([str(HACK_CLUSTER), "is-up"], capture_output=True).returncode == 0


def apiserver_running() -> bool:
    return (
        subprocess.run(
            [str(HACK_CLUSTER), "status", "kube-apiserver"], capture_output=True
        ).returncode
        == 0
    )


class Users:
    """Pid files of the test sessions using the cluster, so the session that started it does
    not stop it under another session still running (hack/cluster down only when none is left)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "users"

    def register(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / str(os.getpid())).touch()

    def unregister(self) -> None:
        (self.dir / str(os.getpid())).unlink(missing_ok=True)

    def others(self) -> list[int]:
        alive = []
        for f in self.dir.glob("*") if self.dir.is_dir() else []:
            if not f.name.isdigit() or int(f.name) == os.getpid():
                continue
            try:
                os.kill(int(f.name), 0)
                alive.append(int(f.name))
            except ProcessLookupError:
                f.unlink(missing_ok=True)
            except PermissionError:
                alive.append(int(f.name))
        return alive


def state_dir() -> Path:
    return Path(os.environ.get("KUBETUNE_STATE") or Path.home() / ".cache/kubetune/cluster")


def load_env() -> dict[str, str]:
    """The variables `hack/cluster env` exports, evaluated by bash (PATH expanded)."""
    out = subprocess.run(
        [str(HACK_CLUSTER), "env"], check=True, capture_output=True, text=True
    ).stdout
    names = re.findall(r"^export ([A-Za-z_][A-Za-z0-9_]*)=", out, re.MULTILINE)
    dump = subprocess.run(
        ["bash", "-c", 'eval "$1" && env -0', "_", out], check=True, capture_output=True, text=True
    ).stdout
    full = dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
    return {n: full[n] for n in names}


def cluster_from_env(env: dict[str, str], started_here: bool = False) -> Cluster:
    return Cluster(
        state_dir=Path(env["KUBETUNE_CLUSTER_STATE"]),
        kubeconfig=env["KUBECONFIG"],
        apiserver=env["KUBETUNE_APISERVER"],
        ca_file=env["KUBETUNE_CA_FILE"],
        s3_endpoint=env["KUBETUNE_S3_ENDPOINT"],
        s3_bucket=env["KUBETUNE_S3_BUCKET"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_region=env["AWS_DEFAULT_REGION"],
        env=env,
        started_here=started_here,
    )
