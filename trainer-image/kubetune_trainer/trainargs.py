"""Pure translation of the spec into transformers TrainingArguments / trl SFTConfig keyword
arguments (unit-tested without building a model)."""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import (
    ConfigError,
    DataFormat,
    Direction,
    FineTuneJobSpec,
    Metric,
    Optimizer,
    Strategy,
    TaskType,
    default_learning_rate,
    direction_of,
)

OPTIMIZERS = {
    Optimizer.ADAMW_TORCH: "adamw_torch",
    Optimizer.ADAMW_TORCH_FUSED: "adamw_torch_fused",
    Optimizer.ADAMW_8BIT: "adamw_bnb_8bit",
    Optimizer.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    Optimizer.PAGED_ADAMW_32BIT: "paged_adamw_32bit",
    Optimizer.ADAFACTOR: "adafactor",
    Optimizer.SGD: "sgd",
}
GPU_OPTIMIZERS = {Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW_32BIT}


def greater_is_better(metric: str, explicit: bool | None) -> bool:
    return explicit if explicit is not None else not metric.endswith("loss")


def best_model_compatible(h: Any) -> bool:
    """Whether load_best_model_at_end can be on: checkpoints at evaluation points."""
    if h.save_strategy == Strategy.NO or h.save_strategy != h.eval_strategy:
        return False
    if h.save_strategy == Strategy.STEPS:
        return bool(h.eval_steps and h.save_steps and h.save_steps % h.eval_steps == 0)
    return True


def training_kwargs(
    spec: FineTuneJobSpec,
    *,
    output_dir: str,
    precision: str,
    cuda: bool,
    has_eval: bool,
    run_name: str,
    report_to: list[str],
) -> dict[str, Any]:
    """Arguments shared by TrainingArguments (classification) and SFTConfig (causal LM)."""
    h = spec.hyperparameters
    opt = Optimizer(h.optimizer)
    if opt in GPU_OPTIMIZERS and not cuda:
        raise ConfigError(f"hyperparameters.optimizer {opt.value} needs a GPU; use adamw_torch")
    eval_strategy = Strategy(h.eval_strategy) if has_eval else Strategy.NO
    kw: dict[str, Any] = {
        "output_dir": output_dir,
        "run_name": run_name,
        "report_to": report_to or "none",
        "num_train_epochs": h.epochs,
        "max_steps": h.max_steps if h.max_steps is not None else -1,
        "learning_rate": learning_rate(spec),
        "lr_scheduler_type": str(h.lr_scheduler),
        "per_device_train_batch_size": h.batch_size,
        "per_device_eval_batch_size": h.eval_batch_size or h.batch_size,
        "gradient_accumulation_steps": h.gradient_accumulation_steps,
        "weight_decay": h.weight_decay,
        "max_grad_norm": h.max_grad_norm,
        "seed": h.seed,
        "data_seed": spec.dataset.shuffle_seed if spec.dataset.shuffle_seed is not None else h.seed,
        "optim": OPTIMIZERS[opt],
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not cuda,
        "activation_checkpointing": h.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if h.gradient_checkpointing
        else None,
        "eval_strategy": eval_strategy.value,
        "save_strategy": str(h.save_strategy),
        "save_total_limit": h.save_total_limit,
        "logging_strategy": "steps",
        "logging_steps": h.logging_steps,
        "logging_first_step": True,
        # NaN/inf must surface (the trainer stops with NonFiniteLoss), not be averaged away.
        "logging_nan_inf_filter": False,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
        "save_only_model": False,
        "push_to_hub": False,
    }
    # warmup: transformers 5 takes a ratio as a float below 1 in warmup_steps.
    if h.warmup_steps is not None:
        kw["warmup_steps"] = h.warmup_steps
    elif h.warmup_ratio is not None and h.warmup_ratio > 0:
        kw["warmup_steps"] = min(float(h.warmup_ratio), 0.999)
    if h.save_strategy == Strategy.STEPS:
        kw["save_steps"] = h.save_steps
    if eval_strategy == Strategy.STEPS:
        kw["eval_steps"] = h.eval_steps
    if h.group_by_length:
        kw["train_sampling_strategy"] = "group_by_length"
    if h.early_stopping is not None and has_eval:
        es = h.early_stopping
        kw["metric_for_best_model"] = es.metric
        kw["greater_is_better"] = greater_is_better(es.metric, es.greater_is_better)
        kw["load_best_model_at_end"] = best_model_compatible(h)
    kw.update(best_checkpoint_kwargs(spec, has_eval))
    return kw


def best_checkpoint_kwargs(spec: FineTuneJobSpec, has_eval: bool) -> dict[str, Any]:
    """evaluation.bestCheckpoint: evaluate and checkpoint at the end of every epoch (aligned, as
    load_best_model_at_end needs) and load the best epoch's weights when training ends, so
    the saved artifact is the best checkpoint's. Perplexity ranks as its loss does."""
    best = spec.evaluation.best_checkpoint if spec.evaluation is not None else None
    if best is None or not has_eval:
        return {}
    metric = str(best.metric)
    direction = direction_of(metric, best.direction)
    key = "loss" if metric in (Metric.LOSS, Metric.PERPLEXITY) else metric
    return {
        "eval_strategy": Strategy.EPOCH.value,
        "save_strategy": Strategy.EPOCH.value,
        "metric_for_best_model": f"eval_{key}",
        "greater_is_better": direction == Direction.MAXIMIZE,
        "load_best_model_at_end": True,
    }


def sft_kwargs(spec: FineTuneJobSpec, *, padding_free: bool = False) -> dict[str, Any]:
    """trl SFTConfig fields on top of `training_kwargs`. `padding_free` comes from the speed
    plan (only with a varlen attention; see speed.py)."""
    d = spec.dataset
    fmt = DataFormat(d.format)
    return {
        # Padding-free without packing: trl refuses max_length; train.build_trainer truncates
        # the tokenized rows itself (speed.truncate_tokenized).
        "max_length": None if padding_free and not d.packing else d.max_seq_length,
        "dataset_text_field": "text",
        "packing": d.packing,
        # best-fit decreasing: whole rows packed per sequence (trl makes it padding-free)
        "packing_strategy": "bfd",
        "padding_free": padding_free,
        "completion_only_loss": d.completion_only_loss
        if fmt == DataFormat.PROMPT_COMPLETION
        else None,
        "assistant_only_loss": bool(d.assistant_only_loss and fmt == DataFormat.MESSAGES),
        "dataset_num_proc": None,
    }


def is_classification(spec: FineTuneJobSpec) -> bool:
    return TaskType(spec.task) == TaskType.SEQUENCE_CLASSIFICATION


def is_preference(spec: FineTuneJobSpec) -> bool:
    return TaskType(spec.task) == TaskType.PREFERENCE


def learning_rate(spec: FineTuneJobSpec) -> float:
    """hyperparameters.learningRate, or the method's default (default_learning_rate)."""
    if spec.hyperparameters.learning_rate is not None:
        return spec.hyperparameters.learning_rate
    return default_learning_rate(str(spec.method.type), str(spec.task))
