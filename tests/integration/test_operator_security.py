"""What the trainer pod may do with its token, and where Secret values never appear."""

from __future__ import annotations

import hashlib
import json
import re
import uuid

import pytest
from clusterlib import Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration


def test_trainer_token_may_patch_only_its_own_status(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    operators.new()
    # Another FineTuneJob in the same namespace, which the prober must not touch.
    cluster.apply(stub_ftj("other", "hang", runPolicy={"suspend": True}), namespace=namespace)
    cluster.apply(stub_ftj("prober", "rbac"), namespace=namespace)
    ftj = Ftj(cluster, namespace, "prober")
    assert ftj.wait_phase("Succeeded", "Failed")["phase"] == "Succeeded"
    pod = ftj.pods()[0]["metadata"]["name"]
    log = cluster.pod_log(namespace, pod, "trainer")
    m = re.search(r"^RBAC (\{.*\})$", log, re.M)
    assert m, log
    probes = json.loads(m.group(1))
    assert probes == {
        "own_status_get": 200,
        "own_status_patch": 200,
        "other_status_patch": 403,
        "own_spec_patch": 403,
        "secrets_list": 403,
        "pods_list": 403,
        "jobs_create": 403,
    }, probes
    assert (Ftj(cluster, namespace, "other").status().get("progress") or {}).get("step") != 666

    sa = f"system:serviceaccount:{namespace}:prober-trainer"
    for verb, resource, allowed in (
        ("patch", "finetunejobs.kubetune.io/prober", "yes"),
        ("patch", "finetunejobs.kubetune.io/other", "no"),
        ("get", "secrets", "no"),
        ("create", "pods", "no"),
    ):
        out = cluster.kubectl(
            "auth", "can-i", verb, resource,
            *(["--subresource=status"] if "finetunejobs" in resource else []),
            f"--as={sa}", namespace=namespace, check=False,
        ).stdout.strip()  # fmt: skip
        assert out == allowed, (verb, resource, out)


def test_secret_values_never_leave_the_secret(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    # Secret references are opt-in (render.check_secrets): the platform allows these two.
    op = operators.new(env={"KUBETUNE_ALLOWED_SECRETS": "hf,my-s3"})
    s3_secret = f"s3-{uuid.uuid4().hex}-SECRET"
    hf_token = f"hf_{uuid.uuid4().hex}TOKEN"
    cluster.kubectl(
        "create", "secret", "generic", "my-s3",
        "--from-literal=AWS_ACCESS_KEY_ID=someone", f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_secret}",
        namespace=namespace,
    )  # fmt: skip
    cluster.kubectl("create", "secret", "generic", "hf", f"--from-literal=token={hf_token}",
                    namespace=namespace)  # fmt: skip
    manifest = stub_ftj(
        "secretive",
        "ok",
        model={"hubId": "stub/ok", "tokenSecretRef": {"name": "hf", "key": "token"}},
        output={"uri": "s3://kubetune/op-tests", "credentialsSecretRef": {"name": "my-s3"}},
    )
    cluster.apply(manifest, namespace=namespace)
    ftj = Ftj(cluster, namespace, "secretive")
    assert ftj.wait_phase("Succeeded", "Failed")["phase"] == "Succeeded"

    # The values did reach the trainer, through secretKeyRef env...
    pod = ftj.pods()[0]["metadata"]["name"]
    log = cluster.pod_log(namespace, pod, "trainer")
    digests = json.loads(re.search(r"^secret digests (\{.*\})$", log, re.M).group(1))  # type: ignore[union-attr]
    assert digests == {
        "AWS_SECRET_ACCESS_KEY": hashlib.sha256(s3_secret.encode()).hexdigest(),
        "HF_TOKEN": hashlib.sha256(hf_token.encode()).hexdigest(),
    }
    # ...and appear nowhere else: not in the FineTuneJob (status, annotations), Events,
    # ConfigMaps, Jobs/pod specs, or the operator's log.
    places = {
        "finetunejob": cluster.kubectl(
            "get", "ftj", "secretive", "-o", "json", namespace=namespace
        ).stdout,
        "events": cluster.kubectl("get", "events", "-o", "json", namespace=namespace).stdout,
        "configmaps": cluster.kubectl(
            "get", "configmaps", "-o", "json", namespace=namespace
        ).stdout,
        "jobs": cluster.kubectl("get", "jobs", "-o", "json", namespace=namespace).stdout,
        "pods": cluster.kubectl("get", "pods", "-o", "json", namespace=namespace).stdout,
        "operator log": op.log(),
    }
    for where, text in places.items():
        for value in (s3_secret, hf_token):
            assert value not in text, f"a secret value leaked into {where}"
    job = ftj.jobs()[0]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-s3", "key": "AWS_SECRET_ACCESS_KEY"
    }  # fmt: skip
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
