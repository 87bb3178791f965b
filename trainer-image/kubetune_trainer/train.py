"""Stage `train`: build the trainer (trl SFTTrainer for causal LM, transformers Trainer for
classification), resume from the newest complete S3 checkpoint, train, evaluate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import FineTuneJobSpec, NonFiniteLoss, PreferenceSpec

from .callbacks import (
    ConsoleLogCallback,
    ProgressCallback,
    S3CheckpointCallback,
    Throughput,
    noisy,
)
from .checkpoints import CheckpointStore
from .data import Prepared, tokenize_classification
from .metrics import classification_metrics, perplexity
from .progress import ProgressReporter
from .trainargs import is_classification, is_preference, sft_kwargs, training_kwargs

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """Mixin: stop at the first step whose loss is NaN or infinite (before the optimizer
    applies it and before a checkpoint can save poisoned weights)."""

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        if not bool(torch.isfinite(loss.detach()).all()):
            step = self.state.global_step + 1  # type: ignore[attr-defined]
            raise NonFiniteLoss(
                f"training loss is {float(loss.detach().float().mean())} at step {step}: lower "
                "hyperparameters.learningRate, check the data and the base model's weights, or "
                "use precision bf16/fp32 instead of fp16"
            )
        return loss


def _sft_trainer_class() -> Any:
    from trl import SFTTrainer

    class GuardedSFTTrainer(NonFiniteGuard, SFTTrainer):
        pass

    return GuardedSFTTrainer


def _preference_trainer_class(algorithm: str) -> tuple[Any, Any]:
    """(trainer class, config class) for task preference: trl's DPO or ORPO."""
    trainer: Any
    config: Any
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer, config = ORPOTrainer, ORPOConfig
    else:
        from trl import DPOConfig, DPOTrainer

        trainer, config = DPOTrainer, DPOConfig

    class GuardedPreferenceTrainer(NonFiniteGuard, trainer):
        pass

    return GuardedPreferenceTrainer, config


def _trainer_class() -> Any:
    from transformers import Trainer

    class GuardedTrainer(NonFiniteGuard, Trainer):
        pass

    return GuardedTrainer


# trl's preference metrics under the names kubetune reports (status.metrics, metrics.json):
# the mean chosen-minus-rejected implicit reward, and how often chosen wins.
PREFERENCE_METRICS = {
    "eval_rewards/margins": "reward_margin",
    "eval_rewards/accuracies": "reward_accuracy",
}


@dataclass
class TrainResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    trainer: Any = None
    base_test: dict[str, float] = field(default_factory=dict)  # dataset.test, before training
    tuned_test: dict[str, float] = field(default_factory=dict)  # and after
    best_checkpoint: str | None = None  # evaluation.bestCheckpoint: the epoch exported
    warnings: list[str] = field(default_factory=list)


def test_ready(trainer: Any, spec: FineTuneJobSpec, data: Prepared, tokenizer: Any) -> Any:
    """dataset.test in the form the trainer's evaluation takes: tokenized for classification;
    for trl's trainers the rows (their evaluate() tokenizes a dataset passed to it), except
    padding-free without packing, where it is tokenized and truncated here as build_trainer
    does the validation rows."""
    if data.test is None:
        return None
    if is_classification(spec):
        return tokenize_classification(data.test, tokenizer, spec.dataset.max_seq_length)
    if is_preference(spec) or not getattr(trainer.args, "padding_free", False):
        return data.test
    if spec.dataset.packing:
        return data.test
    from .speed import truncate_tokenized

    ready = trainer._prepare_dataset(
        data.test, trainer.processing_class, trainer.args, False, None, "test"
    )
    return truncate_tokenized(ready, spec.dataset.max_seq_length)


def build_trainer(
    spec: FineTuneJobSpec,
    model: Any,
    tokenizer: Any,
    data: Prepared,
    *,
    output_dir: Path,
    precision: str,
    cuda: bool,
    run_name: str,
    report_to: list[str],
    padding_free: bool,
    extra_args: dict[str, Any] | None = None,
) -> Any:
    """`extra_args`: TrainingArguments the distribution sets (distribute.training_kwargs and
    the per-process batch split); they win over the spec's translation."""
    has_eval = data.eval is not None
    kw = training_kwargs(
        spec,
        output_dir=str(output_dir),
        precision=precision,
        cuda=cuda,
        has_eval=has_eval,
        run_name=run_name,
        report_to=report_to,
    )
    kw.update(extra_args or {})
    if is_classification(spec):
        from transformers import DataCollatorWithPadding, TrainingArguments

        assert spec.classification is not None
        max_len = spec.dataset.max_seq_length
        train = tokenize_classification(data.train, tokenizer, max_len)
        evald = tokenize_classification(data.eval, tokenizer, max_len) if has_eval else None
        return _trainer_class()(
            model=model,
            args=TrainingArguments(**kw),
            train_dataset=train,
            eval_dataset=evald,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=classification_metrics(spec.classification.count),
        )
    if is_preference(spec):
        pref = spec.preference or PreferenceSpec()
        trainer_cls, config_cls = _preference_trainer_class(str(pref.algorithm))
        kw.update(beta=pref.beta, max_length=spec.dataset.max_seq_length)
        # A PeftModel is its own reference (the adapter disabled); a full model gets a frozen
        # copy of the base from trl.
        return trainer_cls(
            model=model,
            args=config_cls(**kw),
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
        )
    from trl import SFTConfig

    kw.update(sft_kwargs(spec, padding_free=padding_free))
    trainer = _sft_trainer_class()(
        model=model,
        args=SFTConfig(**kw),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
    )
    if padding_free and not spec.dataset.packing:
        from .speed import truncate_tokenized

        max_len = spec.dataset.max_seq_length
        trainer.train_dataset = truncate_tokenized(trainer.train_dataset, max_len)
        trainer.eval_dataset = truncate_tokenized(trainer.eval_dataset, max_len)
    return trainer


def find_resume(store: CheckpointStore | None, work: Path) -> tuple[str | None, int | None]:
    """Download the newest complete checkpoint, if any: (local path, step)."""
    if store is None:
        return None, None
    step = store.latest()
    if step is None:
        log.info("no complete checkpoint under %s: starting from step 0", store.prefix)
        return None, None
    # The local ranks of a pod share `work`: the first one through downloads, the others find
    # the copy complete (a marker written after it) instead of overwriting files being read.
    import fcntl

    dest = work / "resume"
    dest.mkdir(parents=True, exist_ok=True)
    done = dest / f".complete-{step}"
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.exists():
                path = dest / f"checkpoint-{step}"
            else:
                path = store.download(step, dest)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    log.info("resuming from %s (step %d)", store.uri(step), step)
    return str(path), step


def run(
    trainer: Any,
    spec: FineTuneJobSpec,
    reporter: ProgressReporter,
    store: CheckpointStore | None,
    work: Path,
    has_eval: bool,
    test: tuple[Any, Any, Any] | None = None,
) -> TrainResult:
    """`test`: (dataset.test as the evaluation takes it, its rows, the tokenizer), scored before
    and after training (testeval.py)."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    from . import testeval

    # ConsoleLogCallback writes one readable line per log; the raw dict printer goes.
    trainer.remove_callback(PrinterCallback)
    result = TrainResult(trainer=trainer)
    resume_path, resume_step = find_resume(store, work)
    result.resumed_from = resume_step
    if test is not None:
        # The base model on the test data, before any step (also on a resume: the weights are
        # the base's until train() loads the checkpoint).
        reporter.update(force=True, stage="evaluate")
        result.base_test = testeval.score(trainer, spec, test[0], test[1], test[2])
        log.info("test, base model: %s", _short(result.base_test))
    # Baseline evaluation (before any training step), added before the early-stopping and
    # progress callbacks so it only informs the metrics.
    if has_eval and resume_step is None:
        reporter.update(force=True, stage="evaluate")
        before = trainer.evaluate()
        if "eval_loss" in before:
            result.metrics["initial_eval_loss"] = before["eval_loss"]
            if not is_classification(spec) and not is_preference(spec):
                result.metrics["initial_perplexity"] = perplexity(before["eval_loss"])
        for k in ("eval_accuracy", "eval_f1", *PREFERENCE_METRICS):
            if k in before:
                name = PREFERENCE_METRICS.get(k) or k.removeprefix("eval_")
                result.metrics["initial_" + name] = before[k]
        log.info("before training: %s", _short(before))
    tp = Throughput()
    trainer.add_callback(ConsoleLogCallback(tp))
    trainer.add_callback(ProgressCallback(reporter, tp))
    if store is not None:
        trainer.add_callback(S3CheckpointCallback(store))
    es = spec.hyperparameters.early_stopping
    if es is not None and has_eval:
        trainer.add_callback(
            EarlyStoppingCallback(
                early_stopping_patience=es.patience, early_stopping_threshold=es.threshold
            )
        )
    if resume_path is not None and checkpoint_finished(Path(resume_path)):
        # The previous pod finished training (and failed later, e.g. uploading): take the
        # final weights as they are instead of letting the trainer run past its plan.
        log.info("checkpoint %d is the end of training: loading it without training", resume_step)
        trainer._load_from_checkpoint(resume_path)
        trainer.state = type(trainer.state).load_from_json(
            str(Path(resume_path) / "trainer_state.json")
        )
        m = {"train_loss": _last_train_loss(trainer.state)}
    else:
        m = dict(trainer.train(resume_from_checkpoint=resume_path).metrics)
    result.metrics.update(
        train_loss=m.get("train_loss"),
        train_runtime=m.get("train_runtime"),
        train_steps=trainer.state.global_step,
        epochs=trainer.state.epoch,
    )
    if resume_step is not None:
        result.metrics["resumed_from_step"] = resume_step
    if has_eval:
        reporter.update(force=True, stage="evaluate")
        final = trainer.evaluate()
        for k, v in final.items():
            if k.startswith("eval_") and isinstance(v, int | float):
                result.metrics[k] = v
        if not is_classification(spec) and not is_preference(spec) and "eval_loss" in final:
            result.metrics["perplexity"] = perplexity(final["eval_loss"])
        for k, name in PREFERENCE_METRICS.items():
            if isinstance(final.get(k), int | float):
                result.metrics[name] = final[k]
        reporter.update(eval_loss=final.get("eval_loss"))
        log.info("after training: %s", _short(final))
    best = getattr(trainer.state, "best_model_checkpoint", None)
    if best and trainer.args.load_best_model_at_end and not Path(best).is_dir():
        # A resumed pod has only the checkpoint it resumed from: transformers keeps the last
        # weights when the best epoch's checkpoint is not on disk.
        result.warnings.append(
            f"the best checkpoint ({Path(best).name}) was written by an earlier attempt and is "
            "not on this pod: the last epoch's weights were exported"
        )
    elif best and trainer.args.load_best_model_at_end:
        result.best_checkpoint = Path(best).name
        result.metrics["best_checkpoint_step"] = _step_of(best)
        if isinstance(trainer.state.best_metric, int | float):
            result.metrics["best_metric"] = trainer.state.best_metric
        log.info(
            "exporting the best checkpoint, %s (%s %s)",
            result.best_checkpoint,
            trainer.args.metric_for_best_model,
            trainer.state.best_metric,
        )
    if test is not None:
        reporter.update(force=True, stage="evaluate")
        result.tuned_test = testeval.score(trainer, spec, test[0], test[1], test[2])
        log.info("test, tuned model: %s", _short(result.tuned_test))
    close_writers(trainer)
    return result


def _step_of(checkpoint: str) -> int | None:
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def checkpoint_finished(path: Path) -> bool:
    """Whether a checkpoint's trainer_state says training had reached its planned steps."""
    import json

    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    max_steps = int(state.get("max_steps") or 0)
    return max_steps > 0 and int(state.get("global_step") or 0) >= max_steps


def _last_train_loss(state: Any) -> float | None:
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return float(losses[-1]) if losses else None


def _short(metrics: dict[str, Any]) -> str:
    keep = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not noisy(k)}
    return " ".join(
        f"{k} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
        for k, v in keep.items()
    )


def close_writers(trainer: Any) -> None:
    """Flush and close TensorBoard writers so the event files are complete before upload."""
    for cb in trainer.callback_handler.callbacks:
        writer = getattr(cb, "tb_writer", None)
        if writer is not None:
            try:
                writer.close()
            finally:
                cb.tb_writer = None
