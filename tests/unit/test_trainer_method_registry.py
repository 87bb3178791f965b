"""The method registry: one record per MethodType in the API (the facts) and one in the trainer
(PEFT config builder, model preparation). A method type without a record fails here, before a
run would hit a KeyError."""

from __future__ import annotations

import pytest
from kubetune_api.v1alpha1 import (
    METHODS,
    LoadDtype,
    MethodSpec,
    MethodType,
    method_record,
    methods_where,
)
from kubetune_trainer.methods import IMPLEMENTATIONS
from pydantic import ValidationError

M = MethodType


@pytest.mark.parametrize("t", list(MethodType))
def test_every_method_type_has_both_records(t: MethodType) -> None:
    assert t in METHODS, f"kubetune_api.v1alpha1.METHODS has no record for {t.value}"
    assert t in IMPLEMENTATIONS, f"kubetune_trainer.methods.IMPLEMENTATIONS has none for {t.value}"
    assert METHODS[t].type == t


def test_no_record_for_an_unknown_type() -> None:
    assert set(METHODS) == set(IMPLEMENTATIONS) == set(MethodType)
    with pytest.raises(ValueError):
        method_record("rlhf")


@pytest.mark.parametrize("t", list(MethodType))
def test_adapters_and_only_adapters_have_a_peft_builder(t: MethodType) -> None:
    record, impl = METHODS[t], IMPLEMENTATIONS[t]
    assert (impl.peft_config is not None) == record.adapter
    # Something must make the model trainable: a PEFT wrapper or a preparation (full, bitfit).
    assert impl.peft_config is not None or impl.prepare is not None
    if not record.adapter:
        assert not record.mergeable and not record.virtual_tokens and not record.quantized_base


@pytest.mark.parametrize("t", list(MethodType))
def test_settings_fields_exist_and_get_defaults(t: MethodType) -> None:
    resolved = MethodSpec(type=t).resolved()
    for name in METHODS[t].settings:
        assert name in MethodSpec.model_fields
        assert getattr(resolved, name) is not None, f"{t.value}: {name} has no default"
    others = {"lora", "quantization", "prompt_tuning", "prefix_tuning", "ia3"}
    for name in others - set(METHODS[t].settings):
        assert getattr(resolved, name) is None


def test_the_facts_the_trainer_relied_on() -> None:
    """The sets the registry replaced (save.MERGEABLE, pipeline.NO_MERGE, the API's
    LORA/ADAPTER/PROMPT_METHODS, speed's virtual-token methods, oom's hint) are unchanged."""
    assert set(methods_where(adapter=True)) == {
        M.LORA, M.QLORA, M.DORA, M.PROMPT_TUNING, M.PREFIX_TUNING, M.IA3
    }  # fmt: skip
    assert set(methods_where(adapter=True, mergeable=True)) == {M.LORA, M.QLORA, M.DORA, M.IA3}
    assert set(methods_where(virtual_tokens=True)) == {M.PROMPT_TUNING, M.PREFIX_TUNING}
    assert set(methods_where(quantized_base=True)) == {M.QLORA}
    assert set(methods_where(trains_all_weights=True)) == {M.FULL}
    assert set(methods_where(load_dtype=LoadDtype.FLOAT32)) == {M.FULL, M.BITFIT}
    assert {t for t, r in METHODS.items() if "lora" in r.settings} == {M.LORA, M.QLORA, M.DORA}
    assert set(methods_where(oom_suggests_qlora=True)) == {M.FULL, M.LORA, M.DORA}


@pytest.mark.parametrize("t", list(MethodType))
def test_the_crd_rules_accept_exactly_the_settings_of_the_record(t: MethodType) -> None:
    """The CEL rules on spec.method (evaluated by the models) and the record's settings agree:
    a new method type with LoRA settings needs both updated."""
    for name in ("lora", "quantization", "prompt_tuning", "prefix_tuning", "ia3"):
        wire = MethodSpec.model_fields[name].alias or name
        allowed = name in METHODS[t].settings
        try:
            MethodSpec.model_validate({"type": t.value, wire: {}})
        except ValidationError as e:
            assert not allowed, f"{t.value} refused its own {wire}: {e}"
        else:
            assert allowed, f"{t.value} accepted {wire}, which its record does not list"
