"""Warm start (`spec.model.fromJob` with `artifact: adapter`): the trainer loads the base job's
adapter trainable instead of a fresh one, training moves it on from where it was, and an
adapter of another method is refused naming spec.method.type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def tiny() -> Any:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32,
        num_hidden_layers=2, num_key_value_heads=1,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def loaded(model: Any) -> Any:
    out = type("Loaded", (), {})()
    out.model, out.family, out.model_type = model, "llama", "llama"
    return out


def saved_adapter(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    model = peft.get_peft_model(tiny(), peft.LoraConfig(task_type="CAUSAL_LM", r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    model.save_pretrained(tmp_path / "adapter")
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return tmp_path / "adapter", state


def test_warm_start_continues_the_saved_adapter(tmp_path: Path) -> None:
    from kubetune_api.v1alpha1 import MethodSpec
    from kubetune_trainer.methods import apply

    adapter, before = saved_adapter(tmp_path)
    model = apply(loaded(tiny()), MethodSpec(), "causal-lm", "/m", warm_start=adapter)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert set(lora) == set(before)
    assert all(torch.equal(lora[n], before[n]) for n in lora), "the adapter's weights"
    assert all(p.requires_grad for p in lora.values()), "the adapter keeps training"
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    assert any(not torch.equal(lora[n], before[n]) for n in lora if "lora_A" in n)


def test_warm_start_refuses_an_adapter_of_another_method(tmp_path: Path) -> None:
    from kubetune_api.v1alpha1 import ConfigError, MethodSpec
    from kubetune_trainer.methods import apply

    adapter, _ = saved_adapter(tmp_path)
    with pytest.raises(ConfigError, match=r"spec\.method\.type.*LORA"):
        apply(
            loaded(tiny()),
            MethodSpec.model_validate({"type": "ia3"}),
            "causal-lm",
            "/m",
            warm_start=adapter,
        )
