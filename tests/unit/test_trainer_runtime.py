"""Termination message, redaction, exit codes for config errors, checkpoint bookkeeping,
progress reporting (rate limit, body, failures), metrics, chat template checks."""

from __future__ import annotations

import itertools
import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubetune_api.v1alpha1 import ConfigError, DatasetSpec
from kubetune_trainer import result
from kubetune_trainer.__main__ import main
from kubetune_trainer.checkpoints import steps_in_listing, to_delete
from kubetune_trainer.logs import RedactingFilter, redact
from kubetune_trainer.metrics import accuracy, classification_metrics, macro_f1, perplexity
from kubetune_trainer.progress import ProgressReporter, patch_body
from pydantic import ValidationError
from specdocs import spec_doc

# --------------------------------------------------------------------------- result


def test_result_drops_non_numbers_and_fits_4k() -> None:
    r = result.build(
        outcome="Failed",
        reason="DatasetError",
        message="x" * 10000,
        retryable=False,
        artifacts={"adapterUri": "s3://b/a/", "mergedModelUri": None, "other": "no"},
        metrics={"eval_loss": 1.5, "nan": float("nan"), "flag": True, "s": "str", "n": 3},
    )
    assert r["artifacts"] == {"adapterUri": "s3://b/a/"}
    assert r["metrics"] == {"eval_loss": 1.5, "n": 3}
    text = result.encode(r)
    assert len(text.encode()) <= 4096
    back = json.loads(text)
    assert back["reason"] == "DatasetError" and back["outcome"] == "Failed"
    assert back["message"].endswith("[truncated]")
    many = result.build(
        outcome="Succeeded",
        reason="Completed",
        message="ok",
        retryable=False,
        metrics={f"metric_{i}": float(i) for i in range(400)} | {"eval_loss": 0.5},
    )
    small = json.loads(result.encode(many))
    assert small["metrics"]["eval_loss"] == 0.5 and small["message"] == "ok"
    assert len(result.encode(many).encode()) <= 4096


def test_result_multibyte_message_fits() -> None:
    r = result.build(outcome="Failed", reason="X", message="é" * 5000, retryable=True)
    assert len(result.encode(r).encode()) <= 4096


# --------------------------------------------------------------------------- logs


def test_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh")
    assert redact("key=very-secret-value tok=hf_abcdefgh") == "key=*** tok=***"
    rec = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "creds %s", ("very-secret-value",), None
    )
    RedactingFilter().filter(rec)
    assert rec.getMessage() == "creds ***"


# --------------------------------------------------------------------------- entry point


def test_bad_config_exits_10_with_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    term = tmp_path / "term"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(term))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"job": {"namespace": "n", "name": "x"}, "spec": {"task": "nope"}}))
    assert main(["--config", str(cfg)]) == 10
    t = json.loads(term.read_text())
    assert t["outcome"] == "Failed" and t["reason"] == "ConfigError" and t["retryable"] is False
    assert "spec.task" in t["message"] or "spec.model" in t["message"]
    assert main(["--config", str(tmp_path / "missing.json")]) == 10
    assert "not found" in json.loads(term.read_text())["message"]
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["--config", str(tmp_path / "bad.json")]) == 10
    assert "not readable JSON" in json.loads(term.read_text())["message"]
    monkeypatch.delenv("KUBETUNE_CONFIG", raising=False)
    assert main([]) == 10


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_listing_and_pruning() -> None:
    keys = [
        "checkpoint-10/adapter_model.safetensors",
        "checkpoint-10/COMPLETE",
        "checkpoint-20/COMPLETE",
        "checkpoint-30/COMPLETE",
        "checkpoint-25/optimizer.pt",  # dead upload, older than the newest complete
        "checkpoint-40/trainer_state.json",  # upload in progress
        "other/file",
    ]
    steps, complete = steps_in_listing(keys)
    assert steps == {10, 20, 25, 30, 40} and complete == {10, 20, 30}
    assert to_delete(steps, complete, keep=2, best=None) == [10, 25]
    assert to_delete(steps, complete, keep=2, best=10) == [25]
    assert to_delete(steps, complete, keep=1, best=None) == [10, 20, 25]
    assert to_delete(set(), set(), keep=2, best=None) == []


# --------------------------------------------------------------------------- progress


class FakeApi:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.fail = fail

    def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> None:
        self.calls.append(args)
        self.kwargs.append(kw)
        if self.fail:
            raise RuntimeError("connection refused")


def test_progress_body_is_camel_case() -> None:
    body = patch_body({"run": 2, "step": 5, "total_steps": 10, "eval_loss": 1.0, "stage": "train"})
    assert body == {
        "status": {
            "progress": {"run": 2, "step": 5, "totalSteps": 10, "evalLoss": 1.0, "stage": "train"}
        }
    }


def test_progress_rate_limited_and_forced() -> None:
    rep = ProgressReporter("ns", "job", 1, interval=30.0)
    api = FakeApi()
    rep._api = api
    rep.update(force=True, stage="train", step=0, total_steps=100)
    rep.flush()
    for step in range(1, 50):
        rep.update(step=step, loss=1.0 / step)
    time.sleep(0.3)
    assert len(api.calls) == 1  # within the interval: nothing more
    rep.update(force=True, stage="upload")
    rep.flush()
    rep.close()
    assert len(api.calls) == 2
    group, version, ns, plural, name, body = api.calls[-1]
    assert (group, version, ns, plural, name) == (
        "kubetune.io",
        "v1alpha1",
        "ns",
        "finetunejobs",
        "job",
    )
    progress = body["status"]["progress"]
    assert progress["step"] == 49 and progress["stage"] == "upload" and progress["run"] == 1
    assert progress["updatedAt"].endswith("Z")
    assert api.kwargs[-1]["_content_type"] == "application/merge-patch+json"


def test_progress_failures_never_raise() -> None:
    rep = ProgressReporter("ns", "job", 1, interval=0.0)
    rep._api = FakeApi(fail=True)
    for i in range(5):
        rep.update(step=i)
    rep.flush()
    rep.close()
    assert rep.failures >= 1 and rep.sent == 0


def test_progress_disabled_sends_nothing() -> None:
    rep = ProgressReporter("ns", "job", 1, interval=0.0, enabled=False)
    rep.update(step=1)
    rep.close()
    assert rep.sent == 0 and rep._thread is None


# --------------------------------------------------------------------------- metrics


def test_metrics() -> None:
    preds = np.array([0, 1, 1, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 2, 0])
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # per class F1: c0 2*1/(2+0+1)=2/3, c1 2/(2+1)=2/3, c2 2*2/(4+1+1)=2/3
    assert macro_f1(preds, labels, 4) == pytest.approx(2 / 3)
    assert perplexity(1.0) == pytest.approx(math.e)
    assert perplexity(None) is None and perplexity(float("nan")) is None

    class EP:
        predictions = np.array([[0.1, 0.9], [0.8, 0.2]])
        label_ids = np.array([1, 1])

    assert classification_metrics(2)(EP()) == {
        "accuracy": 0.5,
        "f1": pytest.approx(1 / 3),
        "precision": 0.5,  # class 0: 0 of 1 predicted right; class 1: 1 of 1
        "recall": 0.25,  # class 0: no label (0); class 1: 1 of 2
    }


# --------------------------------------------------------------------------- chat templates


def test_chat_template_checks_with_the_tiny_tokenizer() -> None:
    from kubetune_trainer.modelload import check_chat_template
    from kubetune_trainer.testing.tiny import build_llama_tokenizer

    tok = build_llama_tokenizer()
    msgs = DatasetSpec.model_validate({"s3Uri": "s3://bkt/d.jsonl", "format": "messages"})
    check_chat_template(tok, msgs)  # has {% generation %} markers
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "18 19"}]
    out = tok.apply_chat_template(turns, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "18 19<|end|>"  # the answer and its stop token are trained
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="generation"):
        check_chat_template(tok, msgs)
    no_ao = DatasetSpec.model_validate(
        {"s3Uri": "s3://bkt/d.jsonl", "format": "messages", "assistantOnlyLoss": False}
    )
    check_chat_template(tok, no_ao)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        check_chat_template(tok, no_ao)


# --------------------------------------------------------------------------- preflight


def test_preflight_refuses_what_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from kubetune_api.v1alpha1 import TrainerConfig
    from kubetune_trainer.pipeline import preflight

    def cfg(**spec: Any) -> TrainerConfig:
        return TrainerConfig.model_validate(
            {
                "job": {"namespace": "n", "name": "j"},
                "spec": spec_doc(**spec),
                "runPrefix": "s3://bkt/out/",
            }
        )

    preflight(cfg())
    # Prompt tuning with only a merged model requested: refused by the API itself (CEL), so no
    # config with it ever reaches the trainer.
    with pytest.raises(ValidationError, match=r"spec\.output\.adapter: prompt-tuning and prefix"):
        cfg(method={"type": "prompt-tuning"}, output={"uri": "s3://bkt/o", "adapter": False})
    # A custom trainer image without the MLflow client (ours has it): refused before any work.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="mlflow package is not installed"):
        preflight(
            cfg(tracking={"reportTo": ["mlflow"], "mlflow": {"trackingUri": "http://mlflow:5000"}})
        )


def _hold_resolve_lock(work: str, out: str) -> None:
    import time
    from pathlib import Path

    from kubetune_trainer.pipeline import _one_rank_at_a_time

    with _one_rank_at_a_time(Path(work)):
        start = time.monotonic()
        time.sleep(0.3)
        Path(out).write_text(f"{start} {time.monotonic()}")


def test_local_ranks_resolve_one_at_a_time(tmp_path: Path) -> None:
    """Ranks of one pod share the work directory; they go through downloads and data
    preparation one at a time (a file lock: it must hold without a process group)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"rank{i}" for i in range(3)]
    procs = [
        ctx.Process(target=_hold_resolve_lock, args=(str(tmp_path / "work"), str(o))) for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    spans = sorted(tuple(map(float, o.read_text().split())) for o in outs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans


def _tracking_cfg(tmp_path: Path) -> Any:
    from kubetune_api.v1alpha1 import TrainerConfig

    spec = {
        "task": "causal-lm",
        "model": {"s3Uri": "s3://bkt/m/"},
        "dataset": {"s3Uri": "s3://bkt/d.jsonl"},
        "method": {"type": "lora"},
        "output": {"uri": "s3://bkt/out"},
        "tracking": {
            "reportTo": ["mlflow"],
            "mlflow": {"trackingUri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "exp"},
        },
    }
    return TrainerConfig.model_validate(
        {
            "job": {"namespace": "ns", "name": "job", "run": 3},
            "spec": spec,
            "runPrefix": "s3://bkt/o/",
        }
    )


def test_tracking_run_scope_ends_the_mlflow_run_with_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One named, tagged MLflow run per block, FINISHED with the artifact URIs, or FAILED when
    the block raises (a real MLflow store: SQLite in tmp_path)."""
    import mlflow
    from kubetune_trainer import tracking
    from mlflow.tracking import MlflowClient

    cfg = _tracking_cfg(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.spec.tracking.mlflow.tracking_uri)
    mlflow.set_tracking_uri(cfg.spec.tracking.mlflow.tracking_uri)
    with tracking.run_scope(cfg, ["mlflow"]) as tracked:
        mlflow.log_metric("loss", 1.5, step=1)
        tracked.record_artifacts({"adapterUri": "s3://bkt/o/adapter/", "mergedModelUri": ""})
    with pytest.raises(RuntimeError), tracking.run_scope(cfg, ["mlflow"]):
        raise RuntimeError("training failed")
    assert mlflow.active_run() is None
    client = MlflowClient()
    exp = client.get_experiment_by_name("exp")
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    ok = runs[0]
    assert ok.info.run_name == "ns-job-run-3"
    assert ok.data.tags["kubetune.job"] == "job" and ok.data.tags["kubetune.run"] == "3"
    assert ok.data.tags["kubetune.adapterUri"] == "s3://bkt/o/adapter/"
    assert "kubetune.mergedModelUri" not in ok.data.tags  # empty URIs are left out
    assert ok.data.metrics["loss"] == 1.5


def test_tracking_server_away_fails_before_training_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the tracking URI: the job fails at once (retryable), saying which spec
    field points there, instead of training for hours and failing at the first log."""
    import mlflow
    from kubetune_api.v1alpha1 import TrainerError
    from kubetune_trainer import tracking

    cfg = _tracking_cfg(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    refused = pytest.raises(TrainerError, match=r"tracking\.mlflow\.trackingUri: cannot start")
    with refused as e, tracking.run_scope(cfg, ["mlflow"]):
        pytest.fail("the block must not run")
    assert e.value.retryable
    assert mlflow.active_run() is None


def test_unreachable_tracking_server_is_a_config_error_in_seconds(tmp_path: Path) -> None:
    """Nothing listens at spec.tracking.mlflow.trackingUri: a non-retryable ConfigError naming
    the field, before any client retry loop (which took ~5.5 min per attempt)."""
    import time

    from kubetune_api.v1alpha1 import ConfigError, TrainerConfig
    from kubetune_trainer import tracking

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _tracking_cfg(tmp_path)
    raw = cfg.model_dump(by_alias=True, exclude_none=True)
    raw["spec"]["tracking"]["mlflow"]["trackingUri"] = f"http://127.0.0.1:{port}"
    cfg = TrainerConfig.model_validate(raw)
    start = time.monotonic()
    with (
        pytest.raises(ConfigError, match=r"tracking\.mlflow\.trackingUri: .*unreachable") as e,
        tracking.run_scope(cfg, ["mlflow"]),
    ):
        pytest.fail("the block must not run")
    assert not e.value.retryable and e.value.exit_code == 10
    assert time.monotonic() - start < 6


def test_reachable_tracking_address_passes_the_check() -> None:
    from kubetune_trainer import tracking

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        tracking.check_reachable("tracking.wandb.baseUrl", f"http://127.0.0.1:{port}/")
    tracking.check_reachable("tracking.mlflow.trackingUri", "sqlite:///tmp/x.db")  # not a server
