"""The chart's optional OpenAI-compatible API component: off by default; when on, its
identity may only review tokens and access (cluster-wide) and act on finetunejobs (in the
listed namespaces), and it refuses to render without its S3 URIs."""

from __future__ import annotations

import json

from helmlib import CHART, RELEASE_NS, find, helm, render

ON = {
    "openaiApi": {
        "enabled": True,
        "filesUri": "s3://b/files",
        "outputUri": "s3://b/out",
        "models": {"tiny": {"s3Uri": "s3://b/models/tiny/"}},
        "namespaces": ["team-a", "team-b"],
        "s3CredentialsSecret": "api-s3",
    }
}


def test_off_by_default() -> None:
    assert not [o for o in render() if "openai" in o["metadata"]["name"]]


def test_on_renders_least_privilege_rbac_and_the_server() -> None:
    objs = [o for o in render(ON) if "openai" in o["metadata"]["name"]]
    (review,) = find(objs, "ClusterRole")
    assert review["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    roles = find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert roles[0]["rules"][0] == {
        "apiGroups": ["kubetune.io"],
        "resources": ["finetunejobs"],
        "verbs": ["get", "list", "create", "patch"],
    }
    assert not any("secrets" in json.dumps(r["rules"]) for r in roles)
    (dep,) = find(objs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert json.loads(env["KUBETUNE_API_MODELS"]) == ON["openaiApi"]["models"]
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "api-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert c["command"] == ["kubetune-openai-api"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_on_without_uris_fails_naming_them() -> None:
    res = helm(
        "template",
        "kt",
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--set",
        "openaiApi.enabled=true",
        check=False,
    )
    assert res.returncode != 0 and "openaiApi.filesUri" in res.stderr
