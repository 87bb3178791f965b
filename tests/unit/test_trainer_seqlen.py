"""dataset.maxSeqLength against the model's position limit (seqlen.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune_trainer import seqlen


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "gpt2", "n_positions": 1024}, 1024),
        ({"model_type": "llama", "max_position_embeddings": 131072}, 131072),
        ({"model_type": "bloom"}, None),
        ({}, None),
    ],
)
def test_position_limit_per_family(config: dict[str, object], limit: int | None) -> None:
    assert seqlen.position_limit(config) == limit


def test_bert_with_the_default_length_is_clamped_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "max_position_embeddings": 512})
    )
    seq = seqlen.resolve(1024, tmp_path)
    assert (seq.effective, seq.clamped) == (512, True)
    assert seq.warning() == (
        "dataset.maxSeqLength 1024 is above the model's position limit 512: clamped to 512"
    )
    assert seq.record() == {"requested": 1024, "effective": 512, "modelLimit": 512}
    within = seqlen.resolve(256, tmp_path)
    assert (within.effective, within.clamped, within.warning()) == (256, False, None)
