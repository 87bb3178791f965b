"""The OpenAI-compatible API's pure mapping: request -> spec, FineTuneJob -> OpenAI objects,
file validation naming the line, pagination; and that no error echoes a credential."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")
from kubetune.openai_api import (
    ApiError,
    Backend,
    Settings,
    job_events,
    job_object,
    job_spec,
    paginate,
    validate_jsonl,
)

SETTINGS = Settings(
    files_uri="s3://files/p",
    output_uri="s3://out/p",
    models={"tiny": {"s3Uri": "s3://models/tiny/"}},
    job_defaults={"hyperparameters": {"learningRate": 0.001, "maxSteps": 5}},
)


def chat(n: int) -> bytes:
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    return "".join(json.dumps(row) + "\n" for _ in range(n)).encode()


def test_validate_jsonl_names_the_line_and_the_field() -> None:
    assert validate_jsonl(chat(3)) == (3, "messages")
    lines = chat(4).decode().splitlines()
    lines[3] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    with pytest.raises(ApiError) as e:
        validate_jsonl("\n".join(lines).encode())
    assert e.value.message.startswith("Invalid file format: line 4: messages:")
    assert e.value.body()["error"]["param"] == "file"
    with pytest.raises(ApiError, match="line 2: not valid JSON"):
        validate_jsonl(b'{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(ApiError, match="line 2: is messages but the lines before"):
        validate_jsonl(b'{"prompt": "a", "completion": "b"}\n' + chat(1))


def test_hyperparameters_map_onto_the_spec() -> None:
    req = {"model": "tiny", "training_file": "file-x", "seed": 7,
           "method": {"type": "supervised", "supervised": {"hyperparameters": {
               "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}}}}  # fmt: skip
    spec, hyper = job_spec(req, SETTINGS, "s3://files/p/ns/file-x.jsonl", "messages", None)
    hp = spec["hyperparameters"]
    assert hp["epochs"] == 3 and "maxSteps" not in hp  # n_epochs wins over the default maxSteps
    assert hp["batchSize"] == 8 and hp["learningRate"] == pytest.approx(0.0005) and hp["seed"] == 7
    assert spec["model"] == {"s3Uri": "s3://models/tiny/"} and spec["output"]["uri"] == "s3://out/p"
    assert spec["dataset"] == {"s3Uri": "s3://files/p/ns/file-x.jsonl", "format": "messages"}
    assert hyper["learning_rate_multiplier"] == 0.5
    auto, _ = job_spec({"model": "tiny", "hyperparameters": {"n_epochs": "auto"}}, SETTINGS,
                       "s3://f/k", "messages", None)  # fmt: skip
    assert auto["hyperparameters"] == {"learningRate": 0.001, "maxSteps": 5}


@pytest.mark.parametrize(
    ("req", "status", "param", "words"),
    [
        ({"model": "gpt-4o"}, 404, "model", "does not exist"),
        ({"model": "tiny", "temperature": 1}, 400, "temperature", "Unrecognized request argument"),
        ({"model": "tiny", "hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs",
         "positive integer"),
        ({"model": "tiny", "hyperparameters": {"warp": 1}}, 400, "hyperparameters.warp",
         "Unrecognized hyperparameter"),
        ({"model": "tiny", "method": {"type": "dpo"}}, 400, "method.type", "not supported"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_openai_error_shape(
    req: dict[str, Any], status: int, param: str, words: str
) -> None:
    with pytest.raises(ApiError) as e:
        job_spec(req, SETTINGS, "s3://f/k", "messages", None)
    body = e.value.body()["error"]
    assert e.value.status == status and body["param"] == param and words in body["message"]
    assert set(body) == {"message", "type", "param", "code"}


def _ftj(phase: str, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "ftjob-0123456789abcdef0123", "namespace": "team-a",
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {"kubetune.io/openai-model": "tiny"} | extra.pop("ann", {})},
        "spec": {"hyperparameters": {"epochs": 2, "batchSize": 4}},
        "status": {"phase": phase, "completionTime": "2026-01-01T00:10:00Z", **extra},
    }  # fmt: skip


def test_job_object_statuses_and_fine_tuned_model() -> None:
    ok = job_object(_ftj("Succeeded", artifacts={"mergedModelUri": "s3://o/m/"}))
    assert (ok["status"], ok["fine_tuned_model"], ok["model"]) == ("succeeded", "s3://o/m/", "tiny")
    assert ok["finished_at"] == ok["created_at"] + 600
    assert job_object(_ftj("Running"))["fine_tuned_model"] is None
    cancelled = job_object(_ftj("Suspended", ann={"kubetune.io/cancelled-at": "x"}))
    assert cancelled["status"] == "cancelled"
    failed = job_object(_ftj("Failed", message="GPU OOM", conditions=[
        {"type": "Failed", "status": "True", "reason": "GpuOutOfMemory"}]))  # fmt: skip
    assert failed["error"] == {"code": "GpuOutOfMemory", "message": "GPU OOM", "param": None}


def test_events_newest_first_with_progress_as_metrics() -> None:
    obj = _ftj("Succeeded", progress={"step": 5, "totalSteps": 5, "loss": 1.5,
                                      "updatedAt": "2026-01-01T00:09:00Z"})  # fmt: skip
    k8s = [{"type": "Normal", "reason": "Created", "message": "run 1",
            "lastTimestamp": "2026-01-01T00:00:01Z", "metadata": {"uid": "u1"}}]  # fmt: skip
    evs = job_events(obj, k8s)
    assert evs[0]["message"] == "The job has successfully completed"
    assert evs[1]["type"] == "metrics" and evs[1]["data"]["train_loss"] == 1.5
    assert evs[-1]["message"].startswith("Created fine-tuning job")
    assert len({e["id"] for e in evs}) == len(evs)


def test_paginate_after_and_limit() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    assert paginate(items, None, 2) == {"object": "list", "data": items[:2], "has_more": True}
    assert paginate(items, "i2", 5)["data"] == items[3:]
    assert paginate(items, "i4", 5) == {"object": "list", "data": [], "has_more": False}


def test_a_token_in_the_wrong_header_is_never_echoed() -> None:
    b = Backend.__new__(Backend)
    b.settings = SETTINGS
    user = SimpleNamespace(username="system:serviceaccount:team-a:alice", groups=[], uid="u",
                           extra=None)  # fmt: skip
    review = SimpleNamespace(status=SimpleNamespace(authenticated=True, user=user))
    b.authn = SimpleNamespace(create_token_review=lambda body: review)  # type: ignore[assignment]
    from kubernetes import client as k8s

    b.k8s = k8s
    secret = "Bearer eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"
    with pytest.raises(ApiError) as e:
        b.authenticate("Bearer t", project=secret)
    assert "eyJ" not in json.dumps(e.value.body())
    assert b.authenticate("Bearer t", project=None).namespace == "team-a"
