"""Make `generate()` honour a prefix-tuning adapter with the pinned transformers and peft.

transformers 5 hands the KV cache to `prepare_inputs_for_generation` and to `forward` as
`cache`; peft (0.21) looks for it, and injects the learned prefix, under `past_key_values`.
peft then sees no cache, builds the prefix cache under `past_key_values`, and the model, given
both, uses `cache` (empty) and ignores the prefix with a FutureWarning: `generate()` returns
exactly the base model's tokens, while `forward()` (and so training and loss-based evaluation)
does use the prefix. tests/unit/test_trainer_prefixgen.py shows both.

`fix_prefix_generation(model)` renames `cache` to `past_key_values` between the base model's
`prepare_inputs_for_generation` and peft's injection, so peft fills the prefix into the very
cache object that generation then keeps extending. A no-op for other adapters and for versions
without the split. Users loading a kubetune prefix-tuning adapter for generation call it too
(docs/lifecycle.md, "Prefix tuning and generate()").
"""

from __future__ import annotations

from typing import Any

_MARK = "_kubetune_prefix_generation_fixed"


def fix_prefix_generation(model: Any) -> Any:
    """Patch a peft `PeftModelForCausalLM` with a prefix-tuning adapter in place; return it."""
    config = getattr(model, "active_peft_config", None)
    if config is None or str(getattr(config, "peft_type", "")) not in (
        "PREFIX_TUNING",
        "PeftType.PREFIX_TUNING",
    ):
        return model
    if getattr(model, _MARK, False):
        return model
    base_prepare = model.base_model_prepare_inputs_for_generation

    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if "cache" in kwargs and "past_key_values" not in kwargs:
            kwargs["past_key_values"] = kwargs.pop("cache")
        out: dict[str, Any] = base_prepare(*args, **kwargs)
        if "cache" in out:
            cache = out.pop("cache")
            if out.get("past_key_values") is None:
                out["past_key_values"] = cache
        return out

    model.base_model_prepare_inputs_for_generation = prepare
    setattr(model, _MARK, True)
    return model
