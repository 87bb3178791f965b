"""The platform's guardrails at reconcile (issue 18, floor 4): the pure checks of
kubetune_operator.policy, through render.check as the reconcile calls it, and the settings the
chart's environment variables turn into."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_api.v1alpha1 import FineTuneJobSpec, Reason
from kubetune_operator import render
from kubetune_operator.render import RenderError
from kubetune_operator.settings import OperatorSettings

BASE: dict[str, Any] = {
    "model": {"hubId": "org/m"},
    "dataset": {"inline": [{"text": "x"}]},
    "output": {"uri": "s3://bucket/o"},
}


def spec(resources: dict[str, Any] | None = None, **over: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, "resources": resources or {}, **over})


def refusal(s: FineTuneJobSpec, st: OperatorSettings, ns: str = "team-a") -> RenderError:
    with pytest.raises(RenderError) as e:
        render.check(s, "job", st, ns)
    return e.value


def test_a_plain_spec_passes_the_default_guardrails() -> None:
    render.check(spec({"gpus": 1, "priorityClassName": "batch-low"}), "job", OperatorSettings())


def test_system_priority_classes_are_refused_by_default() -> None:
    e = refusal(spec({"priorityClassName": "system-node-critical"}), OperatorSettings())
    assert e.reason == Reason.PRIORITY_CLASS_NOT_ALLOWED
    assert e.message.startswith("spec.resources.priorityClassName: 'system-node-critical'")
    assert "guardrails.allowedPriorityClasses" in e.message


def test_an_allow_list_of_priority_classes_admits_only_its_names() -> None:
    st = OperatorSettings(allowed_priority_classes=["ml-low", "ml-high"])
    render.check(spec({"priorityClassName": "ml-high"}), "job", st)
    e = refusal(spec({"priorityClassName": "batch-low"}), st)
    assert e.reason == Reason.PRIORITY_CLASS_NOT_ALLOWED and "ml-low, ml-high" in e.message


def test_a_wildcard_toleration_is_refused_unless_allowed() -> None:
    wildcard = spec({"tolerations": [{"operator": "Exists"}]})
    e = refusal(wildcard, OperatorSettings())
    assert e.reason == Reason.TOLERATION_NOT_ALLOWED
    assert e.message.startswith("spec.resources.tolerations[0]: a toleration without a key")
    render.check(wildcard, "job", OperatorSettings(allow_wildcard_toleration=True))


def test_toleration_keys_outside_the_allow_list_are_refused() -> None:
    st = OperatorSettings(allowed_toleration_keys=["nvidia.com/gpu"])
    ok = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    render.check(spec({"tolerations": [ok]}), "job", st)
    bad = {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
    e = refusal(spec({"tolerations": [ok, bad]}), st)
    assert e.message.startswith("spec.resources.tolerations[1].key:")


@pytest.mark.parametrize(
    ("resources", "run_policy", "field"),
    [
        ({"gpus": 4}, {"activeDeadlineSeconds": 600}, "spec.resources.gpus: 4 is above"),
        ({"nodes": 2}, {"activeDeadlineSeconds": 600}, "spec.resources.nodes: 2 is above"),
        ({}, {}, "spec.runPolicy.activeDeadlineSeconds: unset is above"),
        ({}, {"activeDeadlineSeconds": 7200}, "spec.runPolicy.activeDeadlineSeconds: 7200"),
    ],
)
def test_namespace_limits_use_the_namespace_entry_else_the_default(
    resources: dict[str, Any], run_policy: dict[str, Any], field: str
) -> None:
    st = OperatorSettings(
        namespace_limits={
            "*": {"gpus": 2, "nodes": 1, "activeDeadlineSeconds": 3600},
            "team-llm": {"gpus": 8, "nodes": 4},
        }
    )
    s = spec(resources, runPolicy=run_policy)
    e = refusal(s, st, "team-a")
    assert e.reason == Reason.LIMIT_EXCEEDED and e.message.startswith(field)
    assert "guardrails.limits" in e.message
    render.check(s, "job", st, "team-llm")  # its own entry: no deadline limit, 8 GPUs, 4 nodes


def test_settings_read_the_limits_and_lists_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBETUNE_NAMESPACE_LIMITS", '{"*": {"gpus": 1}}')
    monkeypatch.setenv("KUBETUNE_IMAGE_OVERRIDE_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("KUBETUNE_ALLOW_WILDCARD_TOLERATION", "false")
    st = OperatorSettings()
    assert st.namespace_limits == {"*": {"gpus": 1}}
    assert st.image_override_namespaces == ["team-a", "team-b"]
    assert st.allow_wildcard_toleration is False


@pytest.mark.parametrize(
    ("over", "setting", "reason", "field"),
    [
        (
            {"resources": {"image": "ghcr.io/me/trainer:x"}},
            "image_override_namespaces",
            Reason.IMAGE_OVERRIDE_NOT_ALLOWED,
            "spec.resources.image:",
        ),
        (
            {"model": {"hubId": "org/m", "trustRemoteCode": True}},
            "trust_remote_code_namespaces",
            Reason.TRUST_REMOTE_CODE_NOT_ALLOWED,
            "spec.model.trustRemoteCode:",
        ),
    ],
)
def test_code_of_the_authors_choosing_runs_only_where_the_platform_allows(
    over: dict[str, Any], setting: str, reason: Reason, field: str
) -> None:
    s = FineTuneJobSpec.model_validate({**BASE, **over})
    e = refusal(s, OperatorSettings())
    assert e.reason == reason and e.message.startswith(field)
    render.check(s, "job", OperatorSettings(**{setting: ["team-a"]}), "team-a")
    refusal(s, OperatorSettings(**{setting: ["team-a"]}), "team-b")
    render.check(s, "job", OperatorSettings(**{setting: ["*"]}), "team-b")
