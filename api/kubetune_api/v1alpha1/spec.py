"""`FineTuneJob.spec`: the whole spec and its cross-field rules."""

from __future__ import annotations

from pydantic import (
    ConfigDict,
    Field,
)

from ._base import ResourceName, Spec, WireBool, cel, validations
from .dataset import DatasetSpec
from .evaluation import EvaluationSpec, task_rules
from .hyperparameters import Hyperparameters, Optimizer
from .method import MethodSpec
from .model import ClassificationSpec, ModelSource, PreferenceSpec, TaskType
from .output import OutputSpec, RunPolicy, TrackingSpec
from .pod import PodOptions
from .resources import ResourcesSpec

# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


GPU_ONLY_OPTIMIZERS = {
    Optimizer.ADAMW_8BIT.value,
    Optimizer.PAGED_ADAMW_8BIT.value,
    Optimizer.PAGED_ADAMW_32BIT.value,
}


class FineTuneJobSpec(Spec):
    """Desired state of a FineTuneJob: what to fine-tune, on what data, how, where the artifacts go."""

    api_path = "spec"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.workloadPriorityClass) || has(self.queueName)",
                "workloadPriorityClass needs queueName (the Kueue LocalQueue the run waits in)",
                ".workloadPriorityClass",
            ),
            cel(
                "self.task != 'sequence-classification' || has(self.classification)",
                "task sequence-classification needs classification (numLabels or labelNames)",
                ".classification",
            ),
            cel(
                "self.task == 'sequence-classification' || !has(self.classification)",
                "classification applies only to task sequence-classification",
                ".classification",
            ),
            cel(
                "(self.task == 'sequence-classification') == (self.dataset.format == 'classification')",
                "dataset.format classification goes with task sequence-classification, and "
                "only with it",
                ".dataset.format",
            ),
            cel(
                "(self.task == 'preference') == (self.dataset.format == 'preference')",
                "dataset.format preference (prompt/chosen/rejected rows) goes with task "
                "preference, and only with it",
                ".dataset.format",
            ),
            cel(
                "self.task == 'preference' || !has(self.preference)",
                "preference applies only to task preference",
                ".preference",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.hyperparameters.earlyStopping) || "
                "has(self.dataset.validation)",
                "earlyStopping needs dataset.validation",
                ".hyperparameters.earlyStopping",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.hyperparameters.evalStrategy) || "
                "self.hyperparameters.evalStrategy == 'no' || has(self.dataset.validation)",
                "evalStrategy needs dataset.validation",
                ".hyperparameters.evalStrategy",
            ),
            cel(
                "!has(self.resources) || !has(self.resources.distribution) || "
                "!has(self.resources.distribution.strategy) || "
                "self.resources.distribution.strategy != 'fsdp' || !has(self.method) || "
                "!has(self.method.type) || "
                "!(self.method.type in ['prompt-tuning', 'prefix-tuning'])",
                "resources.distribution.strategy fsdp cannot shard prompt-tuning or "
                "prefix-tuning (their virtual tokens live outside the sharded layers): use ddp "
                "or auto",
                ".resources.distribution.strategy",
            ),
            # GPU-only settings on a CPU run would fail inside the trainer, after the
            # downloads; refuse them at apply instead.
            cel(
                "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus > 0) "
                "|| !has(self.hyperparameters) || !has(self.hyperparameters.optimizer) || "
                "!(self.hyperparameters.optimizer in "
                "['adamw_8bit', 'paged_adamw_8bit', 'paged_adamw_32bit'])",
                "the 8-bit and paged optimizers (bitsandbytes) run "
                "on GPUs only; set resources.gpus, or use adamw_torch on CPU",
                ".hyperparameters.optimizer",
            ),
            cel(
                "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus > 0) "
                "|| !has(self.hyperparameters) || !has(self.hyperparameters.precision) || "
                "self.hyperparameters.precision != 'fp16'",
                "fp16 mixed precision runs on GPUs only; set "
                "resources.gpus, or use bf16, fp32 or auto on CPU",
                ".hyperparameters.precision",
            ),
            # An output the method cannot produce: prompt/prefix tuning trains virtual tokens,
            # which have no merged form, so asking only for a merged model yields nothing.
            cel(
                "!has(self.method) || !has(self.method.type) || "
                "!(self.method.type in ['prompt-tuning', 'prefix-tuning']) || "
                "!has(self.output.adapter) || self.output.adapter",
                "prompt-tuning and prefix-tuning have no merged form (their "
                "virtual tokens are not weights of the model): set output.adapter: true",
                ".output.adapter",
            ),
            cel(
                "!has(self.model.fromJob) || !has(self.model.fromJob.artifact) || "
                "self.model.fromJob.artifact != 'adapter' || !has(self.method) || "
                "!has(self.method.type) || self.method.type in ['lora', 'qlora', 'dora', "
                "'prompt-tuning', 'prefix-tuning', 'ia3']",
                "model.fromJob.artifact adapter continues an adapter: method.type must be the "
                "base job's adapter method (lora, qlora, dora, prompt-tuning, prefix-tuning, ia3)",
                ".model.fromJob.artifact",
            ),
            # evaluation and output.promote against the task and the data (evaluation.py)
            *task_rules(),
            # Transition rules (oldSelf): checked on update only, and only where the object
            # holding the rule exists before and after. They sit on the spec, which always
            # does, and the fields always exist too (task has a default, output.uri is
            # required); on a field's own schema a rule would be skipped when it is added or
            # removed. tests/integration/test_api_crd.py updates a live object to check them.
            cel(
                "self.task == oldSelf.task", "task is immutable: create a new FineTuneJob", ".task"
            ),
            cel(
                "self.output.uri == oldSelf.output.uri",
                "output.uri is immutable (earlier runs' artifacts live there): create a new "
                "FineTuneJob",
                ".output.uri",
            ),
        )
    )

    task: TaskType = Field(
        default=TaskType.CAUSAL_LM,
        description="causal-lm (supervised fine-tuning of a generative model) or "
        "sequence-classification. Immutable.",
    )
    classification: ClassificationSpec | None = Field(
        default=None, description="Labels, for task sequence-classification."
    )
    preference: PreferenceSpec | None = Field(
        default=None,
        description="Preference tuning settings, for task preference (DPO if omitted).",
    )
    model: ModelSource = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training (and validation) data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Adaptation method.")
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Metrics on dataset.test (the base model before training and the tuned "
        "model after, side by side in status.evaluation) and best-checkpoint export. Without "
        "it the task's default metrics are used.",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training hyperparameters."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Compute resources and placement."
    )
    output: OutputSpec = Field(description="Where artifacts are written.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retry, deadline, suspend."
    )
    pod: PodOptions | None = Field(
        default=None,
        description="Labels, annotations, pull secrets, extra environment and an extra CA "
        "bundle for the run's Job and pods.",
    )
    queue_name: ResourceName | None = Field(
        default=None,
        description="Kueue LocalQueue (in this namespace) the run waits in for quota. The Job is "
        "created suspended with the kueue.x-k8s.io/queue-name label and Kueue admits it; phase "
        "Queued until then. Unset: the namespace's default LocalQueue, if Kueue has one.",
    )
    workload_priority_class: ResourceName | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass of the run (needs queueName): orders the queue "
        "and decides which admitted run Kueue may preempt (a preempted run is Suspended, and "
        "resumes from its last checkpoint when admitted again).",
    )
    dry_run: WireBool = Field(
        default=False,
        description="Estimate instead of training: one CPU pod (no GPU) reads the model's "
        "config.json and tokenizer (never the weights) and a sample of the data, validates the "
        "rows, counts tokens and steps, and estimates peak GPU memory, wall time and GPU-hours "
        "(as `kubetune estimate` does). The job ends Succeeded with the result in "
        "status.estimate.",
    )
