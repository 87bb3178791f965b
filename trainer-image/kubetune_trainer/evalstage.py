"""The pipeline's evaluation stage: dataset.test scored by the base model before training and
by the tuned model after it (testeval.py, run inside train.run), then the side-by-side table,
the promotion gate (promotion.py) and the line the status message carries.

pipeline.py calls `test_data` before training, `Scores.record` after it, and `Scores.judge`
once the artifacts are saved; `Verdict.promote` after the upload moves the pointer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import TrainerConfig

from . import promotion, testeval


def test_data(trainer: Any, spec: Any, prepared: Any, tokenizer: Any) -> tuple[Any, ...] | None:
    """What train.run needs to score dataset.test, or None when the spec has no test split."""
    if prepared.test is None:
        return None
    from . import train

    return train.test_ready(trainer, spec, prepared, tokenizer), prepared.test, tokenizer


@dataclass(frozen=True)
class Scores:
    """dataset.test metrics of the base and the tuned model (empty without a test split)."""

    base: dict[str, float]
    tuned: dict[str, float]

    def record(self, metrics: dict[str, Any]) -> None:
        """Into the run's metrics: test_<name> for the tuned model, base_test_<name> for the
        base."""
        metrics.update({f"test_{k}": v for k, v in self.tuned.items()})
        metrics.update({f"base_test_{k}": v for k, v in self.base.items()})

    def judge(self, s3: Any, cfg: TrainerConfig, scored: bool) -> Verdict:
        """The side-by-side table and the gate's decision (None without output.promote);
        nothing when the run had no test split to score."""
        if not scored:
            return Verdict(self, {}, None)
        return Verdict(
            self, testeval.side_by_side(self.base, self.tuned), promotion.gate(s3, cfg, self.tuned)
        )


@dataclass(frozen=True)
class Verdict:
    scores: Scores
    evaluation: dict[str, dict[str, float]]
    decision: promotion.Decision | None

    def promotion_status(self) -> dict[str, Any] | None:
        return self.decision.as_status() if self.decision is not None else None

    def promote(self, s3: Any, cfg: TrainerConfig, artifacts: dict[str, Any]) -> None:
        """After the artifacts and the manifest: the pointer moves in one PUT (promoted only)."""
        if self.decision is not None and self.decision.promoted:
            promotion.write_pointer(s3, cfg, self.decision, artifacts, self.scores.tuned)

    def summary(self, metrics: dict[str, Any]) -> str:
        """The headline metrics, then the gate's message: the tail of the status message."""
        text = ", ".join(
            f"{k} {metrics[k]:.4g}"
            for k in ("eval_loss", "perplexity", "eval_accuracy", "eval_f1", "train_loss")
            if isinstance(metrics.get(k), float)
        )
        if self.decision is None:
            return text
        return f"{text}; {self.decision.message}" if text else self.decision.message
