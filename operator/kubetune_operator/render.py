"""Pure rendering: a FineTuneJob spec -> the Kubernetes objects of one run.

Nothing here talks to the API. Every name is deterministic (`<job>-run-<n>`, `<job>-trainer`),
so creating the same run twice is "409 Already exists", which the caller treats as success.

Security properties that hold by construction (the CRD offers no field to change them):
  * the pod runs as uid 10001 (the trainer image's user), non-root, no privilege escalation, all capabilities dropped,
    seccomp RuntimeDefault, read-only root filesystem (scratch lives in emptyDirs);
  * no hostPath, hostNetwork, hostPID, hostIPC or privileged mode is ever rendered;
  * the pod's ServiceAccount is the per-job one (which may only get/patch its own
    `finetunejobs/status`), or a name from the operator's allow-list;
  * credentials appear only as `secretKeyRef`s; the ConfigMap holds Secret *names* at most.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from kubetune_api.v1alpha1 import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    FineTuneJobSpec,
    JobIdentity,
    Reason,
    TrainerConfig,
    pvc_mount_path,
    run_prefix,
)

from . import group, podoptions, policy
from .settings import OperatorSettings

# Labels and annotations on everything the operator creates.
LABEL_JOB = f"{API_GROUP}/job"
LABEL_RUN = f"{API_GROUP}/run"
ANN_FINETUNEJOB = f"{API_GROUP}/finetunejob"
ANN_SPEC_HASH = f"{API_GROUP}/spec-hash"
ANN_GENERATION = f"{API_GROUP}/generation"
# The runPolicy.suspend value the operator last applied to the Job. A Job whose spec.suspend
# differs from it was suspended (or resumed) by someone else, e.g. Kueue: that is left alone.
ANN_SUSPEND = f"{API_GROUP}/suspend"
# Kueue's labels: the LocalQueue a Job waits in, and its WorkloadPriorityClass.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
MANAGED_BY = "kubetune-operator"

CONTAINER = "trainer"
CONFIG_DIR = "/etc/kubetune"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
WORKSPACE = "/workspace"
TERMINATION_LOG = "/dev/termination-log"
# The trainer image's non-root user (trainer-image/Dockerfile USER); the pod runs as it so
# /workspace ownership in the image and fsGroup on the volumes agree.
TRAINER_UID = 10001
# Exit codes the trainer uses for errors that cannot succeed on retry (docs/design.md).
NON_RETRYABLE_EXIT_CODES = list(range(10, 20))
GRACE_SECONDS = 60

_MAX_NAME = 63  # Job names become the `job-name` label of their pods: a label value, <= 63.


class RenderError(Exception):
    """The spec cannot be turned into a run. `reason` is a `Reason`; the message names the field
    and never contains a credential (specs hold only Secret names)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Owner:
    """The FineTuneJob a rendered object belongs to."""

    namespace: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Run:
    """One run of a FineTuneJob: the number, the generation it trains, and its spec hash."""

    number: int
    generation: int
    spec_hash: str


# ------------------------------------------------------------------------------------- names


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def bounded(base: str, suffix: str = "", limit: int = _MAX_NAME) -> str:
    """`base + suffix`, or, when that is longer than `limit`, base cut short plus a hash of the
    full base (so distinct long names stay distinct) before the suffix."""
    full = f"{base}{suffix}"
    if len(full) <= limit:
        return full
    head = base[: max(1, limit - len(suffix) - 9)].rstrip("-.")
    return f"{head}-{_short_hash(base)}{suffix}"


def job_name(name: str, run: int) -> str:
    return bounded(name, f"-run-{run}")


def config_map_name(name: str, run: int) -> str:
    return bounded(name, f"-run-{run}")


def trainer_sa_name(name: str) -> str:
    return bounded(name, "-trainer")


def label_value(name: str) -> str:
    """A FineTuneJob name as a label value (<= 63 characters)."""
    return bounded(name)


def selector(name: str, run: int | None = None) -> str:
    """Label selector for the children of FineTuneJob `name` (of one run, if given)."""
    sel = f"{LABEL_JOB}={label_value(name)}"
    return sel if run is None else f"{sel},{LABEL_RUN}={run}"


def _labels(owner: Owner, run: int | None = None) -> dict[str, str]:
    labels = {
        LABEL_JOB: label_value(owner.name),
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if run is not None:
        labels[LABEL_RUN] = str(run)
    return labels


def _meta(owner: Owner, name: str, run: int | None = None, **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": _labels(owner, run),
        "annotations": {ANN_FINETUNEJOB: owner.name, **annotations},
        "ownerReferences": [owner.reference()],
    }
    return meta


# ------------------------------------------------------------------------------- quantities

_SUFFIXES: dict[str, int | Decimal] = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": Decimal("0.001"),
}  # fmt: skip


def parse_quantity(q: str) -> Decimal:
    """A Kubernetes resource quantity ("16Gi", "500m", "1e9") as a number of base units."""
    m = re.fullmatch(r"\s*\+?([0-9.]+)(e[+-]?[0-9]+|E[+-]?[0-9]+)?([a-zA-Z]*)\s*", q)
    if not m or m.group(3) not in _SUFFIXES:
        raise ValueError(f"not a resource quantity: {q!r}")
    number = Decimal(m.group(1) + (m.group(2) or ""))
    return number * Decimal(_SUFFIXES[m.group(3)])


def shm_size(spec: FineTuneJobSpec, settings: OperatorSettings) -> str:
    """/dev/shm: resources.shmSize, else a quarter of the memory limit, else the default."""
    res = spec.resources
    if res.shm_size:
        return res.shm_size
    memory = res.memory or settings.default_memory
    if memory:
        mib = int(parse_quantity(memory) / 4 / 2**20)
        if mib >= 64:
            return f"{mib}Mi"
    return settings.default_shm_size


# ------------------------------------------------------------------------------- validation


def service_account(spec: FineTuneJobSpec, owner_name: str, settings: OperatorSettings) -> str:
    """The pod's ServiceAccount: the per-job one, or an allow-listed override."""
    wanted = spec.resources.service_account_name
    if wanted is None:
        return trainer_sa_name(owner_name)
    if wanted not in settings.allowed_service_accounts:
        allowed = ", ".join(settings.allowed_service_accounts) or "none"
        raise RenderError(
            Reason.SERVICE_ACCOUNT_NOT_ALLOWED,
            f"spec.resources.serviceAccountName: {wanted!r} is not in the operator's "
            f"allowed service accounts ({allowed}); remove the field to use the per-job account",
        )
    return wanted


def secret_refs(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(spec field, Secret name) of every Secret a spec makes the pod read."""
    refs: list[tuple[str, str]] = []
    if spec.model.token_secret_ref is not None:
        refs.append(("model.tokenSecretRef", spec.model.token_secret_ref.name))
    if spec.output.credentials_secret_ref is not None:
        refs.append(("output.credentialsSecretRef", spec.output.credentials_secret_ref.name))
    tracking = spec.tracking
    if tracking.mlflow is not None and tracking.mlflow.token_secret_ref is not None:
        refs.append(("tracking.mlflow.tokenSecretRef", tracking.mlflow.token_secret_ref.name))
    if tracking.wandb is not None:
        refs.append(("tracking.wandb.apiKeySecretRef", tracking.wandb.api_key_secret_ref.name))
    return refs + podoptions.secret_refs(spec)


def check_secrets(spec: FineTuneJobSpec, namespace: str, settings: OperatorSettings) -> None:
    """A Secret reference hands the Secret's value to code of the author's choosing (a custom
    image, remote model code) and to endpoints of the author's choosing: only Secrets the
    platform opted in (`trainer.allowedSecrets`) may be referenced."""
    allowed = set(settings.allowed_secrets)
    if settings.s3_credentials_secret:  # the platform's own, already given to every pod
        allowed.add(settings.s3_credentials_secret)
    for field, name in secret_refs(spec):
        if name in allowed or f"{namespace}/{name}" in allowed:
            continue
        raise RenderError(
            Reason.SECRET_NOT_ALLOWED,
            f"spec.{field}: Secret {name!r} is not in the operator's allowed Secrets; a platform "
            f"admin can allow it with the chart value trainer.allowedSecrets (e.g. "
            f"[{namespace}/{name}]), which lets anyone who may create a FineTuneJob in "
            f"{namespace} read it",
        )


def _host(url: str) -> tuple[str, str]:
    """(host, host:port) of a URL, lower-cased; port from the scheme when absent."""
    parsed = urlsplit(url if "://" in url else f"//{url}")
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
    return host, f"{host}:{port}"


def _host_allowed(url: str, allowed: list[str]) -> bool:
    host, host_port = _host(url)
    return bool(host) and any(a.lower() in (host, host_port) for a in allowed)


def check_tracking_hosts(spec: FineTuneJobSpec, settings: OperatorSettings) -> None:
    """Where a spec sends metrics, parameters and tokens: tracking servers, and an S3 endpoint
    that would receive the operator's own S3 credentials, must be opted in
    (`trainer.allowedTrackingHosts`)."""
    allowed = settings.allowed_tracking_hosts
    targets: list[tuple[str, str]] = []
    if spec.tracking.mlflow is not None:
        targets.append(("tracking.mlflow.trackingUri", spec.tracking.mlflow.tracking_uri))
    if spec.tracking.wandb is not None and spec.tracking.wandb.base_url:
        targets.append(("tracking.wandb.baseUrl", spec.tracking.wandb.base_url))
    endpoint = spec.output.endpoint
    platform_endpoint = _host(settings.s3_endpoint)[1] if settings.s3_endpoint else None
    if (
        endpoint
        and spec.output.credentials_secret_ref is None  # the operator's credentials go there
        and _host(endpoint)[1] != platform_endpoint
    ):
        targets.append(("output.endpoint", endpoint))
    for field, url in targets:
        if url.startswith("file:") or _host_allowed(url, allowed):
            continue
        host = _host(url)[0] or url
        raise RenderError(
            Reason.TRACKING_HOST_NOT_ALLOWED,
            f"spec.{field}: host {host!r} is not in the operator's allowed tracking hosts; a "
            "platform admin can allow it with the chart value trainer.allowedTrackingHosts",
        )


def check(
    spec: FineTuneJobSpec, owner_name: str, settings: OperatorSettings, namespace: str = ""
) -> None:
    """Raise RenderError if this spec cannot be run by this operator (beyond schema validity)."""
    service_account(spec, owner_name, settings)
    check_secrets(spec, namespace, settings)
    check_tracking_hosts(spec, settings)
    try:
        policy.check(spec, namespace, settings)
    except policy.PolicyError as e:
        raise RenderError(e.reason, e.message) from None
    for field, value in (
        ("resources.cpu", spec.resources.cpu),
        ("resources.memory", spec.resources.memory),
        ("resources.ephemeralStorage", spec.resources.ephemeral_storage),
        ("resources.shmSize", spec.resources.shm_size),
    ):
        if value is not None:
            try:
                parse_quantity(value)
            except ValueError as e:
                raise RenderError(Reason.INVALID_SPEC, f"spec.{field}: {e}") from None


# ---------------------------------------------------------------------------------- objects


def trainer_config(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> TrainerConfig:
    prefix = run_prefix(spec.output.uri, owner.namespace, owner.name, owner.uid, run.number)
    return TrainerConfig(
        job=JobIdentity(
            namespace=owner.namespace,
            name=owner.name,
            uid=owner.uid,
            generation=run.generation,
            run=run.number,
        ),
        spec=spec,
        run_prefix=prefix,
        checkpoint_prefix=f"{prefix}checkpoints/" if spec.output.checkpoints else None,
        progress_interval_seconds=settings.progress_interval_seconds,
        report_progress=True,
        work_dir=WORKSPACE,
        s3_retry_seconds=settings.s3_retry_seconds,
    )


def config_map(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> dict[str, Any]:
    cfg = trainer_config(spec, owner, run, settings)
    text = json.dumps(cfg.wire(), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            owner,
            config_map_name(owner.name, run.number),
            run.number,
            **{ANN_SPEC_HASH: run.spec_hash, ANN_GENERATION: str(run.generation)},
        ),
        "immutable": True,
        "data": {CONFIG_KEY: text},
    }


def service_account_object(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, trainer_sa_name(owner.name)),
        "automountServiceAccountToken": True,
    }


def role(owner: Owner) -> dict[str, Any]:
    """May get and patch the status of this FineTuneJob, and nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, trainer_sa_name(owner.name)),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [owner.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def role_binding(owner: Owner, service_account_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, trainer_sa_name(owner.name)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": trainer_sa_name(owner.name),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account_name, "namespace": owner.namespace}
        ],
    }


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def env(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The trainer's environment (docs/design.md): plain values and Secret references only."""
    out: list[dict[str, Any]] = [
        {"name": "KUBETUNE_CONFIG", "value": CONFIG_PATH},
        {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "KUBETUNE_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "HOME", "value": WORKSPACE},
        {"name": "HF_HOME", "value": f"{WORKSPACE}/.cache/huggingface"},
        {"name": "TMPDIR", "value": f"{WORKSPACE}/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    endpoint = spec.output.endpoint or settings.s3_endpoint
    if endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    region = spec.output.region or settings.s3_region
    out += [
        {"name": "AWS_DEFAULT_REGION", "value": region},
        {"name": "AWS_REGION", "value": region},
    ]
    creds = (
        spec.output.credentials_secret_ref.name
        if spec.output.credentials_secret_ref
        else settings.s3_credentials_secret
    )
    if creds:
        out += [
            _secret_env("AWS_ACCESS_KEY_ID", creds, "AWS_ACCESS_KEY_ID"),
            _secret_env("AWS_SECRET_ACCESS_KEY", creds, "AWS_SECRET_ACCESS_KEY"),
            _secret_env("AWS_SESSION_TOKEN", creds, "AWS_SESSION_TOKEN", optional=True),
        ]
    if spec.model.token_secret_ref:
        ref = spec.model.token_secret_ref
        out.append(_secret_env("HF_TOKEN", ref.name, ref.key))
    tracking = spec.tracking
    if tracking.wandb is not None:
        ref = tracking.wandb.api_key_secret_ref
        out.append(_secret_env("WANDB_API_KEY", ref.name, ref.key))
    if tracking.mlflow is not None and tracking.mlflow.token_secret_ref is not None:
        ref = tracking.mlflow.token_secret_ref
        out.append(_secret_env("MLFLOW_TRACKING_TOKEN", ref.name, ref.key))
    return out


def gpu_resource(spec: FineTuneJobSpec, settings: OperatorSettings) -> str:
    return spec.resources.gpu_resource_name or settings.gpu_resource_name


def _resources(spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    res = spec.resources
    amounts: dict[str, str] = {}
    if cpu := res.cpu or settings.default_cpu:
        amounts["cpu"] = cpu
    if memory := res.memory or settings.default_memory:
        amounts["memory"] = memory
    if res.ephemeral_storage:
        amounts["ephemeral-storage"] = res.ephemeral_storage
    if res.gpus:
        amounts[gpu_resource(spec, settings)] = str(res.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _pvc_claims(spec: FineTuneJobSpec) -> list[str]:
    claims: list[str] = []
    for source in (
        spec.model.pvc,
        spec.dataset.pvc,
        spec.dataset.validation.pvc if spec.dataset.validation else None,
    ):
        if source is not None and source.claim_name not in claims:
            claims.append(source.claim_name)
    return claims


def pod_spec(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> dict[str, Any]:
    res = spec.resources
    node_selector = dict(settings.default_node_selector)
    node_selector.update(res.node_selector or {})
    if res.gpu_type:
        node_selector[settings.gpu_product_label] = res.gpu_type
    tolerations = list(settings.default_tolerations) + [t.wire() for t in res.tolerations or []]

    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {"name": config_map_name(owner.name, run.number), "defaultMode": 0o444},
        },
        {"name": "workspace", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(spec, settings)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORKSPACE},
        # /tmp is /workspace/tmp (TMPDIR): one scratch volume, and the directory exists.
        {"name": "workspace", "mountPath": "/tmp", "subPath": "tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for i, claim in enumerate(_pvc_claims(spec)):
        volumes.append(
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": f"pvc-{i}", "mountPath": pvc_mount_path(claim), "readOnly": True})

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": res.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(settings.trainer_command),
        "args": [
            "--config",
            CONFIG_PATH,
            *group.launcher_args(
                spec,
                job_name(owner.name, run.number),
                owner.namespace,
                f"{owner.uid}-{run.number}",
            ),
        ],
        "workingDir": WORKSPACE,
        "env": env(spec, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the result is written still leaves the log tail for the status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if resources := _resources(spec, settings):
        container["resources"] = resources

    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account(spec, owner.name, settings),
        # The trainer reports progress with this token (its Role allows only its own status).
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    pod.update(group.pod_fields(spec, job_name(owner.name, run.number)))
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if res.affinity:
        pod["affinity"] = res.affinity.wire()
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    return pod


def job(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> dict[str, Any]:
    """The batch/v1 Job of run `run` (without ttlSecondsAfterFinished: see below)."""
    policy = spec.run_policy
    suspend = bool(policy.suspend)
    job_spec: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        "suspend": suspend,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {
            "rules": [
                {
                    # Bad config/data/model cannot succeed on retry: fail the Job at once.
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": NON_RETRYABLE_EXIT_CODES,
                    },
                },
                {
                    # Eviction, preemption, node loss: retry without using the backoff budget
                    # (the trainer resumes from its last checkpoint).
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {
                "labels": _labels(owner, run.number),
                "annotations": {ANN_FINETUNEJOB: owner.name},
            },
            "spec": pod_spec(spec, owner, run, settings),
        },
    }
    job_spec.update(group.job_fields(spec, job_name(owner.name, run.number), policy.backoff_limit))
    if policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    meta = _meta(
        owner,
        job_name(owner.name, run.number),
        run.number,
        **{
            ANN_SPEC_HASH: run.spec_hash,
            ANN_GENERATION: str(run.generation),
            ANN_SUSPEND: "true" if suspend else "false",
            **group.job_annotations(spec),
        },
    )
    if spec.queue_name:
        # Kueue admits the Job by unsuspending it: create it suspended, labelled for the queue.
        # ANN_SUSPEND keeps the user's intent, so the operator never undoes Kueue's suspend.
        meta["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
        job_spec["suspend"] = True
        if spec.workload_priority_class:
            meta["labels"][KUEUE_PRIORITY_LABEL] = spec.workload_priority_class
    # runPolicy.ttlSecondsAfterFinished is applied by the operator (runs.expired_jobs), not as
    # the Job's own TTL: the TTL controller could delete a Job, and with it the pod holding the
    # trainer's result, before the operator has read it (e.g. while the operator restarts).
    rendered = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
    podoptions.apply(rendered, spec, settings)
    return rendered


def rbac(spec: FineTuneJobSpec, owner: Owner, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The per-job identity: ServiceAccount, Role, RoleBinding (bound to the pod's account)."""
    return [
        service_account_object(owner),
        role(owner),
        role_binding(owner, service_account(spec, owner.name, settings)),
    ]


def run_objects(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Everything run `run` needs, in creation order (the Job last: its pod mounts the rest)."""
    check(spec, owner.name, settings, owner.namespace)
    name = job_name(owner.name, run.number)
    service = group.headless_service(
        spec,
        name,
        _meta(owner, name, run.number),
        {LABEL_JOB: label_value(owner.name), LABEL_RUN: str(run.number)},
    )
    return [
        *rbac(spec, owner, settings),
        config_map(spec, owner, run, settings),
        *([service] if service else []),
        job(spec, owner, run, settings),
    ]
