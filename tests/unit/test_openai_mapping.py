"""The OpenAI-compatible API's pure mapping: request -> spec, FineTuneJob -> OpenAI objects,
file validation naming the line, pagination; and that no error echoes a credential."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")
from kubetune.openai_backend import Backend, Caller
from kubetune.openai_files import dpo_rows, validate_jsonl
from kubetune.openai_mapping import ApiError, Settings, job_events, job_object, job_spec, paginate

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
        ({"model": "tiny", "method": {"type": "reinforcement"}}, 400, "method.type",
         "must be 'supervised' or 'dpo'"),
        ({"model": "tiny", "method": {"type": "dpo"}}, 400, "training_file",
         "needs a preference (dpo) file"),
        ({"model": "tiny", "method": {"type": "supervised", "supervised": {
            "hyperparameters": {"beta": 0.2}}}}, 400, "method.supervised.hyperparameters.beta",
         "Unrecognized hyperparameter"),
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


def dpo(n: int, **change: Any) -> bytes:
    row = {"input": {"messages": [{"role": "user", "content": "Say hi"}]},
           "preferred_output": [{"role": "assistant", "content": "Hello!"}],
           "non_preferred_output": [{"role": "assistant", "content": "No."}]}  # fmt: skip
    return "".join(json.dumps(row | change) + "\n" for _ in range(n)).encode()


def test_a_dpo_file_validates_and_converts_to_prompt_chosen_rejected() -> None:
    assert validate_jsonl(dpo(3), method="dpo") == (3, "preference")
    assert validate_jsonl(dpo(2), method=None) == (2, "preference")  # an upload: method unknown
    rows = [json.loads(line) for line in dpo_rows(dpo(2)).decode().splitlines()]
    assert rows == [{"prompt": "Say hi", "chosen": "Hello!", "rejected": "No."}] * 2
    # several input turns: joined as role-labelled paragraphs, none dropped
    turns = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Say hi"}]}  # fmt: skip
    (row,) = [json.loads(x) for x in dpo_rows(dpo(1, input=turns)).decode().splitlines()]
    assert row["prompt"] == "System: Be brief.\n\nUser: Say hi"
    # and the converted rows are what the trainer's preference reader accepts
    from kubetune_api.v1alpha1 import DatasetSpec
    from kubetune_api.v1alpha1.rows import normalize_row

    ds = DatasetSpec.model_validate({"s3Uri": "s3://bkt/k", "format": "preference"})
    assert normalize_row(row, ds, None) == row


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"preferred_output": "Hello!"}, "line 2: preferred_output: must be one assistant turn"),
        ({"non_preferred_output": [{"role": "user", "content": "x"}]},
         "line 2: non_preferred_output: must be one assistant turn"),
        ({"non_preferred_output": [{"role": "assistant", "content": "Hello!"}]},
         "line 2: non_preferred_output: is the same as preferred_output"),
        ({"input": {"messages": [{"role": "robot", "content": "x"}]}},
         "line 2: input.messages[0].role: must be one of"),
        ({"input": {"messages": [{"role": "system", "content": "x"}]}},
         "line 2: input.messages: has no user turn"),
        ({"input": "Say hi"}, "line 2: input: must be an object"),
    ],
)  # fmt: skip
def test_a_bad_dpo_line_is_named_with_its_field(change: dict[str, Any], words: str) -> None:
    data = dpo(1) + dpo(1, **change)
    for call in (lambda: validate_jsonl(data, method="dpo"), lambda: dpo_rows(data)):
        with pytest.raises(ApiError) as e:
            call()
        assert words in e.value.message and e.value.body()["error"]["param"] == "file"


def test_dpo_and_supervised_files_do_not_cross() -> None:
    with pytest.raises(ApiError, match='line 1: is messages but method dpo needs "input"'):
        validate_jsonl(chat(1), method="dpo")
    with pytest.raises(ApiError, match="line 1: is a preference \\(dpo\\) row"):
        validate_jsonl(dpo(1))
    with pytest.raises(ApiError, match="line 2: is preference but the lines before are messages"):
        validate_jsonl(chat(1) + dpo(1), method=None)


def test_job_spec_for_dpo_is_a_valid_preference_job() -> None:
    from kubetune_api.v1alpha1 import FineTuneJobSpec, default_learning_rate

    settings = Settings(files_uri="s3://files/p", output_uri="s3://out/p",
                        models={"tiny": {"s3Uri": "s3://models/tiny/"}},
                        job_defaults={"resources": {"gpus": 1}})  # fmt: skip
    req = {"model": "tiny", "training_file": "file-x",
           "method": {"type": "dpo", "dpo": {"hyperparameters": {
               "beta": 0.3, "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 2}}}}  # fmt: skip
    spec, hyper = job_spec(req, settings, "s3://files/p/ns/file-x.preference.jsonl",
                           "preference", None)  # fmt: skip
    assert spec["task"] == "preference" and hyper["beta"] == 0.3
    assert spec["preference"] == {"algorithm": "dpo", "beta": 0.3}
    assert spec["dataset"]["format"] == "preference"
    hp = spec["hyperparameters"]
    assert (hp["epochs"], hp["batchSize"]) == (2, 2)
    # the multiplier multiplies the trainer's own DPO default, not the SFT one
    assert hp["learningRate"] == pytest.approx(2 * default_learning_rate("lora", "preference"))
    assert hp["learningRate"] < 1e-4
    FineTuneJobSpec.model_validate(spec)
    plain, _ = job_spec({"model": "tiny", "method": {"type": "dpo"}}, settings, "s3://fil/k",
                        "preference", None)  # fmt: skip
    assert plain["preference"] == {"algorithm": "dpo"}  # the API's default beta
    FineTuneJobSpec.model_validate(plain)
    shown = job_object({"metadata": {}, "spec": spec})["method"]
    assert shown == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 1.0, "beta": 0.3}}}  # fmt: skip


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


class _FakeS3:
    """The four S3 calls the Backend's file path makes, over a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, Metadata: dict[str, str],
                   ContentType: str) -> None:  # fmt: skip
        self.objects[(Bucket, Key)] = (Body, Metadata)

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        body, meta = self.objects[(Bucket, Key)]
        return {"Metadata": meta, "ContentLength": len(body)}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        from io import BytesIO

        return {"Body": BytesIO(self.objects[(Bucket, Key)][0])}


def test_a_dpo_job_trains_on_the_converted_file_beside_the_upload() -> None:

    b = Backend.__new__(Backend)
    b.settings = Settings(files_uri="s3://files/p", output_uri="s3://out/p",
                          models={"tiny": {"s3Uri": "s3://models/tiny/"}},
                          job_defaults={"resources": {"gpus": 1}})  # fmt: skip
    b.s3 = _FakeS3()
    created: list[dict[str, Any]] = []
    b.custom = SimpleNamespace(  # type: ignore[assignment]
        create_namespaced_custom_object=lambda g, v, ns, plural, body: created.append(body) or body
    )
    me = Caller("alice", [], "u", {}, "team-a")
    upload = b.put_file(me, "prefs.jsonl", "fine-tune", dpo(3))  # the method is not known yet
    job = b.create_job(me, {"model": "tiny", "training_file": upload["id"],
                            "validation_file": upload["id"], "method": {"type": "dpo"}})  # fmt: skip
    converted = f"p/team-a/{upload['id']}.preference.jsonl"
    spec = created[0]["spec"]
    assert spec["dataset"]["s3Uri"] == f"s3://files/{converted}"
    assert spec["dataset"]["validation"]["s3Uri"] == f"s3://files/{converted}"
    body = b.s3.objects[("files", converted)][0].decode().splitlines()
    assert [json.loads(x) for x in body] == [{"prompt": "Say hi", "chosen": "Hello!",
                                               "rejected": "No."}] * 3  # fmt: skip
    assert job["method"]["type"] == "dpo" and job["training_file"] == upload["id"]
    # the same upload for a supervised job: refused, naming the file
    with pytest.raises(ApiError) as e:
        b.create_job(me, {"model": "tiny", "training_file": upload["id"]})
    assert e.value.body()["error"]["param"] == "training_file"
