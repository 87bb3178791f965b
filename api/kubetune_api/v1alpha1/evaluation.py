"""`spec.evaluation` and `spec.output.promote`: which metrics score a run on the held-out test
set (`spec.dataset.test`), which checkpoint is exported, and the promotion gate that decides
whether the run becomes the job's promoted model.

The metric names, the task each applies to and its direction are one table here
(`METRIC_TASKS`, `LOWER_IS_BETTER`), read by the CEL rules (written from it), the trainer and
the docs.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from ._base import ResourceName, Spec, WireFloat, WireInt, cel, validations


class Metric(StrEnum):
    """An evaluation metric. Classification: accuracy, f1 (macro), precision and recall
    (macro). Causal LM: perplexity (exp of the mean token loss) and exactMatch (greedy
    generation from the prompt equals the reference completion, whitespace-trimmed). Every
    task: loss."""

    ACCURACY = "accuracy"
    F1 = "f1"
    PRECISION = "precision"
    RECALL = "recall"
    PERPLEXITY = "perplexity"
    EXACT_MATCH = "exactMatch"
    LOSS = "loss"


CLASSIFICATION_METRICS = (Metric.ACCURACY, Metric.F1, Metric.PRECISION, Metric.RECALL)
# Which task may use which metric (the CEL rules below are written from this table).
METRIC_TASKS: dict[Metric, tuple[str, ...]] = {
    **{m: ("sequence-classification",) for m in CLASSIFICATION_METRICS},
    Metric.PERPLEXITY: ("causal-lm",),
    Metric.EXACT_MATCH: ("causal-lm",),
    Metric.LOSS: ("causal-lm", "sequence-classification", "preference"),
}
LOWER_IS_BETTER = frozenset({Metric.LOSS, Metric.PERPLEXITY})
# Metrics that need generation from a prompt (a reference completion to compare with).
GENERATIVE_METRICS = frozenset({Metric.EXACT_MATCH})
# Metrics the per-epoch evaluation on the validation data computes (exactMatch generates, so
# it is scored on the test set only).
CHECKPOINT_METRICS = tuple(m for m in Metric if m not in GENERATIVE_METRICS)

DEFAULT_METRICS: dict[str, tuple[Metric, ...]] = {
    "sequence-classification": (*CLASSIFICATION_METRICS, Metric.LOSS),
    "causal-lm": (Metric.PERPLEXITY, Metric.LOSS),
    "preference": (Metric.LOSS,),
}


def default_metrics(task: str) -> tuple[Metric, ...]:
    return DEFAULT_METRICS.get(task, (Metric.LOSS,))


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


def direction_of(metric: str, explicit: str | None = None) -> Direction:
    """The explicit direction, else the metric's natural one (loss, perplexity: minimize)."""
    if explicit:
        return Direction(explicit)
    return Direction.MINIMIZE if metric in LOWER_IS_BETTER else Direction.MAXIMIZE


def _tasks_rule(path: str) -> str:
    """CEL: the metric at `path` is one the spec's task may use (from METRIC_TASKS)."""
    return " && ".join(
        f"({path} != '{m.value}' || self.task in [{', '.join(repr(t) for t in tasks)}])"
        for m, tasks in METRIC_TASKS.items()
        if len(tasks) < len(DEFAULT_METRICS)
    )


def task_rules() -> list[dict[str, str]]:
    """The spec-level CEL rules that tie evaluation and promotion to the task and data (on
    FineTuneJobSpec, which sees task, dataset and output together)."""
    text = _tasks_rule("m")
    metrics_rule = (
        "!has(self.evaluation) || !has(self.evaluation.metrics) || "
        f"self.evaluation.metrics.all(m, {text})"
    )
    best_text = _tasks_rule("self.evaluation.bestCheckpoint.metric")
    promote_text = _tasks_rule("self.output.promote.metric")
    return validations(
        cel(
            metrics_rule,
            "evaluation.metrics: accuracy, f1, precision and recall apply to task "
            "sequence-classification, perplexity and exactMatch to task causal-lm, loss to "
            "every task; remove the metrics the task cannot compute",
            ".evaluation.metrics",
        ),
        cel(
            "!has(self.evaluation) || !has(self.evaluation.metrics) || "
            "!('exactMatch' in self.evaluation.metrics) || "
            "self.dataset.format in ['prompt-completion', 'messages']",
            "evaluation.metrics exactMatch compares a generated completion with the reference "
            "one: it needs dataset.format prompt-completion or messages; remove exactMatch",
            ".evaluation.metrics",
        ),
        cel(
            "!has(self.evaluation) || !has(self.evaluation.bestCheckpoint) || "
            "has(self.dataset.validation)",
            "evaluation.bestCheckpoint picks the best epoch on the validation data: set "
            "dataset.validation",
            ".evaluation.bestCheckpoint",
        ),
        cel(
            "!has(self.evaluation) || !has(self.evaluation.bestCheckpoint) || "
            "!has(self.evaluation.bestCheckpoint.metric) || " + best_text,
            "evaluation.bestCheckpoint.metric must be one the task computes (classification: "
            "accuracy, f1, precision, recall, loss; causal-lm: perplexity, loss; preference: "
            "loss)",
            ".evaluation.bestCheckpoint.metric",
        ),
        cel(
            "!has(self.evaluation) || !has(self.evaluation.bestCheckpoint) || "
            "!has(self.hyperparameters) || "
            "((!has(self.hyperparameters.evalStrategy) || "
            "self.hyperparameters.evalStrategy != 'steps') && "
            "(!has(self.hyperparameters.saveStrategy) || "
            "self.hyperparameters.saveStrategy != 'no'))",
            "evaluation.bestCheckpoint evaluates and checkpoints at the end of every epoch: "
            "remove hyperparameters.evalStrategy steps and saveStrategy no",
            ".evaluation.bestCheckpoint",
        ),
        cel(
            "!has(self.output.promote) || has(self.dataset.test)",
            "output.promote scores the run on the test data: set dataset.test (a file or a "
            "splitFraction)",
            ".output.promote",
        ),
        cel(
            "!has(self.output.promote) || " + promote_text,
            "output.promote.metric must be one the task computes (classification: accuracy, "
            "f1, precision, recall, loss; causal-lm: perplexity, exactMatch, loss; "
            "preference: loss)",
            ".output.promote.metric",
        ),
        cel(
            "!has(self.output.promote) || !has(self.evaluation) || "
            "!has(self.evaluation.metrics) || self.output.promote.metric in "
            "self.evaluation.metrics",
            "output.promote.metric must be one of evaluation.metrics: add it there",
            ".output.promote.metric",
        ),
        cel(
            "!has(self.output.promote) || self.output.promote.metric != 'exactMatch' || "
            "self.dataset.format in ['prompt-completion', 'messages']",
            "output.promote.metric exactMatch needs dataset.format prompt-completion or "
            "messages (a reference completion to compare with)",
            ".output.promote.metric",
        ),
    )["x-kubernetes-validations"]


class BestCheckpoint(Spec):
    """Export the checkpoint of the best epoch, not the last one."""

    metric: Metric = Field(
        default=Metric.LOSS,
        description="Metric on the validation data that picks the best epoch: loss, "
        "perplexity, or for classification accuracy, f1, precision, recall.",
    )
    direction: Direction | None = Field(
        default=None,
        description="maximize or minimize; default by the metric (loss and perplexity "
        "minimize, the others maximize).",
    )


class EvaluationSpec(Spec):
    """How a run is scored on dataset.test (the base model before training, the tuned model
    after), and which checkpoint becomes the artifact."""

    api_path = "spec.evaluation"

    metrics: list[Metric] | None = Field(
        default=None,
        min_length=1,
        max_length=7,
        description="Metrics on the test data. Default by task: sequence-classification "
        "accuracy, f1, precision, recall, loss; causal-lm perplexity, loss; preference loss. "
        "exactMatch (causal-lm, prompt-completion or messages data) generates greedily from "
        "each prompt and compares with the reference completion.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    best_checkpoint: BestCheckpoint | None = Field(
        default=None,
        description="Evaluate on dataset.validation at the end of every epoch and export the "
        "best epoch's weights as the artifact (needs dataset.validation).",
    )
    max_generation_rows: WireInt = Field(
        default=64,
        ge=1,
        le=10000,
        description="exactMatch: score at most this many test rows (the first ones).",
    )
    max_new_tokens: WireInt = Field(
        default=64,
        ge=1,
        le=4096,
        description="exactMatch: generate at most this many tokens per row.",
    )

    @model_validator(mode="after")
    def _check(self) -> EvaluationSpec:
        # x-kubernetes-list-type: set in the CRD (not a CEL rule)
        if self.metrics is not None and len(set(self.metrics)) != len(self.metrics):
            raise ValueError("spec.evaluation.metrics: each metric may appear only once")
        return self


class PromoteRule(StrEnum):
    BEAT_PREVIOUS = "beatPrevious"
    THRESHOLD = "threshold"


class PromoteSpec(Spec):
    """The promotion gate: when the run's test metric passes it, the job's promoted pointer
    (<output.uri>/<namespace>/<pointer>/promoted/promoted.json) moves to this run."""

    api_path = "spec.output.promote"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.rule != 'threshold' || has(self.threshold)",
                "rule threshold needs threshold: set output.promote.threshold",
                ".threshold",
            ),
            cel(
                "self.rule == 'threshold' || !has(self.threshold)",
                "threshold applies only to rule threshold: remove output.promote.threshold or "
                "set rule: threshold",
                ".threshold",
            ),
        )
    )

    metric: Metric = Field(description="The test metric the gate compares.")
    rule: PromoteRule = Field(
        default=PromoteRule.BEAT_PREVIOUS,
        description="beatPrevious: strictly better than the promoted run's value (the first "
        "run with no promoted run passes); threshold: at least as good as `threshold`.",
    )
    threshold: WireFloat | None = Field(
        default=None, description="rule threshold: the value to reach (>= maximize, <= minimize)."
    )
    direction: Direction | None = Field(
        default=None,
        description="maximize or minimize; default by the metric (loss and perplexity "
        "minimize, the others maximize).",
    )
    pointer: ResourceName | None = Field(
        default=None,
        description="Name of the promoted pointer, default this FineTuneJob's name. Jobs that "
        "share one (e.g. the runs a schedule stamps) compete for one promoted model.",
    )
