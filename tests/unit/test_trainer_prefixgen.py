"""Prefix tuning and `generate()` with the pinned transformers 5 / peft: the model forwards
the KV cache as `cache`, peft injects the learned prefix as `past_key_values`, so a plain
`generate()` returns the base model's tokens (the first test shows the bug, and fails once an
upgrade fixes it: then prefixgen.py can go). `fix_prefix_generation` makes `generate()` agree
token for token with greedy decoding by full forward passes, which do use the prefix."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

NEW = 8


def models() -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32,
        num_hidden_layers=2, num_key_value_heads=1, pad_token_id=0,
    )  # fmt: skip
    base = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 64, (2, 6))
    base_tokens = base.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False
    )
    model = peft.get_peft_model(
        base, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with torch.no_grad():  # a "trained" prefix: far from its initialisation
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 5)
    return model.eval(), ids, base_tokens


def greedy_by_forward(model: Any, ids: Any) -> Any:
    x = ids
    with torch.no_grad():
        for _ in range(NEW):
            nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)
            x = torch.cat([x, nxt], 1)
    return x


def generate(model: Any, ids: Any) -> Any:
    return model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False
    )


def test_plain_generate_ignores_the_prefix_with_the_pinned_versions() -> None:
    model, ids, base_tokens = models()
    expected = greedy_by_forward(model, ids)
    assert not torch.equal(expected, base_tokens), "the prefix changes what the model says"
    assert torch.equal(generate(model, ids), base_tokens), (
        "generate() now honours the prefix without kubetune's workaround: drop prefixgen.py"
    )


def test_fixed_generate_uses_the_prefix() -> None:
    from kubetune_trainer.prefixgen import fix_prefix_generation

    model, ids, base_tokens = models()
    expected = greedy_by_forward(model, ids)
    fix_prefix_generation(model)
    fix_prefix_generation(model)  # idempotent
    got = generate(model, ids)
    assert torch.equal(got, expected)
    assert not torch.equal(got, base_tokens)


def test_the_trainer_applies_the_fix_to_prefix_tuning_models() -> None:
    from kubetune_api.v1alpha1 import MethodSpec
    from kubetune_trainer.methods import apply

    model, ids, _ = models()
    loaded = type("Loaded", (), {})()
    loaded.model = model.get_base_model()
    loaded.family, loaded.model_type = "llama", "llama"
    built = apply(loaded, MethodSpec.model_validate({"type": "prefix-tuning"}), "causal-lm", "/m")
    with torch.no_grad():
        for p in built.prompt_encoder.parameters():
            p.normal_(0, 5)
    built.eval()
    assert torch.equal(generate(built, ids), greedy_by_forward(built, ids))
