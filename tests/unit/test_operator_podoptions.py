"""spec.pod and the platform's pod-wide settings (issue 18, floor 6), rendered into the Job."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.v1alpha1 import FineTuneJobSpec, Reason
from kubetune_operator import render
from kubetune_operator.render import Owner, RenderError, Run
from kubetune_operator.settings import OperatorSettings
from pydantic import ValidationError

BASE: dict[str, Any] = {
    "model": {"hubId": "org/m"},
    "dataset": {"hub": {"name": "org/private-data"}},
    "output": {"uri": "s3://bucket/o"},
}
OPTIONS: dict[str, Any] = {
    "labels": {"cost-center": "nlp-42"},
    "annotations": {"example.com/owner": "team-nlp"},
    "imagePullSecrets": ["team-registry"],
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
    "envFrom": [{"configMapRef": {"name": "hub-mirror"}}, {"secretRef": {"name": "proxy-auth"}, "prefix": "PROXY_"}],
    "extraCaBundle": {"name": "corp-ca", "key": "bundle.pem"},
}  # fmt: skip


def spec(**over: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, **over})


def job(s: FineTuneJobSpec, settings: OperatorSettings | None = None) -> dict[str, Any]:
    owner = Owner(name="j", namespace="team-nlp", uid="0b7c1c9e-1111-2222-3333-444455556666")
    run = Run(number=1, generation=1, spec_hash="h")
    return render.job(s, owner, run, settings or OperatorSettings())


def test_pod_options_reach_the_job_and_its_pod_without_touching_the_operators_own() -> None:
    j = job(
        spec(
            pod=OPTIONS,
            dataset={**BASE["dataset"], "tokenSecretRef": {"name": "hf-data", "key": "t"}},
        )
    )
    plain = job(spec())
    for meta in (j["metadata"], j["spec"]["template"]["metadata"]):
        assert meta["labels"]["cost-center"] == "nlp-42"
        assert meta["annotations"]["example.com/owner"] == "team-nlp"
    # the operator's labels are all still there, unchanged
    assert plain["metadata"]["labels"].items() <= j["metadata"]["labels"].items()
    pod = j["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "team-registry"}]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp:3128"
    assert env["KUBETUNE_DATASET_HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-data",
        "key": "t",
    }
    assert env["KUBETUNE_EXTRA_CA_BUNDLE"]["value"] == "/etc/kubetune-ca/bundle.pem"
    assert c["envFrom"] == [
        {"configMapRef": {"name": "hub-mirror"}},
        {"secretRef": {"name": "proxy-auth"}, "prefix": "PROXY_"},
    ]
    assert {"name": "extra-ca", "mountPath": "/etc/kubetune-ca", "readOnly": True} in c[
        "volumeMounts"
    ]
    vol = next(v for v in pod["volumes"] if v["name"] == "extra-ca")
    assert vol["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "bundle.pem", "path": "bundle.pem"}],
    }


def test_platform_pull_secrets_and_ca_bundle_apply_to_every_run() -> None:
    st = OperatorSettings(
        trainer_image_pull_secrets=["mirror"], extra_ca_bundle_config_map="corp-ca"
    )
    pod = job(spec(), st)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mirror"}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBETUNE_EXTRA_CA_BUNDLE"] == "/etc/kubetune-ca/ca.crt"
    both = job(spec(pod={"imagePullSecrets": ["team-registry", "mirror"]}), st)
    assert both["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "mirror"}, {"name": "team-registry"}
    ]  # fmt: skip


def test_secrets_reached_through_pod_options_need_the_allow_list() -> None:
    s = spec(pod={"envFrom": [{"secretRef": {"name": "proxy-auth"}}]})
    with pytest.raises(RenderError) as e:
        render.check(s, "j", OperatorSettings(), "team-nlp")
    assert e.value.reason == Reason.SECRET_NOT_ALLOWED
    assert e.value.message.startswith("spec.pod.envFrom[0].secretRef: Secret 'proxy-auth'")
    render.check(s, "j", OperatorSettings(allowed_secrets=["team-nlp/proxy-auth"]), "team-nlp")
    t = spec(dataset={**BASE["dataset"], "tokenSecretRef": {"name": "hf-data", "key": "t"}})
    with pytest.raises(RenderError, match=r"spec\.dataset\.tokenSecretRef"):
        render.check(t, "j", OperatorSettings(), "team-nlp")


@pytest.mark.parametrize(
    ("pod", "needle"),
    [
        ({"labels": {"kubetune.io/job": "x"}}, "keys must be label keys outside kubetune.io/"),
        ({"annotations": {"kueue.x-k8s.io/queue-name": "q"}}, "outside kubetune.io/"),
        ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "name is reserved"),
        ({"env": [{"name": "KUBETUNE_CONFIG", "value": "/x"}]}, "name is reserved"),
        ({"envFrom": [{}]}, "exactly one of configMapRef, secretRef"),
    ],
)
def test_reserved_keys_and_names_are_refused(pod: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        spec(pod=pod)


def test_a_dataset_token_needs_a_hub_dataset() -> None:
    with pytest.raises(ValidationError, match="tokenSecretRef applies only to a Hub dataset"):
        spec(dataset={"s3Uri": "s3://bucket/d.jsonl", "tokenSecretRef": {"name": "t", "key": "k"}})
