"""QLoRA on CPU (bitsandbytes 0.50): the tiny Llama loads in nf4 and the LoRA gradients that
flow through the 4-bit layers match a float32 reference built from the dequantized weights,
also after an evaluation pass (bitsandbytes would otherwise repack the weights for its CPU
inference kernel, which has no backward; methods.keep_cpu_4bit_trainable prevents it)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")


def _models() -> tuple[Any, Any]:
    from kubetune_trainer.config import MethodSpec
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel
    from kubetune_trainer.testing import tiny
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = tiny.tiny_llama()
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    m4 = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, device_map={"": "cpu"}, dtype=torch.bfloat16
    )
    assert isinstance(m4.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    method = MethodSpec.model_validate(
        {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    )
    torch.manual_seed(0)
    loaded = LoadedModel(m4, None, "llama", "llama", "bfloat16", True)
    quant: Any = apply(loaded, method, "causal-lm", str(path), gradient_checkpointing=False)
    # reference: float32 model with the dequantized weights and the same adapter
    ref: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref_params = dict(ref.named_parameters())
    for name, module in quant.base_model.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            ref.get_submodule(name.replace(".base_layer", "")).weight.data.copy_(w.float())
    for qname, p in quant.base_model.model.named_parameters():
        name = qname.replace(".base_layer", "")
        if name in ref_params and p.shape == ref_params[name].shape and p.dtype.is_floating_point:
            ref_params[name].data.copy_(p.data.float())
    cfg = copy.deepcopy(quant.peft_config["default"])
    ref = get_peft_model(ref, LoraConfig(**{k: getattr(cfg, k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type")}))  # fmt: skip
    for (na, pa), (_, pb) in zip(quant.named_parameters(), ref.named_parameters(), strict=True):
        if pa.requires_grad:
            # give lora_B non-zero values so every adapter gets a gradient to compare
            pa.data.normal_(0, 0.02) if "lora_B" in na else None
            pb.data.copy_(pa.data.float())
    return quant, ref


@pytest.mark.slow
def test_cpu_qlora_gradients_match_dequantized_reference_after_eval() -> None:
    quant, ref = _models()
    x = torch.randint(0, 800, (4, 16), generator=torch.Generator().manual_seed(1))
    quant.eval()
    with torch.no_grad():
        quant(input_ids=x)  # an evaluation pass, as the trainer's baseline eval does
    quant.train()
    la = quant(input_ids=x, labels=x).loss
    la.backward()
    lb = ref(input_ids=x, labels=x).loss
    lb.backward()
    assert abs(la.item() - lb.item()) < 0.01
    grads = {n: p.grad for n, p in quant.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys() and len(grads) == 28  # 2 layers x 7 modules x A,B
    for name, g in grads.items():
        assert g is not None, name
        rel = float((g.float() - ref_grads[name]).norm() / ref_grads[name].norm())
        assert rel < 0.05, (name, rel)  # bf16 compute: ~1-2% measured
