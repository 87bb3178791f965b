"""The FineTuneJob models refuse bad manifests with a message naming the field, accept the good
ones and the examples.

BAD and GOOD below are also what tests/integration/test_api_crd.py sends to the real API server
(it loads this file by path): the same manifest must be refused, naming the same field, by both.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_api import v1alpha1 as c
from kubetune_api.v1alpha1 import FineTuneJob
from kubetune_trainer.data import render_text_template
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]
# The FineTuneJob examples (examples/retraining-schedule.yaml is a FineTuneSchedule: its checks
# are in test_schedule_api.py, which also checks no example is of a third kind).
EXAMPLES = [
    p
    for p in sorted((REPO / "examples").glob("*.yaml"))
    if yaml.safe_load(p.read_text()).get("kind") == "FineTuneJob"
]

BASE: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "case"},
    "spec": {
        "model": {"hubId": "org/model"},
        "dataset": {"s3Uri": "s3://bucket/train.jsonl"},
        "output": {"uri": "s3://bucket/out"},
    },
}

# Operations on BASE: ("set", "a.b.c", value) creates intermediate objects; ("del", "a.b").
Op = tuple[Any, ...]

_CLS: list[Op] = [
    ("set", "spec.task", "sequence-classification"),
    ("set", "spec.dataset.format", "classification"),
]
_WITH_VALIDATION: list[Op] = [("set", "spec.dataset.validation", {"splitFraction": 0.1})]
_WITH_TEST: list[Op] = [("set", "spec.dataset.test", {"splitFraction": 0.2})]


def apply_ops(ops: list[Op], base: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(BASE if base is None else base)
    for op in ops:
        keys = op[1].split(".")
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if op[0] == "set":
            node[keys[-1]] = copy.deepcopy(op[2])
        elif op[0] == "del":
            node.pop(keys[-1], None)
        else:
            raise ValueError(op)
    return doc


# (id, ops, field path the error must name, a fragment of the message or None)
BAD: list[tuple[str, list[Op], str, str | None]] = [
    ("lora-r-zero", [("set", "spec.method.lora", {"r": 0})], "spec.method.lora.r", None),
    ("lora-dropout-one", [("set", "spec.method.lora", {"dropout": 1})], "spec.method.lora.dropout", None),
    ("negative-learning-rate", [("set", "spec.hyperparameters.learningRate", -0.0001)], "spec.hyperparameters.learningRate", None),
    ("zero-learning-rate", [("set", "spec.hyperparameters.learningRate", 0)], "spec.hyperparameters.learningRate", None),
    ("two-model-sources", [("set", "spec.model.s3Uri", "s3://bucket/m/")], "spec.model", "exactly one of hubId, s3Uri, pvc"),
    ("no-model-source", [("set", "spec.model", {})], "spec.model", "exactly one of hubId, s3Uri, pvc"),
    ("qlora-float32-compute", [("set", "spec.method", {"type": "qlora", "quantization": {"computeDtype": "float32"}})], "spec.method.quantization.computeDtype", "16-bit compute dtype"),
    ("qlora-8-bits", [("set", "spec.method", {"type": "qlora", "quantization": {"bits": 8}})], "spec.method.quantization.bits", None),
    ("s3-uri-without-bucket", [("set", "spec.output.uri", "s3:///out")], "spec.output.uri", None),
    ("s3-uri-uppercase-bucket", [("set", "spec.model", {"s3Uri": "s3://Models/x"})], "spec.model.s3Uri", None),
    ("dataset-uri-not-s3", [("set", "spec.dataset.s3Uri", "https://example.com/train.jsonl")], "spec.dataset.s3Uri", None),
    ("unknown-method", [("set", "spec.method.type", "lorax")], "spec.method.type", None),
    ("unknown-task", [("set", "spec.task", "translation")], "spec.task", None),
    ("missing-output", [("del", "spec.output")], "spec.output", None),
    ("missing-model", [("del", "spec.model")], "spec.model", None),
    ("missing-dataset-source", [("set", "spec.dataset", {"format": "text"})], "spec.dataset", "exactly one of s3Uri, hub, pvc, inline"),
    ("gpus-negative", [("set", "spec.resources.gpus", -1)], "spec.resources.gpus", None),
    ("nodes-too-many", [("set", "spec.resources.nodes", 65)], "spec.resources.nodes", None),
    ("processes-per-node-not-gpus", [("set", "spec.resources", {"gpus": 2, "distribution": {"processesPerNode": 1}})], "spec.resources.distribution.processesPerNode", "must equal gpus"),
    ("fsdp-prompt-tuning", [("set", "spec.method", {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 8}}), ("set", "spec.resources.distribution", {"strategy": "fsdp"})], "spec.resources.distribution.strategy", "cannot shard prompt-tuning"),
    ("unknown-strategy", [("set", "spec.resources.distribution.strategy", "deepspeed")], "spec.resources.distribution.strategy", None),
    ("classification-without-labels", _CLS, "spec.classification", "needs classification"),
    ("classification-label-count-mismatch", [*_CLS, ("set", "spec.classification", {"numLabels": 3, "labelNames": ["a", "b"]})], "spec.classification.numLabels", "numLabels must equal"),
    ("classification-duplicate-labels", [*_CLS, ("set", "spec.classification", {"labelNames": ["a", "a"]})], "spec.classification.labelNames", None),
    ("classification-with-causal-lm", [("set", "spec.classification", {"numLabels": 2})], "spec.classification", "applies only to task sequence-classification"),
    ("classification-format-with-causal-lm", [("set", "spec.dataset.format", "classification")], "spec.dataset.format", "goes with task sequence-classification"),
    ("packing-with-classification", [*_CLS, ("set", "spec.classification", {"numLabels": 2}), ("set", "spec.dataset.packing", True)], "spec.dataset.packing", "causal-lm formats only"),
    ("early-stopping-without-validation", [("set", "spec.hyperparameters", {"evalStrategy": "steps", "evalSteps": 10, "earlyStopping": {}})], "spec.hyperparameters.earlyStopping", "needs dataset.validation"),
    ("early-stopping-without-evaluation", [*_WITH_VALIDATION, ("set", "spec.hyperparameters.earlyStopping", {"patience": 2})], "spec.hyperparameters.earlyStopping", "needs evaluation"),
    ("early-stopping-bad-metric", [*_WITH_VALIDATION, ("set", "spec.hyperparameters", {"evalStrategy": "epoch", "earlyStopping": {"metric": "loss"}})], "spec.hyperparameters.earlyStopping.metric", None),
    ("warmup-ratio-and-steps", [("set", "spec.hyperparameters", {"warmupRatio": 0.1, "warmupSteps": 10})], "spec.hyperparameters.warmupSteps", "not both"),
    ("eval-strategy-steps-without-eval-steps", [*_WITH_VALIDATION, ("set", "spec.hyperparameters.evalStrategy", "steps")], "spec.hyperparameters.evalSteps", "needs evalSteps"),
    ("eval-strategy-without-validation", [("set", "spec.hyperparameters.evalStrategy", "epoch")], "spec.hyperparameters.evalStrategy", "needs dataset.validation"),
    ("eval-strategy-yaml-bool", [("set", "spec.hyperparameters.evalStrategy", False)], "spec.hyperparameters.evalStrategy", None),
    ("freeze-layers-with-lora", [("set", "spec.method", {"type": "lora", "freezeLayers": 2})], "spec.method.freezeLayers", "applies only to type full"),
    ("lora-settings-with-ia3", [("set", "spec.method", {"type": "ia3", "lora": {"r": 8}})], "spec.method.lora", "lora settings apply only"),
    ("quantization-with-lora", [("set", "spec.method", {"type": "lora", "quantization": {}})], "spec.method.quantization", "applies only to type qlora"),
    ("prefix-tuning-settings-with-lora", [("set", "spec.method", {"type": "lora", "prefixTuning": {"numVirtualTokens": 8}})], "spec.method.prefixTuning", "applies only to type prefix-tuning"),
    ("ia3-settings-with-lora", [("set", "spec.method", {"type": "lora", "ia3": {}})], "spec.method.ia3", "ia3 settings apply only"),
    ("classification-empty", [*_CLS, ("set", "spec.classification", {})], "spec.classification", "set numLabels or labelNames"),
    ("priority-class-without-queue", [("set", "spec.workloadPriorityClass", "high")], "spec.workloadPriorityClass", "needs queueName"),
    ("dataset-token-without-hub", [("set", "spec.dataset.tokenSecretRef", {"name": "hf", "key": "token"})], "spec.dataset.tokenSecretRef", "applies only to a Hub dataset"),
    ("env-from-both", [("set", "spec.pod", {"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]})], "spec.pod.envFrom[0]", "exactly one of configMapRef, secretRef"),
    ("env-reserved-name", [("set", "spec.pod", {"env": [{"name": "HF_TOKEN", "value": "x"}]})], "spec.pod.env[0].name", "name is reserved"),
    ("optimizer-8bit-on-cpu", [("set", "spec.hyperparameters.optimizer", "adamw_8bit")], "spec.hyperparameters.optimizer", "run on GPUs only"),
    ("fp16-on-cpu", [("set", "spec.hyperparameters.precision", "fp16")], "spec.hyperparameters.precision", "fp16 mixed precision runs on GPUs only"),
    ("prompt-tuning-without-adapter", [("set", "spec.method", {"type": "prompt-tuning"}), ("set", "spec.output.adapter", False)], "spec.output.adapter", "have no merged form"),
    ("node-affinity-in-without-values", [("set", "spec.resources.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In"}]}]}}})], "spec.resources.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values", "In/NotIn need at least one value"),
    ("pod-label-reserved-prefix", [("set", "spec.pod", {"labels": {"kubetune.io/x": "a"}})], "spec.pod.labels", "keys must be label keys"),
    ("pod-annotation-reserved-prefix", [("set", "spec.pod", {"annotations": {"app.kubernetes.io/x": "a"}})], "spec.pod.annotations", "keys must be label keys"),
    ("node-selector-bad-key", [("set", "spec.resources.nodeSelector", {"bad key": "a"})], "spec.resources.nodeSelector", "keys must be label keys"),
    ("cache-claim-with-pvc-model", [("set", "spec.model", {"pvc": {"claimName": "models", "path": "/m"}, "cacheClaimName": "cache"})], "spec.model.cacheClaimName", "applies only to hubId and s3Uri"),
    ("preference-format-with-causal-lm", [("set", "spec.dataset.format", "preference")], "spec.dataset.format", "goes with task preference"),
    ("preference-settings-with-causal-lm", [("set", "spec.preference", {"algorithm": "dpo"})], "spec.preference", "applies only to task preference"),
    ("from-job-adapter-with-full", [("set", "spec.model", {"fromJob": {"name": "base", "artifact": "adapter"}}), ("set", "spec.method", {"type": "full"})], "spec.model.fromJob.artifact", "continues an adapter"),
    ("prompt-tuning-settings-with-lora", [("set", "spec.method", {"type": "lora", "promptTuning": {"numVirtualTokens": 8}})], "spec.method.promptTuning", None),
    ("sse-kms-without-key", [("set", "spec.output.sse", "aws:kms")], "spec.output.kmsKeyId", "needs kmsKeyId"),
    ("no-artifacts", [("set", "spec.output.adapter", False), ("set", "spec.output.mergedModel", False)], "spec.output.adapter", "at least one of adapter, mergedModel"),
    ("bad-endpoint", [("set", "spec.output.endpoint", "minio:9000")], "spec.output.endpoint", None),
    ("bad-quantity", [("set", "spec.resources.memory", "lots")], "spec.resources.memory", None),
    ("bad-quantity-suffix", [("set", "spec.resources.memory", "16GB")], "spec.resources.memory", None),
    ("negative-quantity-int", [("set", "spec.resources.cpu", -1)], "spec.resources.cpu", None),
    ("fractional-quantity-number", [("set", "spec.resources.cpu", 1.5)], "spec.resources.cpu", None),
    ("bad-secret-name", [("set", "spec.model.tokenSecretRef", {"name": "HF_Token", "key": "token"})], "spec.model.tokenSecretRef.name", None),
    ("token-without-hub-id", [("set", "spec.model", {"s3Uri": "s3://bucket/m/", "tokenSecretRef": {"name": "hf", "key": "token"}})], "spec.model.tokenSecretRef", "applies only to hubId"),
    ("revision-without-hub-id", [("set", "spec.model", {"s3Uri": "s3://bucket/m/", "revision": "main"})], "spec.model.revision", "applies only to hubId"),
    ("bad-hub-id", [("set", "spec.model.hubId", "-org/model")], "spec.model.hubId", None),
    ("report-to-wandb-without-wandb", [("set", "spec.tracking.reportTo", ["wandb"])], "spec.tracking.wandb", "needs wandb settings"),
    ("report-to-mlflow-without-mlflow", [("set", "spec.tracking.reportTo", ["tensorboard", "mlflow"])], "spec.tracking.mlflow", "needs mlflow settings"),
    ("report-to-duplicate", [("set", "spec.tracking.reportTo", ["tensorboard", "tensorboard"])], "spec.tracking.reportTo", None),
    ("too-many-inline-rows", [("del", "spec.dataset.s3Uri"), ("set", "spec.dataset.inline", [{"text": f"row {i}"} for i in range(1001)])], "spec.dataset.inline", None),
    ("empty-inline-rows", [("del", "spec.dataset.s3Uri"), ("set", "spec.dataset.inline", [])], "spec.dataset.inline", None),
    ("unknown-field", [("set", "spec.method.lora", {"rank": 8})], "spec.method.lora.rank", None),
    ("unknown-spec-field", [("set", "spec.epochs", 3)], "spec.epochs", None),
    ("pvc-path-dotdot", [("set", "spec.model", {"pvc": {"claimName": "models", "path": "/a/../b"}})], "spec.model.pvc.path", "must not contain '..'"),
    ("validation-two-sources", [("set", "spec.dataset.validation", {"splitFraction": 0.1, "s3Uri": "s3://bucket/eval.jsonl"})], "spec.dataset.validation", "exactly one of"),
    ("validation-split-fraction-one", [("set", "spec.dataset.validation", {"splitFraction": 1})], "spec.dataset.validation.splitFraction", None),
    ("text-template-with-messages", [("set", "spec.dataset.format", "messages"), ("set", "spec.dataset.textTemplate", "{a}")], "spec.dataset.textTemplate", "applies only to format text"),
    ("text-template-attribute-access", [("set", "spec.dataset.textTemplate", "{quote.__class__}")], "spec.dataset.textTemplate", None),
    ("text-template-unbalanced", [("set", "spec.dataset.textTemplate", "Quote: {quote")], "spec.dataset.textTemplate", None),
    ("max-seq-length-too-small", [("set", "spec.dataset.maxSeqLength", 8)], "spec.dataset.maxSeqLength", None),
    ("batch-size-string", [("set", "spec.hyperparameters.batchSize", "8")], "spec.hyperparameters.batchSize", None),
    ("batch-size-fraction", [("set", "spec.hyperparameters.batchSize", 8.5)], "spec.hyperparameters.batchSize", None),
    # 8.0 passes the API server's OpenAPI check but fails its CEL evaluation where a rule reads
    # the field, so the CRD refuses it everywhere (kubectl itself sends YAML 8.0 as 8).
    ("integer-as-integral-float", [("set", "spec.method.lora", {"r": 8.0})], "spec.method.lora.r", None),
    ("integer-read-by-cel-as-float", [*_CLS, ("set", "spec.classification", {"numLabels": 2.0})], "spec.classification.numLabels", None),
    ("quantity-as-integral-float", [("set", "spec.resources.cpu", 4.0)], "spec.resources.cpu", None),
    ("packing-string", [("set", "spec.dataset.packing", "true")], "spec.dataset.packing", None),
    ("seed-too-large", [("set", "spec.hyperparameters.seed", 2**32)], "spec.hyperparameters.seed", None),
    ("warmup-steps-beyond-int64", [("set", "spec.hyperparameters.warmupSteps", 2**63)], "spec.hyperparameters.warmupSteps", None),
    ("backoff-limit-too-large", [("set", "spec.runPolicy.backoffLimit", 21)], "spec.runPolicy.backoffLimit", None),
    ("bad-on-spec-change", [("set", "spec.runPolicy.onSpecChange", "restart")], "spec.runPolicy.onSpecChange", None),
    ("toleration-exists-with-value", [("set", "spec.resources.tolerations", [{"key": "gpu", "operator": "Exists", "value": "yes"}])], "spec.resources.tolerations[0].value", "value must be empty"),
    ("toleration-empty-key-equal", [("set", "spec.resources.tolerations", [{"operator": "Equal", "value": "x"}])], "spec.resources.tolerations[0].operator", "operator must be Exists"),
    ("toleration-seconds-without-noexecute", [("set", "spec.resources.tolerations", [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}])], "spec.resources.tolerations[0].tolerationSeconds", "NoExecute"),
    ("bad-image", [("set", "spec.resources.image", "my image:latest")], "spec.resources.image", None),
    ("bad-node-selector-value", [("set", "spec.resources.nodeSelector", {"pool": "a b"})], "spec.resources.nodeSelector.pool", None),
    ("name-too-long", [("set", "metadata.name", "x" * 53)], "metadata.name", None),
    # evaluation and the promotion gate (evaluation.py)
    ("promote-without-test", [("set", "spec.output.promote", {"metric": "loss"})], "spec.output.promote", "set dataset.test"),
    ("promote-threshold-without-value", [*_WITH_TEST, ("set", "spec.output.promote", {"metric": "loss", "rule": "threshold"})], "spec.output.promote.threshold", "needs threshold"),
    ("promote-threshold-with-beat-previous", [*_WITH_TEST, ("set", "spec.output.promote", {"metric": "loss", "threshold": 1.0})], "spec.output.promote.threshold", "applies only to rule threshold"),
    ("promote-metric-wrong-task", [*_WITH_TEST, ("set", "spec.output.promote", {"metric": "accuracy"})], "spec.output.promote.metric", "must be one the task computes"),
    ("promote-metric-not-evaluated", [*_WITH_TEST, ("set", "spec.evaluation", {"metrics": ["loss"]}), ("set", "spec.output.promote", {"metric": "perplexity"})], "spec.output.promote.metric", "one of evaluation.metrics"),
    ("promote-exact-match-on-text", [*_WITH_TEST, ("set", "spec.output.promote", {"metric": "exactMatch"})], "spec.output.promote.metric", "needs dataset.format prompt-completion"),
    ("evaluation-metric-wrong-task", [("set", "spec.evaluation", {"metrics": ["f1"]})], "spec.evaluation.metrics", "remove the metrics the task cannot compute"),
    ("evaluation-exact-match-on-text", [("set", "spec.evaluation", {"metrics": ["exactMatch"]})], "spec.evaluation.metrics", "remove exactMatch"),
    ("evaluation-metrics-repeated", [("set", "spec.evaluation", {"metrics": ["loss", "loss"]})], "spec.evaluation.metrics", None),
    ("best-checkpoint-without-validation", [("set", "spec.evaluation", {"bestCheckpoint": {}})], "spec.evaluation.bestCheckpoint", "set dataset.validation"),
    ("best-checkpoint-metric-wrong-task", [*_WITH_VALIDATION, ("set", "spec.evaluation", {"bestCheckpoint": {"metric": "f1"}})], "spec.evaluation.bestCheckpoint.metric", "must be one the task computes"),
    ("best-checkpoint-eval-steps", [*_WITH_VALIDATION, ("set", "spec.evaluation", {"bestCheckpoint": {}}), ("set", "spec.hyperparameters", {"evalStrategy": "steps", "evalSteps": 5})], "spec.evaluation.bestCheckpoint", "every epoch"),
    ("test-two-sources", [("set", "spec.dataset.test", {"splitFraction": 0.1, "s3Uri": "s3://bucket/test.jsonl"})], "spec.dataset.test", "exactly one of"),
    ("test-and-validation-fractions-too-large", [("set", "spec.dataset.test", {"splitFraction": 0.5}), ("set", "spec.dataset.validation", {"splitFraction": 0.5})], "spec.dataset.test.splitFraction", "below 0.9"),
]  # fmt: skip

# Manifests both sides must accept (edge cases of the rules above).
GOOD: list[tuple[str, list[Op]]] = [
    ("minimal", []),
    ("quantity-integer", [("set", "spec.resources.cpu", 4)]),
    ("quantity-strings", [("set", "spec.resources", {"cpu": "500m", "memory": "1.5Gi", "ephemeralStorage": "1e3", "shmSize": "+64Mi"})]),
    ("integer-for-number", [("set", "spec.hyperparameters.epochs", 2)]),
    ("null-means-unset", [("set", "spec.model.revision", None), ("set", "spec.hyperparameters", {"saveSteps": None, "warmupRatio": None})]),
    ("null-label-value", [("set", "spec.resources.nodeSelector", {"pool": "gpu", "zone": None})]),
    ("text-template", [("set", "spec.dataset.textTemplate", "Quote: {quote} Author: {author} {{x}} {score:>6.2f}")]),
    ("classification-names", [*_CLS, ("set", "spec.classification", {"labelNames": ["neg", "pos"]})]),
    ("early-stopping", [*_WITH_VALIDATION, ("set", "spec.hyperparameters", {"evalStrategy": "steps", "evalSteps": 5, "earlyStopping": {}})]),
    ("kms", [("set", "spec.output.sse", "aws:kms"), ("set", "spec.output.kmsKeyId", "arn:aws:kms:eu-west-1:1:key/x")]),
    ("tracking-off", [("set", "spec.tracking.reportTo", [])]),
    ("tolerations", [("set", "spec.resources.tolerations", [{"operator": "Exists"}, {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}])]),
    ("inline-rows-with-nulls", [("del", "spec.dataset.s3Uri"), ("set", "spec.dataset.inline", [{"text": "a", "extra": None, "nested": {"x": [1, None]}}])]),
    ("pvc-model", [("set", "spec.model", {"pvc": {"claimName": "models", "path": "/llama/7b"}})]),
    ("name-at-limit", [("set", "metadata.name", "x" * 52)]),
    ("two-gpus-ddp", [("set", "spec.resources", {"gpus": 2, "distribution": {"strategy": "ddp"}})]),
    ("two-nodes-cpu-processes", [("set", "spec.resources", {"nodes": 2, "distribution": {"processesPerNode": 2}}), ("set", "spec.runPolicy.schedulingTimeoutSeconds", 60)]),
    ("qlora-fsdp", [("set", "spec.method", {"type": "qlora"}), ("set", "spec.resources", {"gpus": 8, "distribution": {"strategy": "fsdp"}})]),
    ("promote-classification-f1", [*_CLS, ("set", "spec.classification", {"numLabels": 2}), *_WITH_TEST, *_WITH_VALIDATION, ("set", "spec.evaluation", {"metrics": ["f1", "accuracy"], "bestCheckpoint": {"metric": "f1"}}), ("set", "spec.output.promote", {"metric": "f1", "rule": "threshold", "threshold": 0.8})]),
    ("promote-exact-match", [("set", "spec.dataset.format", "prompt-completion"), ("set", "spec.dataset.test", {"s3Uri": "s3://bucket/test.jsonl"}), ("set", "spec.output.promote", {"metric": "exactMatch", "pointer": "chat-model"})]),
    ("promote-perplexity-default-metrics", [*_WITH_TEST, ("set", "spec.output.promote", {"metric": "perplexity", "direction": "minimize"})]),
]  # fmt: skip


def python_error(doc: dict[str, Any]) -> str | None:
    """None if the models accept `doc`, else every error as `loc: message` lines. A validator's
    message that starts with a path relative to its model (`path: ...`) is shown joined to the
    loc as well (`spec.model.pvc.path: ...`)."""
    try:
        FineTuneJob.model_validate(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"{loc}: {err['msg']}")
            rel = re.match(r"Value error, ([A-Za-z][\w.]*): ", err["msg"])
            if rel and not rel.group(1).startswith(("spec.", "metadata.")):
                lines.append(f"{loc}.{rel.group(1)}: {err['msg']}")
        return "\n".join(lines)
    return None


def normalize_path(text: str) -> str:
    """spec.a[0].b and spec.a.0.b both become spec.a.b (list indices differ in form)."""
    return re.sub(r"\.\d+(?=\.|:|$)", "", re.sub(r"\[\d+\]", "", text))


@pytest.mark.parametrize(("ops", "path", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifest_refused_naming_the_field(
    ops: list[Op], path: str, fragment: str | None
) -> None:
    err = python_error(apply_ops(ops))
    assert err is not None, "accepted"
    if path:
        want = normalize_path(path)
        named = False
        for line in err.splitlines():
            loc, _, msg = normalize_path(line).partition(": ")
            named = named or loc == want or f"{want}:" in msg
        assert named, f"no error names {want}:\n{err}"
    if fragment:
        assert fragment in err, err


@pytest.mark.parametrize("ops", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_manifest_accepted(ops: list[Op]) -> None:
    assert python_error(apply_ops(ops)) is None


def test_bad_cases_are_distinct() -> None:
    ids = [b[0] for b in BAD]
    assert len(ids) == len(set(ids))
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses_and_round_trips(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    job = FineTuneJob.model_validate(doc)
    assert job.metadata["name"] == path.stem
    assert len(job.metadata["name"]) <= c.MAX_NAME_LENGTH
    # What the operator would hand the trainer survives a JSON round trip unchanged.
    wire = job.spec.wire()
    assert c.FineTuneJobSpec.model_validate(wire).wire() == wire
    assert (
        c.FineTuneJobSpec.model_validate_json(job.spec.model_dump_json(by_alias=True)) == job.spec
    )


def test_examples_cover_the_seed_workflows() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "quickstart",
        "bert-sentiment-full",
        "bert-lora-classifier",
        "mistral-7b-qlora-quotes",
        "chat-messages-sft",
        "prompt-completion-sft",
        "prompt-tuning",
    } <= names
    specs = {
        p.stem: FineTuneJob.model_validate(yaml.safe_load(p.read_text())).spec for p in EXAMPLES
    }
    assert any(s.hyperparameters.early_stopping for s in specs.values())
    assert any("mlflow" in s.tracking.report_to for s in specs.values())


def test_quickstart_is_cpu_friendly() -> None:
    spec = FineTuneJob.model_validate(
        yaml.safe_load((REPO / "examples/quickstart.yaml").read_text())
    ).spec
    assert spec.model.s3_uri == "s3://kubetune/models/tiny-llama/"
    assert spec.dataset.s3_uri == "s3://kubetune/datasets/quickstart/train.jsonl"
    assert spec.output.uri == "s3://kubetune/output"
    assert spec.output.endpoint is None and spec.output.credentials_secret_ref is None
    assert spec.resources.gpus == 0
    h = spec.hyperparameters
    assert h.max_steps is not None and h.max_steps <= 50
    assert spec.dataset.max_seq_length <= 256 and h.batch_size == 8
    assert spec.method.lora is not None and spec.method.lora.r == 8
    assert h.save_strategy == "steps" and h.save_steps == 10
    assert spec.dataset.validation is not None and spec.dataset.validation.split_fraction
    assert h.eval_strategy == "steps"


def test_mistral_example_matches_the_seed_recipe() -> None:
    spec = FineTuneJob.model_validate(
        yaml.safe_load((REPO / "examples/mistral-7b-qlora-quotes.yaml").read_text())
    ).spec
    m, h, q = spec.method, spec.hyperparameters, spec.method.quantization
    assert m.type == "qlora" and m.lora is not None and q is not None
    assert (m.lora.r, m.lora.alpha, m.lora.dropout, m.lora.bias) == (16, 32, 0.05, "none")
    assert (q.bits, q.quant_type, q.double_quant, q.compute_dtype) == (4, "nf4", True, "bfloat16")
    assert (h.learning_rate, h.lr_scheduler, h.warmup_ratio, h.max_grad_norm) == (
        2e-4, "constant", 0.03, 0.3,
    )  # fmt: skip
    assert h.group_by_length and h.batch_size == 4 and h.precision == "bf16"
    assert spec.dataset.max_seq_length == 1024 and spec.resources.gpus == 1
    assert spec.tracking.report_to == ["tensorboard"]
    assert spec.dataset.text_template is not None
    row = {"quote": "Be yourself.", "author": "Oscar Wilde"}
    assert render_text_template(spec.dataset.text_template, row) == (
        "Quote: Be yourself. Author: Oscar Wilde"
    )
