"""Secret references and tracking endpoints are opt-in (issue 12, floor 3): the pure checks."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.v1alpha1 import FineTuneJobSpec, Reason
from kubetune_operator import render
from kubetune_operator.render import RenderError
from kubetune_operator.settings import OperatorSettings

BASE: dict[str, Any] = {
    "model": {"hubId": "org/m", "tokenSecretRef": {"name": "hf-token", "key": "token"}},
    "dataset": {"inline": [{"text": "x"}]},
    "output": {"uri": "s3://bucket/o"},
    "tracking": {
        "reportTo": ["mlflow"],
        "mlflow": {
            "trackingUri": "https://mlflow.corp:5000",
            "tokenSecretRef": {"name": "ml-token", "key": "t"},
        },
    },
}


def spec(**over: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, **over})


def settings(**kw: Any) -> OperatorSettings:
    return OperatorSettings(**kw)


def refusal(s: FineTuneJobSpec, st: OperatorSettings, ns: str = "team-a") -> RenderError:
    with pytest.raises(RenderError) as e:
        render.check(s, "job", st, ns)
    return e.value


def test_every_secret_reference_is_found() -> None:
    assert render.secret_refs(spec()) == [
        ("model.tokenSecretRef", "hf-token"),
        ("tracking.mlflow.tokenSecretRef", "ml-token"),
    ]


def test_nothing_is_allowed_by_default_and_the_message_names_field_and_fix() -> None:
    e = refusal(spec(), settings(allowed_tracking_hosts=["mlflow.corp"]))
    assert e.reason == Reason.SECRET_NOT_ALLOWED
    assert e.message.startswith("spec.model.tokenSecretRef: Secret 'hf-token' is not in")
    assert "trainer.allowedSecrets" in e.message and "team-a/hf-token" in e.message


def test_allowed_by_name_or_by_namespace_and_name() -> None:
    ok = settings(
        allowed_secrets=["team-a/hf-token", "ml-token"], allowed_tracking_hosts=["mlflow.corp"]
    )
    render.check(spec(), "job", ok, "team-a")
    e = refusal(spec(), ok, "team-b")  # team-a's allowance is not team-b's
    assert "spec.model.tokenSecretRef" in e.message


def test_the_platforms_s3_secret_is_allowed_implicitly() -> None:
    st = settings(s3_credentials_secret="s3-creds")
    s = spec(model={"hubId": "org/m"}, tracking={},
             output={"uri": "s3://bucket/o", "credentialsSecretRef": {"name": "s3-creds"}})  # fmt: skip
    render.check(s, "job", st, "ns")
    other = spec(model={"hubId": "org/m"}, tracking={},
                 output={"uri": "s3://bucket/o", "credentialsSecretRef": {"name": "someone-elses"}})  # fmt: skip
    assert refusal(other, st).message.startswith("spec.output.credentialsSecretRef")


@pytest.mark.parametrize(
    ("allowed", "ok"),
    [
        ([], False),
        (["mlflow.corp"], True),
        (["MLFLOW.corp:5000"], True),
        (["mlflow.corp:443"], False),
    ],
)
def test_tracking_hosts(allowed: list[str], ok: bool) -> None:
    st = settings(allowed_secrets=["hf-token", "ml-token"], allowed_tracking_hosts=allowed)
    if ok:
        render.check(spec(), "job", st, "ns")
    else:
        e = refusal(spec(), st)
        assert e.reason == Reason.TRACKING_HOST_NOT_ALLOWED
        assert "spec.tracking.mlflow.trackingUri: host 'mlflow.corp'" in e.message


def test_an_s3_endpoint_that_would_get_the_operators_credentials_is_a_tracking_host() -> None:
    st = settings(s3_endpoint="http://minio.infra:9000")
    mine = spec(model={"hubId": "org/m"}, tracking={},
                output={"uri": "s3://bucket/o", "endpoint": "http://minio.infra:9000"})  # fmt: skip
    render.check(mine, "job", st, "ns")
    theirs = spec(model={"hubId": "org/m"}, tracking={},
                  output={"uri": "s3://bucket/o", "endpoint": "https://evil.example"})  # fmt: skip
    assert refusal(theirs, st).message.startswith("spec.output.endpoint: host 'evil.example'")
