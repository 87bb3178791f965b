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
    from kubetune_api.v1alpha1 import MethodSpec
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m4, path = _nf4_tiny_llama()
    assert isinstance(m4.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    method = MethodSpec.model_validate(
        {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    )
    torch.manual_seed(0)
    loaded = LoadedModel(m4, None, "llama", "llama", "bfloat16", True)
    quant: Any = apply(loaded, method, "causal-lm", str(path))
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


def _nf4_tiny_llama() -> tuple[Any, str]:
    from kubetune_trainer.testing import tiny
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = tiny.tiny_llama()
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, device_map={"": "cpu"}, dtype=torch.bfloat16
    )
    return model, str(path)


def _bytes_by_dtype(model: Any, trainable: bool | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in model.parameters():
        if trainable is None or p.requires_grad == trainable:
            key = str(p.dtype)
            out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def test_qlora_keeps_the_frozen_base_16_bit_and_the_trainable_weights_fp32() -> None:
    """The frozen embeddings, norms and LM head stay bf16 (peft's prepare_model_for_kbit_training
    would make them fp32: +2 GiB on an 8B model for weights nobody trains); LoRA A/B and the
    trainable copy of a modules_to_save head are fp32."""
    from kubetune_api.v1alpha1 import MethodSpec
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel
    from peft import prepare_model_for_kbit_training

    model, path = _nf4_tiny_llama()
    method = MethodSpec.model_validate({"type": "qlora", "lora": {"modulesToSave": ["lm_head"]}})
    peft_model: Any = apply(
        LoadedModel(model, None, "llama", "llama", "bfloat16", True), method, "causal-lm", path
    )
    base = peft_model.base_model.model
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.model.norm.weight.dtype == torch.bfloat16
    assert base.model.layers[0].input_layernorm.weight.dtype == torch.bfloat16
    trainable = {n: p.dtype for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}, trainable
    frozen = _bytes_by_dtype(peft_model, trainable=False)
    assert "torch.float32" not in frozen, frozen

    # The seed recipe's preparation on the same model: its frozen 16-bit weights double.
    other, _ = _nf4_tiny_llama()
    before = _bytes_by_dtype(other).get("torch.bfloat16", 0)
    assert before > 0
    prepared = prepare_model_for_kbit_training(other, use_gradient_checkpointing=False)
    upcast = _bytes_by_dtype(prepared, trainable=False)
    assert upcast.get("torch.float32", 0) == 2 * before and "torch.bfloat16" not in upcast


@pytest.mark.slow
def test_qlora_bf16_base_trains_with_finite_loss_and_moves_only_the_adapter() -> None:
    """A few optimizer steps on the bf16 + nf4 base as the trainer now prepares it: the loss is
    finite and falls on a repeated batch, and no frozen weight changes."""
    from kubetune_api.v1alpha1 import MethodSpec
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel

    model, path = _nf4_tiny_llama()
    method = MethodSpec.model_validate({"type": "qlora", "lora": {"dropout": 0.0}})
    torch.manual_seed(0)
    m: Any = apply(
        LoadedModel(model, None, "llama", "llama", "bfloat16", True), method, "causal-lm", path
    )
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 800, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), n
