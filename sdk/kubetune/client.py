"""A typed client for FineTuneJobs over the kubernetes Python client.

Objects go in and out as the same pydantic models the CRD is generated from
(kubetune_api.v1alpha1.FineTuneJob), so a bad spec fails here naming the field,
before the API server sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, FineTuneJob

CANCELLED_ANNOTATION = "kubetune.io/cancelled-at"
TERMINAL = ("Succeeded", "Failed")


class JobFailed(RuntimeError):
    """wait() saw the job end in Failed (or Stalled)."""

    def __init__(self, job: FineTuneJob) -> None:
        st = job.status
        super().__init__(
            f"FineTuneJob {job.metadata.get('name')} failed: "
            f"{(st.message if st else None) or 'no message'}"
        )
        self.job = job


def load_job(source: str | Path | dict[str, Any] | FineTuneJob) -> FineTuneJob:
    """A FineTuneJob from a model, a dict, a YAML path or YAML text (validated by pydantic)."""
    if isinstance(source, FineTuneJob):
        return source
    if isinstance(source, dict):
        return FineTuneJob.model_validate(source)
    text = str(source)
    if isinstance(source, Path) or ("\n" not in text and Path(text).exists()):
        text = Path(text).read_text()
    return FineTuneJob.model_validate(yaml.safe_load(text))


def _condition(job: FineTuneJob, ctype: str) -> bool:
    for c in (job.status.conditions if job.status else None) or []:
        if c.type == ctype and str(c.status) == "True":
            return True
    return False


class Client:
    """FineTuneJobs in one namespace of the cluster the kubeconfig (or in-cluster config) names."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        context: str | None = None,
        api_client: k8s.ApiClient | None = None,
    ) -> None:
        if api_client is None:
            try:
                k8s_config.load_kube_config(context=context)
                _, active = k8s_config.list_kube_config_contexts()
                ctx: dict[str, Any] = dict(active or {}).get("context") or {}
                default_ns = ctx.get("namespace") or "default"
            except k8s_config.ConfigException:
                k8s_config.load_incluster_config()
                default_ns = "default"
            api_client = k8s.ApiClient()
        else:
            default_ns = "default"
        self.namespace = namespace or default_ns
        self.api_client = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)

    # -- CRUD -----------------------------------------------------------------------------
    def create(self, source: str | Path | dict[str, Any] | FineTuneJob) -> FineTuneJob:
        job = load_job(source)
        body = job.model_dump(by_alias=True, exclude_none=True, exclude={"status"})
        body["metadata"].setdefault("namespace", self.namespace)
        ns = body["metadata"]["namespace"]
        out = self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, body)
        return FineTuneJob.model_validate(out)

    def get(self, name: str) -> FineTuneJob:
        out = self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name
        )
        return FineTuneJob.model_validate(out)

    def list(self, label_selector: str | None = None) -> list[FineTuneJob]:
        out: Any = self.custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, label_selector=label_selector or ""
        )
        return [FineTuneJob.model_validate(i) for i in out.get("items", [])]

    def watch(self, name: str, timeout_seconds: int = 3600) -> Iterator[FineTuneJob]:
        """Yield the job now and on every change, until it ends or the timeout passes."""
        job = self.get(name)
        yield job
        w = k8s_watch.Watch()
        for ev in w.stream(
            self.custom.list_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=timeout_seconds,
        ):
            job = FineTuneJob.model_validate(ev["object"])
            yield job
            if job.status and job.status.phase in TERMINAL:
                w.stop()

    def _patch(self, name: str, body: dict[str, Any]) -> FineTuneJob:
        out = self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name, body
        )
        return FineTuneJob.model_validate(out)

    def suspend(self, name: str) -> FineTuneJob:
        return self._patch(name, {"spec": {"runPolicy": {"suspend": True}}})

    def resume(self, name: str) -> FineTuneJob:
        return self._patch(name, {"spec": {"runPolicy": {"suspend": False}}})

    def cancel(self, name: str) -> FineTuneJob:
        """Stop the pods for good: suspend, and mark when (the mark keeps it stopped)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._patch(
            name,
            {
                "metadata": {"annotations": {CANCELLED_ANNOTATION: stamp}},
                "spec": {"runPolicy": {"suspend": True}},
            },
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name
        )

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, name: str, timeout: float = 3600, poll: float = 2.0) -> FineTuneJob:
        """Block until Ready (Succeeded); raise JobFailed on Failed/Stalled, TimeoutError on time."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(name)
            phase = job.status.phase if job.status else None
            if phase == "Succeeded" or _condition(job, "Succeeded"):
                return job
            if phase == "Failed" or _condition(job, "Stalled"):
                raise JobFailed(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"FineTuneJob {name} still {phase} after {timeout:.0f}s")
            time.sleep(poll)

    # -- logs -------------------------------------------------------------------------------
    def rank0_pod(self, name: str) -> str | None:
        """The newest pod of the current run that holds rank 0 (completion index 0)."""
        job = self.get(name)
        job_name = job.status.job_name if job.status else None
        if not job_name:
            return None
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={job_name}"
        ).items
        index = "batch.kubernetes.io/job-completion-index"
        rank0 = [
            (p.metadata.creation_timestamp, p.metadata.name)
            for p in pods
            if p.metadata and (p.metadata.annotations or {}).get(index, "0") == "0"
        ]
        rank0.sort(key=lambda t: str(t[0]))
        return str(rank0[-1][1]) if rank0 else None

    def logs(self, name: str, follow: bool = False) -> Iterator[str]:
        pod = self.rank0_pod(name)
        if pod is None:
            return
        if not follow:
            yield from self.core.read_namespaced_pod_log(pod, self.namespace).splitlines()
            return
        w = k8s_watch.Watch()
        yield from w.stream(self.core.read_namespaced_pod_log, pod, self.namespace)
