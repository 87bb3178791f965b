"""The OpenAI-compatible API's pure half: its errors, settings, and the mappings between
OpenAI objects and FineTuneJobs (request -> spec, FineTuneJob -> job/events). Uploaded files
(JSONL validation naming the line, DPO row conversion) are in `kubetune.openai_files`. No
FastAPI and no client here; `kubetune.openai_backend` and `kubetune.openai_api` are the edges.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api.v1alpha1 import API_GROUP
from kubetune_api.v1alpha1.hyperparameters import default_learning_rate

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


def _hyper(h: Any, where: str, beta: bool = False) -> dict[str, Any]:
    if h is None:
        return {}
    if not isinstance(h, dict):
        raise ApiError(400, f"{where} must be an object", param=where)
    known = _HYPER | ({"beta"} if beta else set())
    unknown = sorted(set(h) - known)
    if unknown:
        raise ApiError(
            400,
            f"Unrecognized hyperparameter: {unknown[0]!r} (supported: {', '.join(sorted(known))})",
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
    mtype = "supervised"
    if method is not None:
        if not isinstance(method, dict):
            raise ApiError(400, "method must be an object", param="method")
        mtype = method.get("type", "supervised")
        if mtype not in ("supervised", "dpo"):
            raise ApiError(
                400,
                f"method.type must be 'supervised' or 'dpo', got {mtype!r}",
                param="method.type",
                code="unsupported_method",
            )
        sub = method.get(mtype) or {}
        if not isinstance(sub, dict):
            raise ApiError(400, f"method.{mtype} must be an object", param=f"method.{mtype}")
        where = f"method.{mtype}.hyperparameters"
        hyper |= _hyper(sub.get("hyperparameters"), where, beta=mtype == "dpo")
    dpo = mtype == "dpo"
    if dpo != (training_format == "preference"):
        raise ApiError(
            400,
            f"training_file is a {training_format} file, but method.type {mtype!r} needs "
            + ("a preference (dpo) file" if dpo else "a chat or prompt/completion file"),
            param="training_file",
            code="invalid_file_format",
        )
    spec: dict[str, Any] = json.loads(json.dumps(settings.job_defaults))  # a deep copy
    spec["model"] = dict(settings.models[model])
    dataset = dict(spec.get("dataset") or {})
    dataset.update({"s3Uri": training_uri, "format": training_format})
    if validation_uri:
        dataset["validation"] = {"s3Uri": validation_uri}
    spec["dataset"] = dataset
    spec.setdefault("method", {"type": "lora"})
    if dpo:
        spec["task"] = "preference"
        pref = dict(spec.get("preference") or {})
        pref["algorithm"] = "dpo"
        if "beta" in hyper:
            pref["beta"] = hyper["beta"]
        spec["preference"] = pref
    spec["output"] = {**(spec.get("output") or {}), "uri": settings.output_uri}
    hp = dict(spec.get("hyperparameters") or {})
    if "n_epochs" in hyper:
        hp["epochs"] = hyper["n_epochs"]
        hp.pop("maxSteps", None)
    if "batch_size" in hyper:
        hp["batchSize"] = hyper["batch_size"]
    if "learning_rate_multiplier" in hyper:
        base = float(hp.get("learningRate") or _default_lr(spec, dpo))
        hp["learningRate"] = base * float(hyper["learning_rate_multiplier"])
    seed = req.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ApiError(400, "seed must be an integer", param="seed")
        hp["seed"] = seed
    if hp:
        spec["hyperparameters"] = hp
    return spec, hyper


def _default_lr(spec: dict[str, Any], dpo: bool) -> float:
    """The learning rate the trainer would use for this spec (method- and task-aware), which
    learning_rate_multiplier multiplies."""
    mtype = str((spec.get("method") or {}).get("type", "lora"))
    try:
        return default_learning_rate(mtype, "preference" if dpo else "causal-lm")
    except KeyError:  # an unknown method: the FineTuneJob validation names it
        return DEFAULT_LR


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
        "method": _method(spec, hyper),
    }


def _method(spec: dict[str, Any], hyper: dict[str, Any]) -> dict[str, Any]:
    if spec.get("task") != "preference":
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    beta = (spec.get("preference") or {}).get("beta", 0.1)
    return {"type": "dpo", "dpo": {"hyperparameters": hyper | {"beta": beta}}}


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
