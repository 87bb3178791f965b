"""`spec.hyperparameters`: the training loop's settings."""

from __future__ import annotations

from enum import StrEnum

from pydantic import (
    ConfigDict,
    Field,
)

from ._base import Spec, WireBool, WireFloat, WireInt, cel, validations

# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Optimizer(StrEnum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_TORCH_FUSED = "adamw_torch_fused"
    ADAMW_8BIT = "adamw_8bit"
    PAGED_ADAMW_8BIT = "paged_adamw_8bit"
    PAGED_ADAMW_32BIT = "paged_adamw_32bit"
    ADAFACTOR = "adafactor"
    SGD = "sgd"


class Strategy(StrEnum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class EarlyStoppingSpec(Spec):
    """Stop when the eval metric stops improving (needs dataset.validation)."""

    patience: WireInt = Field(
        default=3, ge=1, le=1000, description="Evaluations without improvement before stopping."
    )
    metric: str = Field(
        default="eval_loss",
        pattern=r"^eval_[a-z0-9_]+$",
        max_length=64,
        description="Metric to watch: eval_loss, eval_accuracy, eval_f1, ...",
    )
    threshold: WireFloat = Field(
        default=0.0, ge=0, description="Minimum change that counts as an improvement."
    )
    greater_is_better: WireBool | None = Field(
        default=None,
        description="Whether higher is better; default false for *loss metrics, true otherwise.",
    )


class Hyperparameters(Spec):
    """Training hyperparameters (the names follow transformers' TrainingArguments)."""

    api_path = "spec.hyperparameters"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.warmupRatio) || !has(self.warmupSteps)",
                "set warmupRatio or warmupSteps, not both",
                ".warmupSteps",
            ),
            cel(
                "!has(self.evalStrategy) || self.evalStrategy != 'steps' || has(self.evalSteps)",
                "evalStrategy steps needs evalSteps",
                ".evalSteps",
            ),
            cel(
                "!has(self.saveStrategy) || self.saveStrategy != 'steps' || has(self.saveSteps)",
                "saveStrategy steps needs saveSteps",
                ".saveSteps",
            ),
            cel(
                "!has(self.earlyStopping) || (has(self.evalStrategy) && self.evalStrategy != 'no')",
                "earlyStopping needs evaluation (evalStrategy steps or epoch)",
                ".earlyStopping",
            ),
        )
    )

    epochs: WireFloat = Field(
        default=1.0, gt=0, le=1000, description="Passes over the training data (fractions allowed)."
    )
    max_steps: WireInt | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs when set."
    )
    learning_rate: WireFloat | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Peak learning rate. Default by method (default_learning_rate): full 2e-5, "
        "lora/qlora/dora 2e-4, bitfit 1e-4, ia3 3e-3, prompt-tuning/prefix-tuning 3e-2; task "
        "preference: full 5e-7, other methods 5e-6. Objects created before these defaults "
        "(API default 2e-4 for every method) keep the 2e-4 stored in them.",
    )
    lr_scheduler: Scheduler = Field(default=Scheduler.LINEAR, description="Learning-rate schedule.")
    warmup_ratio: WireFloat | None = Field(
        default=None, ge=0, le=1, description="Fraction of steps for linear warm-up."
    )
    warmup_steps: WireInt | None = Field(
        default=None, ge=0, le=10_000_000, description="Warm-up steps."
    )
    batch_size: WireInt = Field(
        default=4,
        ge=1,
        le=4096,
        description="Micro-batch size per device (per_device_train_batch_size).",
    )
    eval_batch_size: WireInt | None = Field(
        default=None, ge=1, le=4096, description="Per-device eval batch size; default batchSize."
    )
    gradient_accumulation_steps: WireInt = Field(
        default=1, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    weight_decay: WireFloat = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: WireFloat = Field(
        default=1.0, ge=0, le=1000, description="Gradient clipping norm (0 disables)."
    )
    seed: WireInt = Field(
        default=42, ge=0, le=2**32 - 1, description="Random seed (data order, init)."
    )
    precision: Precision = Field(
        default=Precision.AUTO,
        description="auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.",
    )
    gradient_checkpointing: WireBool = Field(
        default=False,
        description="Recompute activations in the backward pass: much less memory, ~20-30% slower.",
    )
    optimizer: Optimizer = Field(
        default=Optimizer.ADAMW_TORCH,
        description="Optimizer; paged_adamw_8bit is the QLoRA recipe's (needs a GPU).",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop early when the eval metric stops improving."
    )
    eval_strategy: Strategy = Field(
        default=Strategy.NO,
        description="When to evaluate: no, steps (every evalSteps) or epoch. Needs validation data.",
    )
    eval_steps: WireInt | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate every N steps."
    )
    save_strategy: Strategy = Field(
        default=Strategy.STEPS,
        description="When to checkpoint (to S3, for resume after eviction): no, steps, epoch.",
    )
    save_steps: WireInt | None = Field(
        default=500,
        ge=1,
        le=10_000_000,
        description="Checkpoint every N steps (saveStrategy steps).",
    )
    save_total_limit: WireInt = Field(
        default=2, ge=1, le=100, description="Checkpoints kept; older ones are deleted."
    )
    logging_steps: WireInt = Field(
        default=10, ge=1, le=10_000_000, description="Log (and report progress) every N steps."
    )
    group_by_length: WireBool = Field(
        default=False, description="Batch rows of similar length together (less padding)."
    )


# The learning rate the trainer uses when hyperparameters.learningRate is unset: full
# fine-tuning moves every weight and wants ~10x less than LoRA; the few parameters of IA3 and
# of soft prompts want far more; preference tuning (DPO/ORPO) far less.
METHOD_LEARNING_RATES = {
    "full": 2e-5,
    "lora": 2e-4,
    "qlora": 2e-4,
    "dora": 2e-4,
    "bitfit": 1e-4,
    "ia3": 3e-3,
    "prompt-tuning": 3e-2,
    "prefix-tuning": 3e-2,
}
PREFERENCE_LEARNING_RATES = {"full": 5e-7}
PREFERENCE_DEFAULT_LEARNING_RATE = 5e-6
# The API default of every method before method-aware defaults: kept in objects created then.
LEGACY_DEFAULT_LEARNING_RATE = 2e-4


def default_learning_rate(method: str, task: str) -> float:
    """The learning rate for `method` (spec.method.type) and `task` when none is set."""
    if task == "preference":
        return PREFERENCE_LEARNING_RATES.get(method, PREFERENCE_DEFAULT_LEARNING_RATE)
    return METHOD_LEARNING_RATES[method]
