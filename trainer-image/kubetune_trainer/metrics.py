"""Evaluation metrics with numpy only: accuracy, macro F1, precision and recall for
classification, perplexity and exact match for causal LM.

Built in rather than Hugging Face `evaluate`: `evaluate.load("accuracy")` fetches the metric's
script from the Hub at run time, and trainer pods have no internet (docs/lifecycle.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    if labels.size == 0:
        return float("nan")
    return float((preds == labels).mean())


def _counts(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> list[tuple[int, int, int]]:
    """(tp, fp, fn) of every class present in labels or predictions."""
    out = []
    for c in range(num_labels):
        tp = int(np.sum((preds == c) & (labels == c)))
        fp = int(np.sum((preds == c) & (labels != c)))
        fn = int(np.sum((preds != c) & (labels == c)))
        if tp + fp + fn:  # a class absent everywhere is not part of the average
            out.append((tp, fp, fn))
    return out


def macro_f1(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in _counts(preds, labels, num_labels)]
    return float(np.mean(scores)) if scores else float("nan")


def macro_precision(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class precision; a class never predicted scores 0 (as
    scikit-learn's zero_division=0)."""
    scores = [
        tp / (tp + fp) if tp + fp else 0.0 for tp, fp, _ in _counts(preds, labels, num_labels)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def macro_recall(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class recall; a class absent from the labels scores 0."""
    scores = [
        tp / (tp + fn) if tp + fn else 0.0 for tp, _, fn in _counts(preds, labels, num_labels)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def normalize_answer(text: str) -> str:
    """What exact match compares: the text with surrounding whitespace trimmed and inner runs of
    whitespace collapsed to one space (case and punctuation count)."""
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The fraction of predictions equal to their reference after normalize_answer."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return float("nan")
    hits = sum(
        normalize_answer(p) == normalize_answer(r)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(references)


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
        return {
            "accuracy": accuracy(preds, labels),
            "f1": macro_f1(preds, labels, num_labels),
            "precision": macro_precision(preds, labels, num_labels),
            "recall": macro_recall(preds, labels, num_labels),
        }

    return compute
