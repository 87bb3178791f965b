"""Foundation: Jobs and pods on the real control plane, run by the test node agent.

Nothing is mocked: the Job controller (kube-controller-manager) creates pods, kube-scheduler
binds them to the agent's node, the agent runs their commands and reports status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from clusterlib import Cluster, one_container_pod

PY = "python"  # resolved through the agent's PATH: the repo venv, like an image's python


def _started_pid(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> int:
    """Apply a pod whose script prints `pid <n>` first; its host pid once printed."""
    name = pod["metadata"]["name"]
    cluster.apply(pod, namespace)
    log = cluster.wait_for(
        lambda: (lambda s: s if "pid" in s else None)(cluster.pod_log(namespace, name)),
        timeout=60,
        what=f"{name} to print its pid",
    )
    return int(log.split()[1])


def _pod_of_job(cluster: Cluster, ns: str, job: str) -> dict[str, Any]:
    pods = cluster.pods(ns, f"job-name={job}")
    assert pods, f"no pods for job {job}"
    return pods[0]


def test_job_completes_and_writes_file(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = {"model": "tiny", "epochs": 1}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "trainer-config"},
            "data": {"config.json": json.dumps(config)},
        },
        namespace,
    )
    script = (
        "set -e; mkdir -p /workspace/run; echo hello > /workspace/run/file; "
        "cp /workspace/run/file /out/result.txt; cp /etc/kubetune/config.json /out/config.json; "
        "echo $POD_NAME/$NODE_NAME > /out/whoami; touch /dev/shm/ok; echo done"
    )
    job = cluster.job_manifest(
        "writer",
        ["sh", "-c", script],
        container={
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "volumeMounts": [
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "dshm", "mountPath": "/dev/shm"},
                {
                    "name": "config",
                    "mountPath": "/etc/kubetune/config.json",
                    "subPath": "config.json",
                    "readOnly": True,
                },
                {"name": "out", "mountPath": "/out"},
            ],
        },
        pod_spec={
            "volumes": [
                {"name": "workspace", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                {"name": "config", "configMap": {"name": "trainer-config"}},
                {"name": "out", "hostPath": {"path": str(out), "type": "Directory"}},
            ]
        },
    )
    cluster.apply(job, namespace)
    done = cluster.wait_job(namespace, "writer", timeout=90)
    assert cluster.job_condition(namespace, "writer") == "Complete", done["status"]
    assert done["status"]["succeeded"] == 1
    assert (out / "result.txt").read_text() == "hello\n"
    assert json.loads((out / "config.json").read_text()) == config

    pod = _pod_of_job(cluster, namespace, "writer")
    assert pod["spec"]["nodeName"] == "kubetune-node-0"
    assert (out / "whoami").read_text().strip() == f"{pod['metadata']['name']}/kubetune-node-0"
    assert pod["status"]["phase"] == "Succeeded"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    conds = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conds["PodScheduled"]["status"] == "True"
    assert conds["Initialized"]["status"] == "True"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
    # Volumes were private to the pod: nothing leaked to the host paths.
    assert not Path("/workspace/run/file").exists()
    # Logs: from the agent's files and through the API server (kubectl logs).
    assert cluster.pod_log(namespace, pod["metadata"]["name"]).strip() == "done"
    logs = cluster.kubectl("logs", pod["metadata"]["name"], namespace=namespace).stdout
    assert logs.strip() == "done"


def test_job_fails_after_backoff_limit(cluster: Cluster, namespace: str) -> None:
    job = cluster.job_manifest(
        "failer",
        ["sh", "-c", "echo 'out of cheese' > /dev/termination-log; echo failing; exit 3"],
        backoff_limit=1,
    )
    cluster.apply(job, namespace)
    done = cluster.wait_job(namespace, "failer", timeout=120)
    conds = {c["type"]: c for c in done["status"]["conditions"]}
    assert conds["Failed"]["status"] == "True"
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 2
    pods = cluster.pods(namespace, "job-name=failer")
    failed = [p for p in pods if p["status"]["phase"] == "Failed"]
    assert len(failed) == 2, [p["status"]["phase"] for p in pods]
    for p in failed:
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 3
        assert term["reason"] == "Error"
        assert term["message"] == "out of cheese\n"


def test_fallback_to_logs_on_error(cluster: Cluster, namespace: str) -> None:
    job = cluster.job_manifest(
        "fallback",
        ["sh", "-c", "echo line1; echo 'Traceback: boom' >&2; exit 1"],
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    cluster.apply(job, namespace)
    cluster.wait_job(namespace, "fallback")
    term = _pod_of_job(cluster, namespace, "fallback")["status"]["containerStatuses"][0]["state"][
        "terminated"
    ]
    assert term["message"] == "line1\nTraceback: boom"


def test_pod_deletion_kills_process(cluster: Cluster, namespace: str) -> None:
    script = (
        "import os, signal, sys, time\n"
        "def term(*_):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('pid', os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    pid = _started_pid(
        cluster, namespace, one_container_pod("sleeper", [PY, "-c", script], grace=30)
    )
    os.kill(pid, 0)  # it runs on this host
    running = cluster.wait_for(
        lambda: (lambda p: p if p["status"].get("phase") == "Running" else None)(
            cluster.kubectl_json("get", "pod", "sleeper", namespace=namespace)
        ),
        timeout=10,
        what="phase Running",
    )
    conds = {c["type"]: c["status"] for c in running["status"]["conditions"]}
    assert conds["Ready"] == "True"

    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "sleeper", "--wait=true", "--timeout=60s", namespace=namespace)
    assert time.monotonic() - t0 < 30
    with_pid_gone = cluster.wait_for(lambda: not _alive(pid), timeout=10, what=f"pid {pid} to exit")
    assert with_pid_gone
    assert "got SIGTERM" in cluster.pod_log(namespace, "sleeper")
    assert (
        cluster.kubectl("get", "pod", "sleeper", namespace=namespace, check=False).returncode != 0
    )


def test_deletion_sigkills_after_grace_period(cluster: Cluster, namespace: str) -> None:
    script = "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('pid', os.getpid(), flush=True)\ntime.sleep(600)\n"
    pid = _started_pid(
        cluster, namespace, one_container_pod("stubborn", [PY, "-c", script], grace=2)
    )
    t0 = time.monotonic()
    cluster.kubectl(
        "delete", "pod", "stubborn", "--wait=true", "--timeout=60s", namespace=namespace
    )
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 20, elapsed
    cluster.wait_for(lambda: not _alive(pid), timeout=10, what=f"pid {pid} to be killed")


def test_active_deadline_exceeded(cluster: Cluster, namespace: str) -> None:
    pod = one_container_pod("slow", ["sleep", "600"], grace=1, activeDeadlineSeconds=3)
    cluster.apply(pod, namespace)

    def failed() -> dict[str, Any] | None:
        p = cluster.kubectl_json("get", "pod", "slow", namespace=namespace)
        return p if p["status"].get("phase") == "Failed" else None

    p = cluster.wait_for(failed, timeout=60, what="pod slow to fail")
    assert p["status"]["reason"] == "DeadlineExceeded"


def test_restart_on_failure_init_containers_and_env(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cm"},
                "data": {"greeting": "hi", "A": "1"},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sec"},
                "stringData": {"token": "s3cr3t"},
            },
        ],
        namespace,
    )
    # Fails on the first run, succeeds on the second: the emptyDir survives the restart.
    main = (
        "import json, os, sys\n"
        "marker = '/scratch/attempted'\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    sys.exit(7)\n"
        "keys = ['GREETING', 'TOKEN', 'NS', 'SA', 'CM_A', 'EXPANDED', 'MEM', 'MISSING']\n"
        "env = {k: os.environ.get(k) for k in keys}\n"
        "env['init'] = open('/scratch/init.txt').read()\n"
        "open('/dev/termination-log', 'w').write(json.dumps(env))\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "retry"},
        "spec": {
            "restartPolicy": "OnFailure",
            "initContainers": [
                {
                    "name": "init",
                    "image": "kubetune.local/test",
                    "command": ["sh", "-c", "echo from-init > /scratch/init.txt"],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "kubetune.local/test",
                    "command": [PY, "-c", main],
                    "resources": {"limits": {"memory": "256Mi"}},
                    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                    "env": [
                        {
                            "name": "GREETING",
                            "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}},
                        },
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}},
                        },
                        {
                            "name": "NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {
                            "name": "SA",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}},
                        },
                        {"name": "EXPANDED", "value": "$(GREETING)-$(NS)"},
                        {
                            "name": "MEM",
                            "valueFrom": {
                                "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}
                            },
                        },
                        {
                            "name": "MISSING",
                            "valueFrom": {
                                "configMapKeyRef": {"name": "nope", "key": "x", "optional": True}
                            },
                        },
                    ],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }
    cluster.apply(pod, namespace)

    def succeeded() -> dict[str, Any] | None:
        p = cluster.kubectl_json("get", "pod", "retry", namespace=namespace)
        assert p["status"].get("phase") != "Failed", p["status"]
        return p if p["status"].get("phase") == "Succeeded" else None

    p = cluster.wait_for(succeeded, timeout=90, what="pod retry to succeed")
    cs = p["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 7
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    env = json.loads(cs["state"]["terminated"]["message"])
    assert env == {
        "GREETING": "hi",
        "TOKEN": "s3cr3t",
        "NS": namespace,
        "SA": "default",
        "CM_A": "1",
        "EXPANDED": f"hi-{namespace}",
        "MEM": "256",
        "MISSING": None,
        "init": "from-init\n",
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


assert sys.version_info >= (3, 11)
