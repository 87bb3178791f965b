"""The trainer's speed decisions (kubetune_trainer.speed): pure rules, checked on CPU.

The GPU side (varlen kernels, Liger, throughput) is measured by bench/trainer_bench.py on an
H100; docs/benchmarks.md holds the numbers the defaults below rest on."""

from __future__ import annotations

import pytest
from kubetune_trainer import speed
from kubetune_trainer.speed import VARLEN_ATTENTION, Environment, SpeedPlan, plan

CPU = Environment()
H100 = Environment(cuda=True, capability=(9, 0), torch_varlen=True)
H100_ALL = Environment(
    cuda=True,
    capability=(9, 0),
    torch_varlen=True,
    packages=frozenset({"liger_kernel", "bitsandbytes"}),
)


def test_cpu_turns_everything_off() -> None:
    for method in ("full", "lora", "qlora", "prompt-tuning"):
        p = plan(CPU, method=method, model_type="llama", liger_requested=True)
        assert p.attn_implementation == "sdpa"
        assert not p.padding_free and not p.liger and not p.torch_compile
        assert p.sft_config_kwargs() == {"padding_free": False}
        assert p.model_init_kwargs() == {"attn_implementation": "sdpa"}


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "dora", "ia3", "bitfit"])
def test_h100_causal_lm_gets_varlen_and_padding_free(method: str) -> None:
    p = plan(H100_ALL, method=method, model_type="llama")
    assert p.attn_implementation == VARLEN_ATTENTION
    assert p.padding_free
    assert p.sft_config_kwargs() == {"padding_free": True}
    # Liger: on where installed and patchable (fewer launches in CPU-bound steps)
    assert p.liger
    assert not p.torch_compile
    assert p.expandable_segments


def test_flash_attn_package_preferred_over_torch_kernels() -> None:
    env = Environment(
        cuda=True, capability=(8, 0), torch_varlen=True, packages=frozenset({"flash_attn"})
    )
    assert plan(env, method="lora").attn_implementation == "flash_attention_2"


def test_old_gpu_or_no_varlen_stays_padded_sdpa() -> None:
    for env in (
        Environment(cuda=True, capability=(7, 5), torch_varlen=True),
        Environment(cuda=True, capability=(9, 0), torch_varlen=False),
    ):
        p = plan(env, method="lora", model_type="llama")
        assert p.attn_implementation == "sdpa"
        assert not p.padding_free


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_virtual_token_methods_keep_padded_batches(method: str) -> None:
    p = plan(H100_ALL, method=method, model_type="llama")
    assert p.attn_implementation == "sdpa"
    assert not p.padding_free


def test_classification_keeps_padded_sdpa() -> None:
    p = plan(H100_ALL, method="lora", task="sequence-classification", model_type="bert")
    assert p.attn_implementation == "sdpa"
    assert not p.padding_free
    assert not p.liger


def test_liger_by_default_where_installed_and_patchable() -> None:
    assert plan(H100_ALL, method="qlora", model_type="llama").liger
    assert plan(H100_ALL, method="qlora", model_type="mistral", liger_requested=True).liger
    assert not plan(H100_ALL, method="qlora", model_type="mistral", liger_requested=False).liger
    assert not plan(H100_ALL, method="qlora", model_type="gpt2").liger
    assert not plan(H100, method="qlora", model_type="llama").liger  # not installed
    off = plan(H100_ALL, method="lora", model_type="llama", liger_requested=False)
    assert "Liger kernels off (KUBETUNE_LIGER=0)" in off.reasons


def test_plan_is_pure_and_explains_itself() -> None:
    a = plan(H100_ALL, method="lora", model_type="llama")
    b = plan(H100_ALL, method="lora", model_type="llama")
    assert a == b
    d = a.as_dict()
    assert d["attn_implementation"] == VARLEN_ATTENTION and d["padding_free"] is True
    assert any("padding-free" in r for r in d["reasons"])
    assert any("Liger" in r for r in d["reasons"])


def test_prepare_falls_back_when_varlen_cannot_register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "register_varlen_attention", lambda: False)
    p = speed.prepare(plan(H100_ALL, method="lora", model_type="llama"))
    assert p.attn_implementation == "sdpa" and not p.padding_free
    assert "unavailable" in p.reasons[-1]
    sdpa = SpeedPlan()
    assert speed.prepare(sdpa) is sdpa


def test_configure_allocator_respects_user_setting() -> None:
    env: dict[str, str] = {}
    assert speed.configure_allocator(env)
    assert env[speed.ALLOC_CONF] == "expandable_segments:True"
    env = {speed.ALLOC_CONF: "max_split_size_mb:128"}
    assert not speed.configure_allocator(env)
    assert env[speed.ALLOC_CONF] == "max_split_size_mb:128"


def test_detect_environment_on_this_machine() -> None:
    env = speed.detect_environment()
    if not env.cuda:
        assert env.capability is None
        assert plan(env, method="lora").attn_implementation == "sdpa"


def test_cu_seqlens_from_position_ids() -> None:
    torch = pytest.importorskip("torch")
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = speed._cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 9]
    assert cu.dtype == torch.int32
    assert longest == 4


def test_cu_seqlens_computed_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer and every checkpoint recompute gets the same position_ids tensor: the host
    sync that reads the longest sequence happens once for it, and again only for a new batch
    or after the tensor changed in place."""
    torch = pytest.importorskip("torch")
    calls: list[object] = []
    real = speed._compute_cu_seqlens
    monkeypatch.setattr(speed, "_compute_cu_seqlens", lambda p: calls.append(p) or real(p))
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    for _ in range(64):
        cu, longest = speed._cu_seqlens_from_position_ids(pos)
    assert len(calls) == 1 and cu.tolist() == [0, 3, 5] and longest == 3
    pos[0, 3] = 3  # one sequence now: in-place change is seen
    cu, longest = speed._cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 5] and longest == 5 and len(calls) == 2
    other = torch.tensor([[0, 0, 1]])
    cu, longest = speed._cu_seqlens_from_position_ids(other)
    assert cu.tolist() == [0, 1, 3] and longest == 2 and len(calls) == 3


def test_varlen_attention_falls_back_to_causal_sdpa_off_gpu() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 16, generator=g) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True  # type: ignore[assignment]
    out, _ = speed.varlen_attention_forward(module, q, k, v, None, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
    # a 2D padding mask (what the flash-style mask function hands over) stays causal + padded
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out, _ = speed.varlen_attention_forward(module, q, k, v, mask, scaling=0.25)
    full = torch.ones(7, 7, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=0.25)
    assert torch.allclose(out[1, :5], ref.transpose(1, 2)[1, :5], atol=1e-5)


def test_truncate_tokenized_cuts_every_token_column() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3, 4, 5], [6, 7]],
            "completion_mask": [[0, 0, 1, 1, 1], [0, 1]],
            "text": ["a", "b"],
        }
    )
    out = speed.truncate_tokenized(ds, 3)
    assert out["input_ids"] == [[1, 2, 3], [6, 7]]
    assert out["completion_mask"] == [[0, 0, 1], [0, 1]]
    assert out["text"] == ["a", "b"]
    assert speed.truncate_tokenized(None, 3) is None
