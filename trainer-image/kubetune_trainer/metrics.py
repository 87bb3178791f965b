"""Evaluation metrics with numpy only: accuracy and macro F1 for classification, perplexity
for causal LM."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    if labels.size == 0:
        return float("nan")
    return float((preds == labels).mean())


def macro_f1(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(num_labels):
        tp = int(np.sum((preds == c) & (labels == c)))
        fp = int(np.sum((preds == c) & (labels != c)))
        fn = int(np.sum((preds != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue  # class absent everywhere: not part of the average
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def perplexity(eval_loss: float | None) -> float | None:
    if eval_loss is None or not math.isfinite(eval_loss):
        return None
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return float("inf")


def classification_metrics(num_labels: int) -> Any:
    """A `compute_metrics` for transformers' Trainer."""

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        preds = np.asarray(logits).argmax(axis=-1)
        labels = np.asarray(labels)
        return {"accuracy": accuracy(preds, labels), "f1": macro_f1(preds, labels, num_labels)}

    return compute
