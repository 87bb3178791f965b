"""`dataset.maxSeqLength` against the model's position limit.

A sequence longer than a model's learned position table does not train: BERT (512 positions)
fails inside its embeddings with an index error on the first long row, while the default
maxSeqLength is 1024. The trainer clamps the length to the limit instead of failing late, and
says so in the log, in the run's final status message and in the manifest (`datasets.maxSeqLength`).
Models with relative or rotary positions and no hard table (BLOOM's ALiBi) have no limit here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Families whose position ids start after the padding index (fairseq heritage): the table
# holds `max_position_embeddings` rows but only `max_position_embeddings - padding_idx - 1`
# positions are usable.
_PADDED_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart"}


@dataclass(frozen=True)
class SeqLen:
    requested: int
    effective: int
    limit: int | None

    @property
    def clamped(self) -> bool:
        return self.effective < self.requested

    def warning(self) -> str | None:
        if not self.clamped:
            return None
        return (
            f"dataset.maxSeqLength {self.requested} is above the model's position limit "
            f"{self.limit}: clamped to {self.effective}"
        )

    def record(self) -> dict[str, Any]:
        return {"requested": self.requested, "effective": self.effective, "modelLimit": self.limit}


def position_limit(config: dict[str, Any]) -> int | None:
    """The longest sequence the model's position embeddings take (from its config.json), or
    None when unbounded. The tokenizer's `model_max_length` is not used: it is often a sentinel
    or out of date, and a user's explicit length should not shrink on its word."""
    if config.get("model_type") == "bloom":  # ALiBi: no position table
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            if key == "max_position_embeddings" and config.get("model_type") in _PADDED_POSITIONS:
                value -= int(config.get("pad_token_id") or 1) + 1
            return value
    return None


def resolve(requested: int, model_dir: Path) -> SeqLen:
    path = model_dir / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    limit = position_limit(config)
    effective = requested if limit is None else min(requested, limit)
    return SeqLen(requested=requested, effective=effective, limit=limit)
