"""The OpenAI-compatible API's edges: the caller's identity (TokenReview, SubjectAccessReview)
and the Backend that keeps files in S3 and jobs as FineTuneJobs. `kubetune.openai_api` serves it
over HTTP; the mappings it calls are pure (`kubetune.openai_mapping`, `kubetune.openai_files`).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, FineTuneJob
from pydantic import ValidationError

from kubetune.client import CANCELLED_ANNOTATION
from kubetune.openai_files import dpo_rows, file_object, validate_jsonl
from kubetune.openai_mapping import (
    ANN_LR_MULT,
    ANN_MODEL,
    ANN_SUFFIX,
    ANN_TRAINING_FILE,
    ANN_VALIDATION_FILE,
    FILE_PREFIX,
    JOB_PREFIX,
    LABEL_OPENAI,
    ApiError,
    Settings,
    _ts,
    job_events,
    job_object,
    job_spec,
)


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
        rows, fmt = validate_jsonl(data, method=None)  # the method comes with the job
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

    def _preference_copy(self, caller: Caller, file_id: str, param: str) -> str:
        """s3:// URI of the upload converted to the trainer's preference rows (dpo_rows)."""
        bucket, key = self._file_key(caller.namespace, file_id)
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            rows = dpo_rows(data)
        except ApiError as e:
            raise ApiError(e.status, f"{param}: {e.message}", param=param, code=e.code) from e
        out = key.removesuffix(".jsonl") + ".preference.jsonl"
        self.s3.put_object(
            Bucket=bucket,
            Key=out,
            Body=rows,
            Metadata={"source": file_id, "format": "preference"},
            ContentType="application/jsonl",
        )
        return f"s3://{bucket}/{out}"

    def list_files(self, caller: Caller) -> list[dict]:
        bucket, key = self._file_key(caller.namespace, "x")
        prefix = key.rsplit("/", 1)[0] + "/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        out = []
        for page in pages:
            for o in page.get("Contents", []):
                fid = o["Key"].rsplit("/", 1)[-1].removesuffix(".jsonl")
                if not re.match(r"^file-[0-9a-f]{24}$", fid):
                    continue  # e.g. <file>.preference.jsonl, converted for a DPO job
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
        if spec.get("task") == "preference":
            # The trainer reads prompt/chosen/rejected strings: convert OpenAI's DPO rows into
            # <file>.preference.jsonl beside the upload and train on that.
            spec["dataset"]["s3Uri"] = self._preference_copy(caller, training, "training_file")
            if val_id:
                spec["dataset"]["validation"]["s3Uri"] = self._preference_copy(
                    caller, val_id, "validation_file"
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
