"""An OpenAI-compatible fine-tuning API over FineTuneJobs (docs/openai-api.md).

    kubetune-openai-api        (uvicorn on $KUBETUNE_API_PORT, default 8000)

Endpoints: POST/GET /v1/files (purpose fine-tune, stored in S3), POST/GET
/v1/fine_tuning/jobs (list paginated with `after`/`limit`), GET /v1/fine_tuning/jobs/{id},
POST .../cancel, GET .../events, GET .../checkpoints.

Security model: every request carries `Authorization: Bearer <Kubernetes token>`. The server
asks the API server who that is (TokenReview), picks the caller's namespace (the
`OpenAI-Project` header, else a ServiceAccount's own namespace), and asks whether that user
may perform the matching verb on `finetunejobs.kubetune.io` there (SubjectAccessReview) before
it does anything. Jobs and files live per namespace, so a token sees only what RBAC gives it;
another team's job is 404 in your namespace and 403 in theirs. The server's own
ServiceAccount needs only: create tokenreviews and subjectaccessreviews; get/list/create/patch
finetunejobs; list events; and S3 access to the files prefix.

Pure mapping functions in the middle (OpenAI request -> FineTuneJob, FineTuneJob -> OpenAI
job/events/checkpoints, JSONL validation naming the line); FastAPI and the clients at the edges.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kubernetes.client.exceptions import ApiException
from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, FineTuneJob
from pydantic import ValidationError

from kubetune.client import CANCELLED_ANNOTATION

JOB_PREFIX = "ftjob-"
FILE_PREFIX = "file-"
ANN_SUFFIX = f"{API_GROUP}/openai-suffix"
ANN_TRAINING_FILE = f"{API_GROUP}/openai-training-file"
ANN_VALIDATION_FILE = f"{API_GROUP}/openai-validation-file"
ANN_MODEL = f"{API_GROUP}/openai-model"
ANN_LR_MULT = f"{API_GROUP}/openai-learning-rate-multiplier"
LABEL_OPENAI = f"{API_GROUP}/openai-api"
DEFAULT_LR = 2e-4


class ApiError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# ------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    files_uri: str  # s3://bucket/prefix where uploads go (<prefix>/<namespace>/<file-id>.jsonl)
    output_uri: str  # spec.output.uri of the jobs it creates
    models: dict[str, dict[str, Any]]  # OpenAI model name -> spec.model
    job_defaults: dict[str, Any] = field(default_factory=dict)  # spec fragment merged in
    default_namespace: str | None = None
    max_file_bytes: int = 512 * 2**20

    @classmethod
    def from_env(cls) -> Settings:
        def js(name: str, default: Any) -> Any:
            raw = os.environ.get(name)
            if not raw:
                return default
            if not raw.lstrip().startswith(("{", "[")) and os.path.isfile(raw):
                with open(raw, encoding="utf-8") as f:
                    raw = f.read()
            return json.loads(raw)

        files = os.environ.get("KUBETUNE_API_FILES_URI", "")
        out = os.environ.get("KUBETUNE_API_OUTPUT_URI", "")
        if not files.startswith("s3://") or not out.startswith("s3://"):
            raise SystemExit("KUBETUNE_API_FILES_URI and KUBETUNE_API_OUTPUT_URI: s3:// URIs")
        return cls(
            files_uri=files.rstrip("/"),
            output_uri=out.rstrip("/"),
            models=js("KUBETUNE_API_MODELS", {}),
            job_defaults=js("KUBETUNE_API_JOB_DEFAULTS", {}),
            default_namespace=os.environ.get("KUBETUNE_API_DEFAULT_NAMESPACE") or None,
            max_file_bytes=int(os.environ.get("KUBETUNE_API_MAX_FILE_BYTES", 512 * 2**20)),
        )


# ------------------------------------------------------------------------------ pure: files


def validate_jsonl(data: bytes, method: str = "supervised") -> tuple[int, str]:
    """(rows, dataset format) of an uploaded training file, or ApiError naming the first bad
    line: chat rows ({"messages": [...]}) or prompt/completion rows, one JSON object a line."""
    from kubetune_api.v1alpha1.rows import RowError, normalize_messages

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400, f"Invalid file: not UTF-8 text ({e})", param="file", code="invalid_file_format"
        ) from e
    rows, fmt = 0, None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad_line(n, f"not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise _bad_line(n, "must be a JSON object")
        kind = "messages" if "messages" in row else "prompt-completion" if "prompt" in row else None
        if kind is None:
            raise _bad_line(n, 'needs "messages" (chat) or "prompt" and "completion"')
        if fmt is not None and kind != fmt:
            raise _bad_line(n, f"is {kind} but the lines before are {fmt}")
        fmt = kind
        try:
            if kind == "messages":
                normalize_messages(row["messages"], "messages", need_assistant=True)
            elif not isinstance(row.get("completion"), str) or not row["completion"]:
                raise RowError("completion", "must be a non-empty string")
            elif not isinstance(row.get("prompt"), str):
                raise RowError("prompt", "must be a string")
        except RowError as e:
            raise _bad_line(n, f"{e.field}: {e.problem}") from e
        rows += 1
    if not rows or fmt is None:
        raise ApiError(
            400, "Invalid file: no training examples", param="file", code="invalid_file_format"
        )
    return rows, fmt


def _bad_line(n: int, problem: str) -> ApiError:
    return ApiError(
        400, f"Invalid file format: line {n}: {problem}", param="file", code="invalid_file_format"
    )


def file_object(file_id: str, meta: dict[str, str], size: int, created: int) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created,
        "filename": meta.get("filename", file_id + ".jsonl"),
        "purpose": meta.get("purpose", "fine-tune"),
        "status": "processed",
        "status_details": None,
    }


# ------------------------------------------------------------------------------ pure: jobs

_HYPER = {"n_epochs", "batch_size", "learning_rate_multiplier"}
_CREATE_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "integrations",
    "metadata",
}


def _hyper(h: Any, where: str) -> dict[str, Any]:
    if h is None:
        return {}
    if not isinstance(h, dict):
        raise ApiError(400, f"{where} must be an object", param=where)
    unknown = sorted(set(h) - _HYPER - {"beta"})
    if unknown:
        raise ApiError(
            400,
            f"Unrecognized hyperparameter: {unknown[0]!r} (supported: {', '.join(sorted(_HYPER))})",
            param=f"{where}.{unknown[0]}",
        )
    out: dict[str, Any] = {}
    for key, value in h.items():
        if value == "auto" or value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if key in ("n_epochs", "batch_size"):
            ok = ok and isinstance(value, int)
        if not ok:
            kind = (
                "a positive integer" if key in ("n_epochs", "batch_size") else "a positive number"
            )
            raise ApiError(
                400,
                f"{where}.{key} must be {kind} or 'auto', got {value!r}",
                param=f"{where}.{key}",
            )
        out[key] = value
    return out


def job_spec(
    req: dict[str, Any],
    settings: Settings,
    training_uri: str,
    training_format: str,
    validation_uri: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, OpenAI hyperparameters as given) for a create request (pure)."""
    unknown = sorted(set(req) - _CREATE_FIELDS)
    if unknown:
        raise ApiError(
            400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "Missing required parameter: 'model'", param="model")
    if model not in settings.models:
        known = ", ".join(sorted(settings.models)) or "none configured"
        raise ApiError(
            404,
            f"The model '{model}' does not exist or is not available for "
            f"fine-tuning here (available: {known})",
            param="model",
            code="model_not_found",
        )
    hyper = _hyper(req.get("hyperparameters"), "hyperparameters")
    method = req.get("method")
    if method is not None:
        if not isinstance(method, dict):
            raise ApiError(400, "method must be an object", param="method")
        mtype = method.get("type", "supervised")
        if mtype == "dpo":
            raise ApiError(
                400,
                "method.type 'dpo' is not supported by this server: kubetune "
                "trains supervised fine-tuning (LoRA/QLoRA/full) only",
                param="method.type",
                code="unsupported_method",
            )
        if mtype != "supervised":
            raise ApiError(
                400,
                f"method.type must be 'supervised' or 'dpo', got {mtype!r}",
                param="method.type",
            )
        sub = method.get("supervised") or {}
        hyper |= _hyper(sub.get("hyperparameters"), "method.supervised.hyperparameters")
    spec: dict[str, Any] = json.loads(json.dumps(settings.job_defaults))  # a deep copy
    spec["model"] = dict(settings.models[model])
    dataset = dict(spec.get("dataset") or {})
    dataset.update({"s3Uri": training_uri, "format": training_format})
    if validation_uri:
        dataset["validation"] = {"s3Uri": validation_uri}
    spec["dataset"] = dataset
    spec.setdefault("method", {"type": "lora"})
    spec["output"] = {**(spec.get("output") or {}), "uri": settings.output_uri}
    hp = dict(spec.get("hyperparameters") or {})
    if "n_epochs" in hyper:
        hp["epochs"] = hyper["n_epochs"]
        hp.pop("maxSteps", None)
    if "batch_size" in hyper:
        hp["batchSize"] = hyper["batch_size"]
    if "learning_rate_multiplier" in hyper:
        base = float(hp.get("learningRate", DEFAULT_LR))
        hp["learningRate"] = base * float(hyper["learning_rate_multiplier"])
    seed = req.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ApiError(400, "seed must be an integer", param="seed")
        hp["seed"] = seed
    if hp:
        spec["hyperparameters"] = hp
    return spec, hyper


_STATUS = {"Pending": "queued", "Running": "running", "Succeeded": "succeeded", "Failed": "failed"}


def _ts(value: str | None) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def job_object(obj: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob as OpenAI's fine_tuning.job (pure)."""
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    st = obj.get("status") or {}
    spec = obj.get("spec") or {}
    phase = st.get("phase") or "Pending"
    status = _STATUS.get(phase, "queued")
    if ann.get(CANCELLED_ANNOTATION) and phase != "Succeeded":
        status = "cancelled"
    elif phase == "Suspended":
        status = "queued"
    arts = st.get("artifacts") or {}
    hp = spec.get("hyperparameters") or {}
    err = None
    if status == "failed":
        reason = next(
            (
                c.get("reason")
                for c in st.get("conditions") or []
                if c.get("type") == "Failed" and c.get("status") == "True"
            ),
            None,
        )
        err = {"code": reason or "Failed", "message": st.get("message") or "", "param": None}
    hyper = {
        "n_epochs": hp.get("epochs", 1),
        "batch_size": hp.get("batchSize", 4),
        "learning_rate_multiplier": float(ann.get(ANN_LR_MULT, 1.0)),
    }
    progress = st.get("progress") or {}
    eta = progress.get("etaSeconds")
    return {
        "object": "fine_tuning.job",
        "id": meta.get("name"),
        "model": ann.get(ANN_MODEL) or "",
        "created_at": _ts(meta.get("creationTimestamp")) or 0,
        "finished_at": _ts(st.get("completionTime")) if status in ("succeeded", "failed") else None,
        "fine_tuned_model": (arts.get("mergedModelUri") or arts.get("adapterUri"))
        if status == "succeeded"
        else None,
        "organization_id": meta.get("namespace"),
        "result_files": [],
        "status": status,
        "validation_file": ann.get(ANN_VALIDATION_FILE),
        "training_file": ann.get(ANN_TRAINING_FILE) or "",
        "hyperparameters": hyper,
        "trained_tokens": None,
        "error": err,
        "seed": hp.get("seed", 42),
        "estimated_finish": int(time.time()) + int(eta) if eta and status == "running" else None,
        "integrations": [],
        "user_provided_suffix": ann.get(ANN_SUFFIX),
        "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
    }


def job_events(obj: dict[str, Any], k8s_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """fine_tuning.job.event objects, newest first: the Kubernetes Events of the FineTuneJob,
    its conditions' transitions, and the latest progress as a metrics event (pure)."""
    name = (obj.get("metadata") or {}).get("name", "")
    st = obj.get("status") or {}
    out: list[tuple[int, str, dict[str, Any]]] = []

    def add(
        when: int, key: str, level: str, message: str, data: Any = None, kind: str = "message"
    ) -> None:
        eid = "ftevent-" + re.sub(r"[^a-z0-9]", "", f"{name}{key}".lower())[-40:]
        out.append(
            (
                when,
                eid,
                {
                    "object": "fine_tuning.job.event",
                    "id": eid,
                    "created_at": when,
                    "level": level,
                    "message": message,
                    "data": data or {},
                    "type": kind,
                },
            )
        )

    created = _ts((obj.get("metadata") or {}).get("creationTimestamp")) or 0
    add(created, "created", "info", f"Created fine-tuning job: {name}")
    for ev in k8s_events:
        when = _ts(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp"))
        level = "warn" if ev.get("type") == "Warning" else "info"
        uid = (ev.get("metadata") or {}).get("uid", "")
        add(when or created, "ev" + uid, level, f"{ev.get('reason')}: {ev.get('message')}")
    p = st.get("progress") or {}
    if p.get("step") is not None:
        when = _ts(p.get("updatedAt")) or created
        data = {
            "step": p.get("step"),
            "total_steps": p.get("totalSteps"),
            "train_loss": p.get("loss"),
            "valid_loss": p.get("evalLoss"),
        }
        add(
            when,
            f"step{p.get('step')}",
            "info",
            f"Step {p.get('step')}/{p.get('totalSteps')}: training loss={p.get('loss')}",
            data,
            "metrics",
        )
    status = job_object(obj)["status"]
    if status in ("succeeded", "failed", "cancelled"):
        when = _ts(st.get("completionTime")) or (max((e[0] for e in out), default=created) + 1)
        level = "error" if status == "failed" else "info"
        msg = {
            "succeeded": "The job has successfully completed",
            "failed": f"The job failed: {st.get('message') or ''}",
            "cancelled": "The job was cancelled",
        }[status]
        add(when, "end", level, msg)
    out.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [e for _, _, e in out]


def paginate(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI cursor pagination over items already in order: those after the id `after`."""
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


# ------------------------------------------------------------------------------ the edges


@dataclass
class Caller:
    username: str
    groups: list[str]
    uid: str
    extra: dict[str, list[str]]
    namespace: str


class Backend:
    """Kubernetes and S3 for the server (its own identity; callers are checked first)."""

    def __init__(self, settings: Settings, api_client: Any = None, s3: Any = None) -> None:
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        if api_client is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            api_client = k8s.ApiClient()
        self.settings = settings
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.authn = k8s.AuthenticationV1Api(api_client)
        self.authz = k8s.AuthorizationV1Api(api_client)
        self.k8s = k8s
        if s3 is None:
            import boto3

            s3 = boto3.client("s3")
        self.s3 = s3

    # -- authentication and authorization ----------------------------------------------
    def authenticate(self, authorization: str | None, project: str | None) -> Caller:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(
                401,
                "You didn't provide an API key: send a Kubernetes bearer token "
                "in the Authorization header",
                code="invalid_api_key",
            )
        token = authorization.split(None, 1)[1].strip()
        review = self.authn.create_token_review(
            self.k8s.V1TokenReview(spec=self.k8s.V1TokenReviewSpec(token=token))
        )
        st = review.status
        if not st or not st.authenticated or not st.user:
            raise ApiError(
                401,
                "Incorrect API key provided: the Kubernetes API server did not accept this token",
                code="invalid_api_key",
            )
        user = st.user
        namespace = project or None
        m = re.match(r"^system:serviceaccount:([^:]+):", user.username or "")
        if namespace is None and m:
            namespace = m.group(1)
        namespace = namespace or self.settings.default_namespace
        if not namespace:
            raise ApiError(
                400,
                "No namespace: send the OpenAI-Project header with your namespace",
                param="OpenAI-Project",
            )
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
            # (the value is not echoed: a misplaced token must not come back in a response)
            raise ApiError(
                400,
                "the OpenAI-Project header must be a namespace name (lowercase letters, digits, "
                "'-', at most 63 characters)",
                param="OpenAI-Project",
            )
        return Caller(
            user.username or "",
            list(user.groups or []),
            user.uid or "",
            dict(user.extra or {}),
            namespace,
        )

    def authorize(self, caller: Caller, verb: str) -> None:
        sar = self.k8s.V1SubjectAccessReview(
            spec=self.k8s.V1SubjectAccessReviewSpec(
                user=caller.username,
                groups=caller.groups,
                uid=caller.uid,
                extra=caller.extra or None,
                resource_attributes=self.k8s.V1ResourceAttributes(
                    group=API_GROUP, resource=PLURAL, namespace=caller.namespace, verb=verb
                ),
            )
        )
        out = self.authz.create_subject_access_review(sar)
        if not (out.status and out.status.allowed):
            raise ApiError(
                403,
                f"{caller.username} may not {verb} finetunejobs.kubetune.io in "
                f"namespace {caller.namespace}",
                type="invalid_request_error",
                code="permission_denied",
            )

    # -- files ---------------------------------------------------------------------------
    def _file_key(self, namespace: str, file_id: str) -> tuple[str, str]:
        bucket, _, prefix = self.settings.files_uri.removeprefix("s3://").partition("/")
        key = "/".join(p for p in (prefix, namespace, f"{file_id}.jsonl") if p)
        return bucket, key

    def put_file(self, caller: Caller, filename: str, purpose: str, data: bytes) -> dict:
        if purpose != "fine-tune":
            raise ApiError(
                400, f"purpose {purpose!r} is not supported here: use 'fine-tune'", param="purpose"
            )
        if len(data) > self.settings.max_file_bytes:
            raise ApiError(
                413,
                f"File too large: {len(data)} bytes, at most {self.settings.max_file_bytes}",
                param="file",
            )
        rows, fmt = validate_jsonl(data)
        file_id = FILE_PREFIX + secrets.token_hex(12)
        bucket, key = self._file_key(caller.namespace, file_id)
        meta = {"filename": filename[:200], "purpose": purpose, "format": fmt, "rows": str(rows)}
        self.s3.put_object(
            Bucket=bucket, Key=key, Body=data, Metadata=meta, ContentType="application/jsonl"
        )
        return file_object(file_id, meta, len(data), int(time.time()))

    def head_file(self, caller: Caller, file_id: str, param: str = "file_id") -> tuple[str, dict]:
        if not re.match(r"^file-[0-9a-f]{24}$", file_id or ""):
            raise ApiError(404, f"No such File object: {file_id}", param=param)
        bucket, key = self._file_key(caller.namespace, file_id)
        try:
            h = self.s3.head_object(Bucket=bucket, Key=key)
        except Exception as e:
            raise ApiError(404, f"No such File object: {file_id}", param=param) from e
        meta = dict(h.get("Metadata") or {})
        created = int(h["LastModified"].timestamp()) if h.get("LastModified") else 0
        return f"s3://{bucket}/{key}", file_object(
            file_id, meta, int(h["ContentLength"]), created
        ) | {"_format": meta.get("format")}

    def list_files(self, caller: Caller) -> list[dict]:
        bucket, key = self._file_key(caller.namespace, "x")
        prefix = key.rsplit("/", 1)[0] + "/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        out = []
        for page in pages:
            for o in page.get("Contents", []):
                fid = o["Key"].rsplit("/", 1)[-1].removesuffix(".jsonl")
                out.append(self.head_file(caller, fid)[1])
        return sorted(out, key=lambda f: f["created_at"], reverse=True)

    # -- jobs ----------------------------------------------------------------------------
    def create_job(self, caller: Caller, req: dict[str, Any]) -> dict:
        training = req.get("training_file")
        if not isinstance(training, str):
            raise ApiError(
                400, "Missing required parameter: 'training_file'", param="training_file"
            )
        train_uri, train_file = self.head_file(caller, training, "training_file")
        val_id = req.get("validation_file")
        val_uri = self.head_file(caller, val_id, "validation_file")[0] if val_id else None
        spec, hyper = job_spec(
            req, self.settings, train_uri, train_file.get("_format") or "messages", val_uri
        )
        name = JOB_PREFIX + secrets.token_hex(10)
        suffix = req.get("suffix")
        ann = {
            ANN_MODEL: req["model"],
            ANN_TRAINING_FILE: training,
            f"{API_GROUP}/openai-user": caller.username[:250],
        }
        if val_id:
            ann[ANN_VALIDATION_FILE] = val_id
        if suffix:
            ann[ANN_SUFFIX] = str(suffix)[:64]
        if "learning_rate_multiplier" in hyper:
            ann[ANN_LR_MULT] = str(hyper["learning_rate_multiplier"])
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "FineTuneJob",
            "metadata": {
                "name": name,
                "namespace": caller.namespace,
                "annotations": ann,
                "labels": {LABEL_OPENAI: "true"},
            },
            "spec": spec,
        }
        try:
            FineTuneJob.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{loc}: {first['msg']}", param=loc) from e
        out: Any = self.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, caller.namespace, PLURAL, body
        )
        return job_object(out)

    def get_obj(self, caller: Caller, job_id: str) -> dict[str, Any]:
        if not re.match(r"^ftjob-[0-9a-f]{20}$", job_id or ""):
            raise ApiError(
                404, f"Could not find fine-tune job: {job_id}", param="fine_tuning_job_id"
            )
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, caller.namespace, PLURAL, job_id
            )
        except self.k8s.exceptions.ApiException as e:
            if e.status == 404:
                raise ApiError(
                    404, f"Could not find fine-tune job: {job_id}", param="fine_tuning_job_id"
                ) from e
            raise
        return obj

    def list_jobs(self, caller: Caller) -> list[dict[str, Any]]:
        out: Any = self.custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, caller.namespace, PLURAL, label_selector=f"{LABEL_OPENAI}=true"
        )
        items = [job_object(o) for o in out.get("items", [])]
        return sorted(items, key=lambda j: (j["created_at"], j["id"]), reverse=True)

    def cancel(self, caller: Caller, job_id: str) -> dict[str, Any]:
        obj = self.get_obj(caller, job_id)
        if job_object(obj)["status"] in ("succeeded", "failed", "cancelled"):
            raise ApiError(
                400,
                f"Job {job_id} has already {job_object(obj)['status']}; "
                "only a running or queued job can be cancelled",
                param="fine_tuning_job_id",
            )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out: Any = self.custom.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            caller.namespace,
            PLURAL,
            job_id,
            {
                "metadata": {"annotations": {CANCELLED_ANNOTATION: stamp}},
                "spec": {"runPolicy": {"suspend": True}},
            },
        )
        return job_object(out)

    def events(self, caller: Caller, job_id: str) -> list[dict[str, Any]]:
        obj = self.get_obj(caller, job_id)
        evs = self.core.list_namespaced_event(
            caller.namespace,
            field_selector=f"involvedObject.name={job_id},involvedObject.kind=FineTuneJob",
        )
        raw = [self.core.api_client.sanitize_for_serialization(e) for e in evs.items]
        return job_events(obj, raw)

    def checkpoints(self, caller: Caller, job_id: str) -> list[dict[str, Any]]:
        """checkpoint-<step>/ prefixes under the run's checkpoints/, and the final adapter."""
        obj = self.get_obj(caller, job_id)
        st = obj.get("status") or {}
        arts = st.get("artifacts") or {}
        out = []
        base = arts.get("checkpointUri") or ""
        run_prefix = (arts.get("manifestUri") or "").removesuffix("manifest.json")
        prefixes = [base.rstrip("/").rsplit("/", 1)[0] + "/"] if base else []
        if run_prefix:
            prefixes.append(run_prefix + "checkpoints/")
        seen = set()
        for pre in prefixes:
            bucket, _, key = pre.removeprefix("s3://").partition("/")
            listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=key, Delimiter="/")
            for cp in listed.get("CommonPrefixes", []):
                m = re.search(r"checkpoint-(\d+)/$", cp["Prefix"])
                if m and cp["Prefix"] not in seen:
                    seen.add(cp["Prefix"])
                    out.append((int(m.group(1)), f"s3://{bucket}/{cp['Prefix']}"))
        created = _ts(st.get("completionTime")) or 0
        metrics = {k: v for k, v in (st.get("metrics") or {}).items() if isinstance(v, int | float)}
        final = arts.get("adapterUri") or arts.get("mergedModelUri")
        steps = (st.get("progress") or {}).get("step")
        if final and st.get("phase") == "Succeeded" and steps is not None:
            out = [c for c in out if c[0] != steps] + [(int(steps), final)]
        objs = [
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt-{job_id[6:]}-{step}",
                "created_at": created,
                "fine_tuned_model_checkpoint": uri,
                "step_number": step,
                "metrics": {"step": step, **metrics},
                "fine_tuning_job_id": job_id,
            }
            for step, uri in out
        ]
        return sorted(objs, key=lambda c: c["step_number"], reverse=True)


# ------------------------------------------------------------------------------ FastAPI


def create_app(backend: Backend) -> Any:
    app = FastAPI(title="kubetune OpenAI-compatible fine-tuning API", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiException)
    def _kube_error(_: Request, e: ApiException) -> JSONResponse:
        # The API server refused the server itself (the caller was already authorized): say so
        # without passing its body on.
        if e.status == 403:
            err = ApiError(
                403,
                "kubetune-openai-api may not act in this namespace (not in openaiApi.namespaces?)",
                type="server_error",
                code="server_forbidden",
            )
        elif e.status == 404:
            err = ApiError(404, "not found")
        else:
            err = ApiError(
                502,
                f"the Kubernetes API server answered {e.status} {e.reason}",
                type="server_error",
            )
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first["loc"] if p not in ("body", "query"))
        msg = str(first["msg"])
        err = ApiError(400, f"{loc}: {msg}" if loc else msg, param=loc or None)
        return JSONResponse(err.body(), status_code=400)

    def caller(authorization: str | None, project: str | None, verb: str) -> Caller:
        c = backend.authenticate(authorization, project)
        backend.authorize(c, verb)
        return c

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/files")
    def upload(
        file: UploadFile = File(...),
        purpose: str = Form(...),
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict[str, Any]:
        c = caller(authorization, openai_project, "create")
        data = file.file.read(backend.settings.max_file_bytes + 1)
        return backend.put_file(c, file.filename or "upload.jsonl", purpose, data)

    @app.get("/v1/files")
    def files(
        authorization: str | None = Header(None), openai_project: str | None = Header(None)
    ) -> dict:
        c = caller(authorization, openai_project, "list")
        return {"object": "list", "data": backend.list_files(c), "has_more": False}

    @app.get("/v1/files/{file_id}")
    def file_get(
        file_id: str,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "get")
        return {k: v for k, v in backend.head_file(c, file_id)[1].items() if k[0] != "_"}

    @app.post("/v1/fine_tuning/jobs")
    async def create(
        request: Request,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> Any:
        try:
            req = await request.json()
        except ValueError as e:
            raise ApiError(400, "The request body is not valid JSON") from e
        if not isinstance(req, dict):
            raise ApiError(400, "The request body must be a JSON object")
        from starlette.concurrency import run_in_threadpool

        def work() -> dict[str, Any]:
            c = caller(authorization, openai_project, "create")
            return backend.create_job(c, req)

        return await run_in_threadpool(work)

    @app.get("/v1/fine_tuning/jobs")
    def jobs(
        after: str | None = None,
        limit: int = 20,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "list")
        return paginate(backend.list_jobs(c), after, max(1, min(limit, 100)))

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def job(
        job_id: str,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "get")
        return job_object(backend.get_obj(c, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(
        job_id: str,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "patch")
        return backend.cancel(c, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(
        job_id: str,
        after: str | None = None,
        limit: int = 20,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "get")
        return paginate(backend.events(c, job_id), after, max(1, min(limit, 100)))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(
        job_id: str,
        after: str | None = None,
        limit: int = 10,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> dict:
        c = caller(authorization, openai_project, "get")
        page = paginate(backend.checkpoints(c, job_id), after, max(1, min(limit, 100)))
        data = page["data"]
        return page | {
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    return app


def main() -> None:
    import uvicorn

    settings = Settings.from_env()
    app = create_app(Backend(settings))
    uvicorn.run(
        app,
        host=os.environ.get("KUBETUNE_API_HOST", "0.0.0.0"),
        port=int(os.environ.get("KUBETUNE_API_PORT", "8000")),
        log_level=os.environ.get("KUBETUNE_LOG_LEVEL", "info").lower(),
    )


if __name__ == "__main__":
    main()
