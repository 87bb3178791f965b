"""`helm install` the chart into the real local control plane and let the operator it deploys
train the quickstart FineTuneJob to Succeeded: the proof that the chart's RBAC, environment and
wiring are enough.

Nothing is started by hand: the chart's Deployment becomes a pod (controller-manager,
scheduler), the test node agent runs it exactly as the Deployment says (command
`kubetune-operator`, the rendered env, the chart's ServiceAccount with a TokenRequest-bound token
mounted where in-cluster config looks for it). The operator then runs examples/quickstart.yaml
unchanged, so the S3 endpoint and credentials Secret come from the chart's values. Namespaced
mode (`watchNamespaces`) by default, so the operator only ever sees this test's namespace and
cannot disturb other tests sharing the cluster; the cluster-wide rules are the same template and
are checked by test_chart_apply.py. `KUBETUNE_CHART_E2E_MODE=cluster-wide` installs the default
(cluster-wide) mode instead, for a run on an otherwise idle cluster.

Along the way: the Lease is held by the pod, /healthz, /readyz and /metrics answer on the chart's
ports, Events are posted, the trainer's progress arrives (through the per-job Role the operator
created), the Argo CD health check and kstatus read every observed status right, the operator
log has no authorization failures, and deleting the FineTuneJob keeps its artifacts in S3.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from helmlib import chart_contract
from operator_harness import S3_SECRET, create_s3_secret

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubetune"
RELEASE = "kt-e2e"
TRAIN_TIMEOUT = float(os.environ.get("KUBETUNE_E2E_TIMEOUT", "1200"))
CLUSTER_WIDE = os.environ.get("KUBETUNE_CHART_E2E_MODE", "namespaced") == "cluster-wide"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [cluster.helm_path, "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True,
        text=True,
        env=cluster.process_env(),
        timeout=timeout,
    )
    assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def require(cond: bool, what: str) -> None:
    if not cond:
        pytest.fail(f"cannot run the chart install test yet: {what}", pytrace=False)


@pytest.fixture
def jobs_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"kt-chart-jobs-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "sa", "default", namespace=name, check=False).returncode == 0
        ),
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        # Never leave an undeletable namespace behind: drop finalizers of what is left.
        for ftj in cluster.kubectl(
            "get", "ftj", "-o", "name", namespace=name, check=False
        ).stdout.split():
            cluster.kubectl(
                "patch", ftj, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                namespace=name, check=False,
            )  # fmt: skip
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextlib.contextmanager
def installed(cluster: Cluster, release_ns: str, values: dict[str, Any]) -> Iterator[str]:
    args = ["install", RELEASE, str(CHART), "--namespace", release_ns, "--wait", "--timeout", "4m"]
    for k, v in values.items():
        args += ["--set-json", f"{k}={json.dumps(v)}"]
    out = helm(cluster, *args, timeout=300).stdout
    try:
        yield out
    finally:
        subprocess.run(
            [cluster.helm_path, "--kubeconfig", cluster.kubeconfig, "uninstall", RELEASE,
             "--namespace", release_ns, "--wait", "--timeout", "2m"],
            capture_output=True, env=cluster.process_env(), timeout=180,
        )  # fmt: skip


def test_helm_install_trains_quickstart(
    cluster: Cluster, namespace: str, jobs_namespace: str, s3: Any, tiny_fixtures: None
) -> None:
    install_and_train_quickstart(cluster, namespace, jobs_namespace, s3)


def install_and_train_quickstart(
    cluster: Cluster,
    release_ns: str,
    jobs_ns: str,
    s3: Any,
    extra_values: dict[str, Any] | None = None,
    after_success: Callable[[dict[str, Any]], None] | None = None,
    before_uninstall: Callable[[], None] | None = None,
) -> None:
    """The whole check; test_images_e2e.py runs it again with the locally built images
    (`extra_values`), inspecting the succeeded run's pods (`after_success`, given the
    FineTuneJob) and running more jobs on the same install (`before_uninstall`). The caller
    takes the `tiny_fixtures` fixture: the quickstart reads the tiny model and data in MinIO."""
    health = chart_contract("test_chart_argocd_health")

    require((REPO / "examples" / "quickstart.yaml").exists(), "examples/quickstart.yaml is missing")
    require(
        (REPO / "operator" / "kubetune_operator" / "__main__.py").exists(),
        "the operator's console script (kubetune_operator/__main__.py) has not landed",
    )
    require(
        importlib.util.find_spec("kubetune_trainer.testing.fixtures") is not None,
        "kubetune_trainer.testing.fixtures (tiny model/data upload) has not landed",
    )

    # The chart's CRD (helm skips crds/ when the CRD exists, so make it the chart's version).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    # (kubectl wait fails outright while a new CRD has no status.conditions yet: poll instead.)
    cluster.wait_for(
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in cluster.kubectl_json("get", "crd", "finetunejobs.kubetune.io")
            .get("status", {})
            .get("conditions")
            or []
        ),
        timeout=60,
        what="the FineTuneJob CRD to be Established",
    )

    # The S3 credentials Secret, referenced by name only (chart value s3.credentialsSecret).
    create_s3_secret(cluster, jobs_ns)

    metrics_port, health_port = free_port(), free_port()
    values: dict[str, Any] = {
        "watchNamespaces": [] if CLUSTER_WIDE else [jobs_ns],
        # One replica: the node agent runs pods in the host's network namespace, so two
        # replicas on one node would collide on the ports.
        "replicas": 1,
        "metrics": {"port": metrics_port},
        "health": {"port": health_port},
        "s3": {"endpoint": cluster.s3_endpoint, "region": cluster.aws_region,
               "credentialsSecret": S3_SECRET},
    }  # fmt: skip
    values.update(extra_values or {})
    with installed(cluster, release_ns, values) as install_out:
        assert "NOTES:" in install_out
        assert (
            "It watches FineTuneJobs in all namespaces."
            if CLUSTER_WIDE
            else f"It watches FineTuneJobs in: {jobs_ns}."
        ) in install_out

        # The operator runs as the Deployment says, under the chart's ServiceAccount.
        dep = cluster.kubectl_json("get", "deployment", RELEASE + "-kubetune", namespace=release_ns)
        (pod,) = [
            p for p in cluster.pods(release_ns, "app.kubernetes.io/instance=" + RELEASE)
            if not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        pod_name = pod["metadata"]["name"]
        assert pod["spec"]["serviceAccountName"] == RELEASE + "-kubetune"
        assert pod["spec"]["containers"][0]["command"] == ["kubetune-operator"]
        assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["kubetune-operator"]

        def operator_log() -> str:
            return cluster.pod_log(release_ns, pod_name, "operator")

        try:
            # Leader election through the chart's Lease Role.
            lease = cluster.wait_for(
                lambda: (
                    cluster.kubectl_json("get", "lease", "kubetune-operator", namespace=release_ns)
                    if cluster.kubectl(
                        "get", "lease", "kubetune-operator", namespace=release_ns, check=False
                    ).returncode == 0
                    else None
                ),
                timeout=60,
                what="the operator's Lease",
            )  # fmt: skip
            assert lease["spec"]["holderIdentity"] == pod_name

            # Probes and metrics on the chart's ports.
            def answered(url: str) -> tuple[int, str] | None:
                code, body = http_get(url)
                return (code, body) if code else None

            for path in ("/healthz", "/readyz"):
                url = f"http://127.0.0.1:{health_port}{path}"
                code, body = cluster.wait_for(partial(answered, url), timeout=60, what=url)
                assert code == 200, (path, body)
            code, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert code == 200 and "kubetune_" in body

            # The quickstart, unchanged.
            ftj = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
            cluster.apply(ftj, jobs_ns)
            name = ftj["metadata"]["name"]

            seen: list[tuple[str | None, str | None, str, str]] = []
            progress_seen = False
            deadline = time.monotonic() + TRAIN_TIMEOUT
            obj: dict[str, Any] = {}
            while time.monotonic() < deadline:
                obj = cluster.kubectl_json("get", "ftj", name, namespace=jobs_ns)
                st = obj.get("status") or {}
                ready: dict[str, Any] = next(
                    (c for c in st.get("conditions") or [] if c["type"] == "Ready"), {}
                )
                verdict = health.argocd_health(obj)["status"]
                flux = health.kstatus(obj)
                entry = (st.get("phase"), ready.get("reason"), verdict, flux)
                if not seen or seen[-1] != entry:
                    seen.append(entry)
                progress_seen = progress_seen or bool((st.get("progress") or {}).get("step"))
                if st.get("phase") in ("Succeeded", "Failed"):
                    break
                time.sleep(2)
            assert obj.get("status", {}).get("phase") == "Succeeded", (
                f"quickstart did not succeed: {json.dumps(obj.get('status'), indent=1)}\n"
                f"seen: {seen}\noperator log tail:\n{operator_log()[-4000:]}"
            )

            # Every status on the way was judged right by Argo CD and Flux.
            expected = {
                "Pending": ("Progressing", "InProgress"),
                "Running": ("Progressing", "InProgress"),
                "Succeeded": ("Healthy", "Current"),
            }
            for phase, reason, verdict, flux in seen:
                if phase is None:  # before the first write: the CRD's status default
                    assert (verdict, flux) == ("Progressing", "InProgress"), seen
                    continue
                assert (verdict, flux) == expected[phase], (phase, reason, seen)
            assert seen[-1][:3] == ("Succeeded", "Completed", "Healthy")
            assert progress_seen, f"the trainer's status.progress never arrived: {seen}"
            if after_success is not None:
                after_success(obj)

            # The artifacts are where status says, complete (manifest written last).
            st = obj["status"]
            arts = st["artifacts"]
            bucket, key = arts["manifestUri"].removeprefix("s3://").split("/", 1)
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert manifest
            merged = arts["mergedModelUri"].removeprefix(f"s3://{bucket}/")
            assert s3.list_objects_v2(Bucket=bucket, Prefix=merged).get("KeyCount", 0) > 0

            # Events were posted (the chart grants events create).
            events = cluster.kubectl_json(
                "get", "events", "--field-selector", f"involvedObject.name={name}",
                namespace=jobs_ns,
            )["items"]  # fmt: skip
            assert {e["reason"] for e in events} >= {"Created", "Completed"}, [
                e["reason"] for e in events
            ]

            # No authorization failure anywhere in the operator's log.
            log = operator_log()
            assert log, "no operator log"
            denied = [
                line
                for line in log.splitlines()
                if "forbidden" in line.lower() or " 403" in line or "permission" in line.lower()
            ]
            assert not denied, "\n".join(denied[:20])

            # Deleting the FineTuneJob removes it and its children, and keeps the artifacts.
            cluster.kubectl("delete", "ftj", name, "--timeout=120s", namespace=jobs_ns)
            s3.head_object(Bucket=bucket, Key=key)
            if before_uninstall is not None:
                before_uninstall()
        finally:
            with contextlib.suppress(Exception):
                print("---- operator log (tail) ----\n" + operator_log()[-3000:])
    # Clean up what the run wrote (kubetune itself never deletes artifacts).
    prefix = st["artifacts"]["manifestUri"].removeprefix(f"s3://{bucket}/").rsplit("/run-", 1)[0]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
