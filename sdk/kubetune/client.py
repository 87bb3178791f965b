"""A typed client for FineTuneJobs over the kubernetes Python client.

Objects go in and out as the same pydantic models the CRD is generated from
(kubetune_api.v1alpha1.FineTuneJob), so a bad spec fails here naming the field,
before the API server sees it.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubetune_api.s3uri import split_s3_uri
from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, FineTuneJob

CANCELLED_ANNOTATION = "kubetune.io/cancelled-at"
TERMINAL = ("Succeeded", "Failed")


class ArtifactsError(RuntimeError):
    """The run's artifacts are missing, or a file does not match the sha256 manifest."""


@dataclass(frozen=True)
class DownloadedFile:
    path: str  # relative to the run prefix (as in manifest.json)
    size: int
    sha256: str


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_dir(dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems of a local copy against manifest.json's `files` (empty: every file matches)."""
    problems = []
    for f in manifest.get("files", []):
        local = dest / f["path"]
        if not local.is_file():
            problems.append(f"{f['path']}: missing")
            continue
        size = local.stat().st_size
        if size != int(f["size"]):
            problems.append(f"{f['path']}: size {size}, manifest says {f['size']}")
            continue
        digest = _sha256_file(local)
        if digest != f["sha256"]:
            problems.append(f"{f['path']}: sha256 {digest}, manifest says {f['sha256']}")
    return problems


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
    def wait(
        self, name: str, timeout: float = 3600, poll: float = 2.0, condition: str = "Succeeded"
    ) -> FineTuneJob:
        """Block until `condition` is True (kstatus: Succeeded, Ready, Suspended, ...) in the
        status of the current generation; raise JobFailed once Failed or Stalled is True (or the
        phase is Failed), TimeoutError when the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(name)
            phase = job.status.phase if job.status else None
            observed = job.status.observed_generation if job.status else None
            current = observed is None or observed >= int(job.metadata.get("generation") or 0)
            if current and (_condition(job, condition) or phase == condition):
                return job
            if phase == "Failed" or _condition(job, "Failed") or _condition(job, "Stalled"):
                raise JobFailed(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"FineTuneJob {name} still {phase} after {timeout:.0f}s")
            time.sleep(poll)

    # -- artifacts --------------------------------------------------------------------------
    def _s3(self, endpoint: str | None = None) -> Any:
        import boto3  # the `cli` extra; boto3 reads AWS_* and AWS_ENDPOINT_URL itself

        return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")

    def manifest(self, name: str, s3: Any = None) -> dict[str, Any]:
        """manifest.json of the current run, checked against status.artifacts.manifestSha256."""
        job = self.get(name)
        arts = job.status.artifacts if job.status else None
        if arts is None or not arts.manifest_uri:
            phase = job.status.phase if job.status else None
            raise ArtifactsError(
                f"FineTuneJob {name} has no status.artifacts.manifestUri yet (phase {phase}): "
                "artifacts appear once the run has uploaded them"
            )
        s3 = s3 or self._s3()
        bucket, key = split_s3_uri(arts.manifest_uri)
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        digest = hashlib.sha256(data).hexdigest()
        if arts.manifest_sha256 and digest != arts.manifest_sha256:
            raise ArtifactsError(
                f"{arts.manifest_uri}: sha256 {digest}, but status.artifacts.manifestSha256 "
                f"is {arts.manifest_sha256} (changed after the run wrote it)"
            )
        doc: dict[str, Any] = json.loads(data)
        doc["_manifestUri"] = arts.manifest_uri
        return doc

    def download_artifacts(
        self,
        name: str,
        dest: str | Path,
        *,
        verify: bool = True,
        prefix: str = "",
        s3: Any = None,
        s3_endpoint: str | None = None,
    ) -> builtins.list[DownloadedFile]:
        """Download the current run's files listed in manifest.json (optionally only those under
        `prefix`, e.g. "adapter/") into dest, keeping their relative paths. With verify, every
        file's size and sha256 are checked against the manifest (which is itself checked against
        status); a mismatch raises ArtifactsError naming the file."""
        s3 = s3 or self._s3(s3_endpoint)
        manifest = self.manifest(name, s3=s3)
        run_bucket, run_key = split_s3_uri(manifest["runPrefix"])
        dest = Path(dest)
        files = [f for f in manifest["files"] if f["path"].startswith(prefix)]
        if not files:
            raise ArtifactsError(
                f"manifest {manifest['_manifestUri']} lists no files under {prefix!r}"
            )
        out = []
        for f in files:
            local = dest / f["path"]
            if ".." in Path(f["path"]).parts or Path(f["path"]).is_absolute():
                raise ArtifactsError(f"manifest path {f['path']!r} leaves the destination")
            local.parent.mkdir(parents=True, exist_ok=True)
            key = run_key.rstrip("/") + "/" + f["path"]
            s3.download_file(run_bucket, key, str(local))
            out.append(DownloadedFile(f["path"], int(f["size"]), f["sha256"]))
        (dest / "manifest.json").write_text(
            json.dumps({k: v for k, v in manifest.items() if not k.startswith("_")}, indent=2)
        )
        if verify:
            problems = verify_dir(dest, {"files": files})
            if problems:
                raise ArtifactsError("verification failed: " + "; ".join(problems))
        return out

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

    def logs(
        self, name: str, follow: bool = False, container: str = "trainer", wait: float = 0
    ) -> Iterator[str]:
        """Lines of the rank-0 pod's trainer container. With `wait`, wait up to that many
        seconds for the pod to exist and its container to start (follow before the pod runs)."""
        deadline = time.monotonic() + wait
        while True:
            pod = self.rank0_pod(name)
            if pod is not None:
                try:
                    if not follow:
                        text = self.core.read_namespaced_pod_log(
                            pod, self.namespace, container=container
                        )
                        yield from text.splitlines()
                        return
                    w = k8s_watch.Watch()
                    yield from w.stream(
                        self.core.read_namespaced_pod_log, pod, self.namespace, container=container
                    )
                    return
                except k8s.exceptions.ApiException as e:
                    # 400: container is waiting to start; retry within `wait`
                    if e.status != 400 or time.monotonic() > deadline:
                        raise
            elif time.monotonic() > deadline:
                return
            time.sleep(1)
