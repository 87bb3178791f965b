"""Foundation: pods act as their service account, so RBAC applies to in-pod code.

The node agent requests a bound token (TokenRequest API) for the pod's serviceAccountName and
gives the process a KUBECONFIG plus the in-cluster files at
/var/run/secrets/kubernetes.io/serviceaccount; the real API server authorizes with RBAC.
"""

from __future__ import annotations

from typing import Any

from clusterlib import Cluster

# Prints and records the HTTP status of one API call made with the pod's own credentials.
PROBE = """
import sys
from kubernetes import client, config

mode, ns, kind, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "incluster":
    config.load_incluster_config()
else:
    config.load_kube_config()  # $KUBECONFIG, written by the node agent
v1 = client.CoreV1Api()
try:
    if kind == "secrets":
        v1.list_namespaced_secret(ns)
    else:
        v1.read_namespaced_config_map("probe", ns)
    code = 200
except client.ApiException as e:
    code = e.status
print("status", code, flush=True)
open("/dev/termination-log", "w").write(f"status={code}")
sys.exit(0 if code == expected else 1)
"""


def _probe_job(name: str, sa: str, mode: str, ns: str, kind: str, expected: int) -> dict[str, Any]:
    job = Cluster.job_manifest(name, ["python", "-c", PROBE, mode, ns, kind, str(expected)])
    job["spec"]["template"]["spec"]["serviceAccountName"] = sa
    return job


def _message(cluster: Cluster, ns: str, job: str) -> str:
    pod = cluster.pods(ns, f"job-name={job}")[0]
    return str(pod["status"]["containerStatuses"][0]["state"]["terminated"].get("message", ""))


def test_service_account_without_rights_gets_403(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", namespace=namespace)
    cluster.apply(
        _probe_job("denied", "nobody", "kubeconfig", namespace, "secrets", 403), namespace
    )
    cluster.wait_job(namespace, "denied", timeout=90)
    assert _message(cluster, namespace, "denied") == "status=403"
    assert cluster.job_condition(namespace, "denied") == "Complete"


def test_role_grants_configmap_read(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", namespace=namespace)
    cluster.kubectl("create", "configmap", "probe", "--from-literal=a=b", namespace=namespace)
    cluster.kubectl(
        "create", "role", "cm-reader", "--verb=get", "--resource=configmaps", namespace=namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
        namespace=namespace,
    )
    cluster.apply(
        [
            _probe_job("allowed", "reader", "kubeconfig", namespace, "configmaps", 200),
            _probe_job("allowed-incluster", "reader", "incluster", namespace, "configmaps", 200),
            # Same account, a verb/resource the Role does not grant.
            _probe_job("still-denied", "reader", "incluster", namespace, "secrets", 403),
        ],
        namespace,
    )
    for job in ("allowed", "allowed-incluster", "still-denied"):
        cluster.wait_job(namespace, job, timeout=90)
    assert _message(cluster, namespace, "allowed") == "status=200"
    assert _message(cluster, namespace, "allowed-incluster") == "status=200"
    assert _message(cluster, namespace, "still-denied") == "status=403"
    for job in ("allowed", "allowed-incluster", "still-denied"):
        assert cluster.job_condition(namespace, job) == "Complete"
