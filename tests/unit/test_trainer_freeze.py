"""`method.freezeLayers` on every model family the examples use (BERT, Llama, Mistral, Qwen2,
BLOOM): after a real optimizer step the whole embedding stage and the lowest N layers are
byte-identical to the base, and everything above them trained. BERT's position and token-type
embeddings and its embedding LayerNorm used to train although the docs say "embeddings frozen"."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 64, "hidden_size": 16, "num_attention_heads": 2}


def bert() -> Any:
    cfg = transformers.BertConfig(**SMALL, intermediate_size=32, num_hidden_layers=3, num_labels=3)
    return transformers.BertForSequenceClassification(cfg), "bert.encoder.layer."


def decoder(family: str) -> Any:
    """A builder of a 3-layer `family` decoder (Llama, Mistral and Qwen2 share the shape)."""

    def build() -> Any:
        cfg = getattr(transformers, f"{family}Config")(
            **SMALL, intermediate_size=32, num_hidden_layers=3, num_key_value_heads=1,
            tie_word_embeddings=False,
        )  # fmt: skip
        return getattr(transformers, f"{family}ForCausalLM")(cfg), "model.layers."

    return build


def bloom() -> Any:
    cfg = transformers.BloomConfig(vocab_size=64, hidden_size=16, n_head=2, n_layer=3)
    return transformers.BloomForCausalLM(cfg), "transformer.h."


def layer_index(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".")[0])


@pytest.mark.parametrize(
    "build",
    [bert, decoder("Llama"), decoder("Mistral"), decoder("Qwen2"), bloom],
    ids=["bert", "llama", "mistral", "qwen2", "bloom"],
)
def test_freeze_layers_freezes_the_embedding_stage_and_the_lowest_layers(build: Any) -> None:
    from kubetune_trainer.methods import freeze_layers

    torch.manual_seed(0)
    model, prefix = build()
    model.train()
    freeze_layers(model, 1)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}

    ids = torch.randint(0, 64, (2, 8))
    if isinstance(model, transformers.BertForSequenceClassification):
        loss = model(
            input_ids=ids, token_type_ids=torch.ones_like(ids), labels=torch.tensor([0, 2])
        ).loss
    else:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()

    after = dict(model.named_parameters())
    first_layer = min(i for n in base if (i := layer_index(n, prefix)) is not None)
    names = list(base)
    first_layer_pos = next(k for k, n in enumerate(names) if layer_index(n, prefix) == first_layer)
    embedding_stage = names[:first_layer_pos]
    assert embedding_stage, "the model has an embedding stage before its layers"
    for n in embedding_stage:  # word/position/token-type embeddings, embedding norms
        assert torch.equal(after[n], base[n]), f"{n} trained but is below the frozen layers"
    for n in names:
        i = layer_index(n, prefix)
        if i == 0:
            assert torch.equal(after[n], base[n]), f"{n} is in frozen layer 0 but trained"
    top = [n for n in names if layer_index(n, prefix) == 2 and n.endswith("weight")]
    assert top and all(not torch.equal(after[n], base[n]) for n in top), "layer 2 did not train"
