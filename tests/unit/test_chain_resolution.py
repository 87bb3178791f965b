"""`spec.model.fromJob` resolution (chain.py), pure: wait, fail, refuse, or pin a base."""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import FineTuneJobSpec
from kubetune_operator import chain
from kubetune_operator.render import Owner, Run, trainer_config
from kubetune_operator.settings import OperatorSettings


def spec(**ref: Any) -> FineTuneJobSpec:
    method = ref.pop("method", "lora")
    return FineTuneJobSpec.model_validate(
        {
            "model": {"fromJob": {"name": "a", **ref}},
            "dataset": {"inline": [{"text": "x"}]},
            "method": {"type": method},
            "output": {"uri": "s3://bkt/out"},
        }
    )


def base(phase: str | None, method: str = "lora", **status: Any) -> dict[str, Any]:
    prefix = "s3://bkt/out/ns/a/1234abcd/run-2/"
    st: dict[str, Any] = {"phase": phase, "run": 2, **status}
    if phase == "Succeeded":
        st.setdefault(
            "artifacts",
            {
                "adapterUri": prefix + "adapter/",
                "mergedModelUri": prefix + "merged/",
                "manifestUri": prefix + "manifest.json",
                "manifestSha256": "ab" * 32,
            },
        )
    return {
        "metadata": {"name": "a", "namespace": "ns", "uid": "1234abcd-u"},
        "spec": {"model": {"hubId": "org/m", "revision": "v1"}, "method": {"type": method}},
        "status": st,
    }


def test_waits_while_the_base_is_missing_or_not_finished() -> None:
    for b in (None, base(None), base("Pending"), base("Running"), base("Suspended")):
        out = chain.resolve(spec(), "ns", b)
        assert isinstance(out, chain.Blocked) and out.waiting, b
        assert out.reason == "WaitingForBase" and "ns/a" in out.message


def test_a_failed_base_fails_the_chained_job_with_its_reason() -> None:
    failed = base(
        "Failed",
        message="bad row 3",
        conditions=[{"type": "Failed", "status": "True", "reason": "DatasetError"}],
    )
    out = chain.resolve(spec(), "ns", failed)
    assert isinstance(out, chain.Blocked) and not out.waiting
    assert out.reason == "BaseFailed"
    assert "ns/a" in out.message and "DatasetError" in out.message and "bad row 3" in out.message


def test_merged_base_pins_the_run_and_its_lineage() -> None:
    out = chain.resolve(spec(), "ns", base("Succeeded"))
    assert isinstance(out, chain.Base)
    prefix = "s3://bkt/out/ns/a/1234abcd/run-2/"
    assert out.model.s3_uri == prefix + "merged/" and out.adapter_uri is None
    assert out.lineage == {
        "namespace": "ns",
        "name": "a",
        "uid": "1234abcd-u",
        "run": 2,
        "artifact": "merged",
        "modelUri": prefix + "merged/",
        "manifestUri": prefix + "manifest.json",
        "manifestSha256": "ab" * 32,
    }
    cfg = trainer_config(
        spec(),
        Owner("ns", "b", "u-b"),
        Run(1, 1, "h", out),
        OperatorSettings(),
    )
    assert cfg.spec.model.s3_uri == prefix + "merged/" and cfg.spec.model.from_job is None
    assert cfg.lineage == out.lineage


def test_adapter_warm_start_continues_the_adapter_on_the_base_it_was_trained_on() -> None:
    out = chain.resolve(spec(artifact="adapter"), "ns", base("Succeeded"))
    assert isinstance(out, chain.Base)
    assert out.model.hub_id == "org/m" and out.model.revision == "v1"
    assert out.adapter_uri == "s3://bkt/out/ns/a/1234abcd/run-2/adapter/"
    # another method cannot continue that adapter
    out = chain.resolve(spec(artifact="adapter", method="ia3"), "ns", base("Succeeded"))
    assert isinstance(out, chain.Blocked) and out.reason == "InvalidSpec"
    assert "spec.method.type" in out.message and "lora" in out.message


def test_a_base_with_no_merged_model_names_the_fix() -> None:
    no_merge = base("Succeeded", method="prompt-tuning", artifacts={"adapterUri": "s3://bkt/x/"})
    out = chain.resolve(spec(), "ns", no_merge)
    assert isinstance(out, chain.Blocked) and not out.waiting
    assert "spec.model.fromJob.artifact" in out.message and "artifact: adapter" in out.message


def test_chained_base_of_a_chained_job_uses_its_lineage() -> None:
    b = base("Succeeded", lineage={"modelUri": "s3://bkt/z/merged/"})
    b["spec"]["model"] = {"fromJob": {"name": "z"}}
    out = chain.resolve(spec(artifact="adapter"), "ns", b)
    assert isinstance(out, chain.Base) and out.model.s3_uri == "s3://bkt/z/merged/"


def test_references_to_itself_or_other_namespaces() -> None:
    s = OperatorSettings()
    assert chain.check(spec(), "ns", "b", s) is None
    self_ref = chain.check(spec(), "ns", "a", s)
    assert self_ref is not None and "own base" in self_ref.message
    other = chain.check(spec(namespace="team-b"), "ns", "b", s)
    assert other is not None and other.reason == "BaseNotAllowed"
    assert "modelRefs.crossNamespace" in other.message
    allowed = OperatorSettings(allow_cross_namespace_model_refs=True)
    assert chain.check(spec(namespace="team-b"), "ns", "b", allowed) is None
    assert chain.reference(spec(namespace="team-b"), "ns") == ("team-b", "a")
