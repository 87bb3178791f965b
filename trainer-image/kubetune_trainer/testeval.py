"""Scoring on dataset.test: the base model before training, the tuned model after, with the
metrics spec.evaluation asks for (or the task's defaults). The trainer's own evaluation loop
gives loss and the classification metrics (compute_metrics); perplexity is exp(loss); exact
match generates greedily from each prompt (at most evaluation.maxGenerationRows rows and
maxNewTokens tokens) and compares with the reference completion (metrics.exact_match).

Pure helpers first (which metrics, how they are read off the evaluation output, the side by
side table), the model-touching edge after them.
"""

from __future__ import annotations

import logging
from typing import Any

from kubetune_api.v1alpha1 import (
    DataFormat,
    EvaluationSpec,
    FineTuneJobSpec,
    Metric,
    default_metrics,
)

from .metrics import exact_match, perplexity

log = logging.getLogger(__name__)

PREFIX = "test"


def wanted(spec: FineTuneJobSpec) -> list[str]:
    """The metrics to compute on the test data: evaluation.metrics or the task's defaults,
    plus the promotion gate's metric."""
    ev = spec.evaluation or EvaluationSpec()
    names = [str(m) for m in (ev.metrics or default_metrics(str(spec.task)))]
    promote = spec.output.promote
    if promote is not None and str(promote.metric) not in names:
        names.append(str(promote.metric))
    return names


def from_evaluate(
    output: dict[str, Any], names: list[str], prefix: str = PREFIX
) -> dict[str, float]:
    """The wanted metrics read off Trainer.evaluate()'s output (keys `<prefix>_<name>`);
    perplexity is exp(loss). exactMatch is not there (it generates)."""
    out: dict[str, float] = {}
    loss = output.get(f"{prefix}_loss")
    for name in names:
        if name == Metric.PERPLEXITY:
            ppl = perplexity(loss if isinstance(loss, int | float) else None)
            if ppl is not None:
                out[name] = ppl
        elif name != Metric.EXACT_MATCH:
            v = output.get(f"{prefix}_{name}")
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[name] = float(v)
    return out


def side_by_side(base: dict[str, float], tuned: dict[str, float]) -> dict[str, dict[str, float]]:
    """status.evaluation: {metric: {base, tuned}} for every metric either side has."""
    out: dict[str, dict[str, float]] = {}
    for name in [*base, *(k for k in tuned if k not in base)]:
        pair = {
            k: v for k, v in (("base", base.get(name)), ("tuned", tuned.get(name))) if v is not None
        }
        out[name] = pair
    return out


def generation_pairs(rows: Any, fmt: str, tokenizer: Any, limit: int) -> list[tuple[str, str]]:
    """(prompt text, reference completion) of the first `limit` test rows: prompt-completion
    rows as they are; messages rows up to their last assistant turn, rendered with the chat
    template and its generation prompt."""
    out: list[tuple[str, str]] = []
    for row in rows:
        if len(out) >= limit:
            break
        if fmt == DataFormat.PROMPT_COMPLETION:
            out.append((str(row["prompt"]), str(row["completion"])))
        elif fmt == DataFormat.MESSAGES:
            turns = list(row["messages"])
            if not turns or turns[-1].get("role") != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(
                turns[:-1], tokenize=False, add_generation_prompt=True
            )
            out.append((str(prompt), str(turns[-1].get("content") or "")))
    return out


# ------------------------------------------------------------------------------ model edge


def generate_exact_match(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], max_new_tokens: int
) -> float:
    """Greedy generation from each prompt, one row at a time; the share equal to its reference."""
    import torch

    unwrapped = getattr(model, "module", model)
    device = next(unwrapped.parameters()).device
    was_training = unwrapped.training
    unwrapped.eval()
    predictions = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        with torch.no_grad():
            for prompt, _ in pairs:
                enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(device)
                out = unwrapped.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
                new = out[0, enc["input_ids"].shape[1] :]
                predictions.append(tokenizer.decode(new, skip_special_tokens=True))
    finally:
        if was_training:
            unwrapped.train()
    return exact_match(predictions, [ref for _, ref in pairs])


def score(
    trainer: Any,
    spec: FineTuneJobSpec,
    test_ready: Any,
    test_rows: Any,
    tokenizer: Any,
) -> dict[str, float]:
    """The wanted metrics of trainer.model on the test data (`test_ready`: as the trainer's
    evaluation takes it; `test_rows`: the normalised rows, for generation)."""
    names = wanted(spec)
    output = trainer.evaluate(eval_dataset=test_ready, metric_key_prefix=PREFIX)
    out = from_evaluate(output, names)
    if Metric.EXACT_MATCH in names:
        ev = spec.evaluation or EvaluationSpec()
        pairs = generation_pairs(
            test_rows, str(spec.dataset.format), tokenizer, ev.max_generation_rows
        )
        if pairs:
            out[Metric.EXACT_MATCH.value] = generate_exact_match(
                trainer.model, tokenizer, pairs, ev.max_new_tokens
            )
    return out
