"""Accumulation folding (accumulation.fold_accumulation): the decision, and that a folded optimizer
step computes the gradients of the user's split, on CPU with the tiny Llama."""

from __future__ import annotations

import pytest
from kubetune_trainer import accumulation as speed

MISTRAL_7B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "vocab_size": 32000,
}
P7B = 7_241_732_096
H200 = 143_771 * 2**20


def fold(**kw: object) -> speed.Fold:
    args: dict[str, object] = {
        "batch_size": 4,
        "grad_accum": 4,
        "padding_free": True,
        "max_seq_length": 1024,
        "shape": MISTRAL_7B,
        "parameters": P7B,
        "method": "qlora",
        "checkpointing": True,
        "gpu_memory": H200,
    }
    args.update(kw)
    return speed.fold_accumulation(**args)  # type: ignore[arg-type]


def test_folds_to_one_micro_batch_when_memory_allows() -> None:
    f = fold()
    assert (f.micro_batch, f.accumulation, f.factor) == (16, 1, 4)
    assert "4 x 4 -> 16 x 1" in f.reason and "same 16 rows" in f.reason
    assert f.as_dict()["perDeviceBatchSize"] == 16


def test_fold_factor_divides_the_accumulation_and_respects_the_budget() -> None:
    # Without checkpointing a 7B layer stack keeps every layer's internals: even on an H200 only
    # part of a 4 x 6 step folds (4 x 6 -> 12 x 2), and the factor always divides it.
    f = fold(method="lora", checkpointing=False, grad_accum=6)
    assert (f.micro_batch, f.accumulation, f.factor) == (12, 2, 3)
    per_token = speed.activation_bytes_per_token(MISTRAL_7B, checkpointing=False)
    assert f.micro_batch * 1024 * per_token <= H200 * 0.8 - P7B * 2
    assert (f.micro_batch * 2) * 1024 * per_token > H200 * 0.8 - P7B * 2
    # Nothing fits: kept, with the reason.
    small = fold(gpu_memory=8 * 2**30, method="lora", checkpointing=False)
    assert (small.micro_batch, small.accumulation, small.factor) == (4, 4, 1)
    assert "would not fit" in small.reason


@pytest.mark.parametrize(
    "kw",
    [
        {"grad_accum": 1},
        {"padding_free": False},
        {"gpu_memory": None},
        {"parameters": None},
    ],
)
def test_kept_as_the_spec_splits_it(kw: dict[str, object]) -> None:
    f = fold(**kw)
    assert f.factor == 1
    assert (f.micro_batch, f.accumulation) == (4, kw.get("grad_accum", 4))


def _grads(model: object, micro_batches: list[dict], num_items: int) -> dict[str, object]:
    import torch

    model.zero_grad()  # type: ignore[attr-defined]
    for mb in micro_batches:
        out = model(**mb, num_items_in_batch=torch.tensor(num_items))  # type: ignore[operator]
        out.loss.backward()
    return {
        n: p.grad.detach().clone()
        for n, p in model.named_parameters()  # type: ignore[attr-defined]
        if p.grad is not None
    }


def test_folded_step_has_the_gradients_of_the_users_split() -> None:
    """Eight rows of uneven length, padding-free (trl's collator: one row, position_ids restart
    per sequence), as 4 micro-batches of 2 against 1 of 8: the same loss normalization (the
    step's token count, as trl's num_items_in_batch) and the same gradients."""
    import torch
    from kubetune_trainer.testing.tiny import tiny_llama
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama(), dtype=torch.float32)
    model.config.use_cache = False
    vocab = model.config.vocab_size
    lengths = [5, 17, 9, 30, 3, 12, 21, 8]
    rows = [{"input_ids": torch.randint(3, vocab, (n,)).tolist()} for n in lengths]
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    split = [collate(rows[i : i + 2]) for i in range(0, 8, 2)]
    folded = [collate(rows)]
    assert "position_ids" in folded[0] and folded[0]["input_ids"].shape[0] == 1
    items = sum(int((mb["labels"][..., 1:] != -100).sum()) for mb in split)
    assert items == int((folded[0]["labels"][..., 1:] != -100).sum())

    g_split = _grads(model, split, items)
    g_fold = _grads(model, folded, items)
    assert g_split.keys() == g_fold.keys() and g_split
    for name, g in g_split.items():
        torch.testing.assert_close(g_fold[name], g, rtol=1e-4, atol=1e-6, msg=name)

    # The same rows split differently *with* the wrong normalization (per micro-batch mean)
    # would differ: the check can fail.
    model.zero_grad()
    for mb in split:
        model(**mb).loss.backward()
    wrong = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(not torch.allclose(wrong[n], g_fold[n], rtol=1e-3) for n in g_fold)
