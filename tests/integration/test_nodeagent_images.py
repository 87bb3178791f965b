"""The node agent runs a pod *inside its image* when the image exists in the local podman
storage (tests/nodeagent/images.py): the image's filesystem and user, the pod's volumes, env,
secret refs, service account, termination-message path and memory limit."""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from typing import Any

import pytest
from clusterlib import Cluster, one_container_pod
from imagelib import built

pytestmark = pytest.mark.integration

SECRET_VALUE = "s3cr3t-value-" + "x" * 8


def _finished(cluster: Cluster, namespace: str, name: str) -> Any:
    def done() -> Any:
        p = cluster.kubectl_json("get", "pod", name, namespace=namespace)
        return p if p["status"].get("phase") in ("Failed", "Succeeded") else None

    return cluster.wait_for(done, timeout=180, what=f"pod {name} to finish")


def test_pod_runs_inside_its_image(cluster: Cluster, namespace: str) -> None:
    image = built("operator")["operator"]
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "data": {"token": base64.b64encode(SECRET_VALUE.encode()).decode()}},
        namespace,
    )  # fmt: skip
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"config.json": '{"hello": "image"}'}},
        namespace,
    )  # fmt: skip
    script = textwrap.dedent(
        """
        import json, os
        out = {
            "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
            "revision_file": os.path.exists("/opt/kubetune/REVISION"),
            "venv_of_host": os.path.exists(os.environ.get("HOST_VENV", "/nonexistent")),
            "token": os.environ.get("TOKEN"), "plain": os.environ.get("PLAIN"),
            "pod": os.environ.get("POD_NAME"), "kube_host": os.environ.get("KUBERNETES_SERVICE_HOST"),
            "config": json.load(open("/etc/kt/config.json")),
            "sa_token": os.path.getsize("/var/run/secrets/kubernetes.io/serviceaccount/token") > 0,
            "cwd": os.getcwd(), "path": os.environ.get("PATH"),
        }
        open("/work/out.txt", "w").write("written")
        try:
            open("/root-fs-write", "w")
            out["rootfs_writable"] = True
        except OSError:
            out["rootfs_writable"] = False
        print(json.dumps(out))
        open("/work/term", "w").write("bye from the image")
        raise SystemExit(3)
        """
    )
    pod = one_container_pod(
        "in-image",
        ["python", "-c", script],
        securityContext={"runAsUser": 4242, "runAsGroup": 4343, "fsGroup": 4444},
        volumes=[
            {"name": "work", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
        ],
        container={
            "image": image,
            "workingDir": "/work",
            "terminationMessagePath": "/work/term",
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "PLAIN", "value": "plain-$(POD_NAME)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "HOST_VENV", "value": sys.prefix},
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "cfg", "mountPath": "/etc/kt", "readOnly": True},
            ],
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": {"limits": {"memory": "256Mi"}},
        },
    )  # fmt: skip
    cluster.apply(pod, namespace)
    p = _finished(cluster, namespace, "in-image")
    cs = p["status"]["containerStatuses"][0]
    term = cs["state"]["terminated"]
    log = cluster.pod_log(namespace, "in-image")
    assert term["exitCode"] == 3, log
    assert term["reason"] == "Error"
    assert term["message"] == "bye from the image"
    assert cs["containerID"].startswith("podman://"), cs

    out = json.loads(log.strip().splitlines()[-1])
    assert out["uid"] == 4242 and out["gid"] == 4343 and 4444 in out["groups"], out
    assert out["revision_file"] is True, "not the image's filesystem"
    assert out["venv_of_host"] is False, "the host's filesystem is visible"
    assert out["token"] == SECRET_VALUE
    assert out["plain"] == "plain-in-image" and out["pod"] == "in-image"
    assert out["kube_host"]
    assert out["config"] == {"hello": "image"}
    assert out["sa_token"] is True
    assert out["cwd"] == "/work"
    assert out["rootfs_writable"] is False
    # The image's PATH, not the agent's (whose PATH points into the host's venv).
    assert out["path"].startswith("/opt/kubetune/bin"), out["path"]


def test_memory_limit_in_image_is_oom_killed(cluster: Cluster, namespace: str) -> None:
    image = built("operator")["operator"]
    hog = "b = bytearray(512 * 1024 * 1024)\nb[::4096] = b'x' * (len(b) // 4096)\nprint('survived')"
    cluster.apply(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
         "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "main", "image": image, "command": ["python", "-c", hog],
                                  "resources": {"limits": {"memory": "64Mi"}}}]}},
        namespace,
    )  # fmt: skip
    p = _finished(cluster, namespace, "hog")
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Failed"
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137), term
    assert "survived" not in cluster.pod_log(namespace, "hog")
