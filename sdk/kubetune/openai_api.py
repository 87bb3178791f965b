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

Pure mapping functions in the middle (openai_mapping: OpenAI request -> FineTuneJob,
FineTuneJob -> OpenAI job/events; openai_files: JSONL validation naming the line, DPO rows);
the clients at the edges (openai_backend: identity, S3, FineTuneJobs); FastAPI here.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kubernetes.client.exceptions import ApiException

from kubetune.openai_backend import Backend, Caller
from kubetune.openai_mapping import ApiError, Settings, job_object, paginate

# ------------------------------------------------------------------------------ FastAPI


def _authorized(verb: str) -> Any:
    """A dependency: the authenticated caller, allowed `verb` on finetunejobs in its namespace.
    Every route takes one, so it is checked before anything touches S3 or a FineTuneJob."""

    def dependency(
        request: Request,
        authorization: str | None = Header(None),
        openai_project: str | None = Header(None),
    ) -> Caller:
        backend: Backend = request.app.state.backend
        c = backend.authenticate(authorization, openai_project)
        backend.authorize(c, verb)
        return c

    return Depends(dependency)


MAY_CREATE, MAY_LIST, MAY_GET, MAY_PATCH = map(_authorized, ("create", "list", "get", "patch"))


def create_app(backend: Backend) -> Any:
    app = FastAPI(title="kubetune OpenAI-compatible fine-tuning API", docs_url=None, redoc_url=None)
    app.state.backend = backend

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

    def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
        return paginate(items, after, max(1, min(limit, 100)))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/files")
    def upload(
        file: UploadFile = File(...), purpose: str = Form(...), c: Caller = MAY_CREATE
    ) -> dict[str, Any]:
        data = file.file.read(backend.settings.max_file_bytes + 1)
        return backend.put_file(c, file.filename or "upload.jsonl", purpose, data)

    @app.get("/v1/files")
    def files(c: Caller = MAY_LIST) -> dict:
        return {"object": "list", "data": backend.list_files(c), "has_more": False}

    @app.get("/v1/files/{file_id}")
    def file_get(file_id: str, c: Caller = MAY_GET) -> dict:
        return {k: v for k, v in backend.head_file(c, file_id)[1].items() if k[0] != "_"}

    @app.post("/v1/fine_tuning/jobs")
    async def create(request: Request, c: Caller = MAY_CREATE) -> Any:
        try:
            req = await request.json()
        except ValueError as e:
            raise ApiError(400, "The request body is not valid JSON") from e
        if not isinstance(req, dict):
            raise ApiError(400, "The request body must be a JSON object")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(backend.create_job, c, req)

    @app.get("/v1/fine_tuning/jobs")
    def jobs(after: str | None = None, limit: int = 20, c: Caller = MAY_LIST) -> dict:
        return page(backend.list_jobs(c), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def job(job_id: str, c: Caller = MAY_GET) -> dict:
        return job_object(backend.get_obj(c, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(job_id: str, c: Caller = MAY_PATCH) -> dict:
        return backend.cancel(c, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, after: str | None = None, limit: int = 20, c: Caller = MAY_GET) -> dict:
        return page(backend.events(c, job_id), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(
        job_id: str, after: str | None = None, limit: int = 10, c: Caller = MAY_GET
    ) -> dict:
        data = page(backend.checkpoints(c, job_id), after, limit)
        items = data["data"]
        return data | {
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
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
