"""Pure rendering: a FineTuneJob spec -> the Kubernetes objects of one run.

Nothing here talks to the API. Every name is deterministic (`<job>-run-<n>`, `<job>-trainer`),
so creating the same run twice is "409 Already exists", which the caller treats as success.

Security properties that hold by construction (the CRD offers no field to change them):
  * the pod runs as uid 10001 (the trainer image's user), non-root, no privilege escalation, all capabilities dropped,
    seccomp RuntimeDefault, read-only root filesystem (scratch lives in emptyDirs);
  * no hostPath, hostNetwork, hostPID, hostIPC or privileged mode is ever rendered;
  * the pod's ServiceAccount is the per-job one (which may only get/patch its own
    `finetunejobs/status`), or a name from the operator's allow-list;
  * credentials appear only as `secretKeyRef`s; the ConfigMap holds Secret *names* at most
    (trainerenv.py).
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_api.v1alpha1 import (
    MODEL_CACHE_ROOT,
    MODEL_CACHE_SUBPATH,
    FineTuneJobSpec,
    pvc_mount_path,
)

from . import group, podoptions
from .admission import check, check_secrets, parse_quantity, secret_refs, service_account
from .identity import rbac, role, role_binding, service_account_object
from .naming import (
    ANN_DRY_RUN,
    ANN_FINETUNEJOB,
    ANN_GENERATION,
    ANN_LINEAGE,
    ANN_SPEC_HASH,
    ANN_SUSPEND,
    CONFIG_DIR,
    CONFIG_KEY,
    CONFIG_PATH,
    CONTAINER,
    GRACE_SECONDS,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    LABEL_RUN,
    NON_RETRYABLE_EXIT_CODES,
    TERMINATION_LOG,
    TRAINER_UID,
    WORKSPACE,
    Owner,
    RenderError,
    Run,
    child_labels,
    child_meta,
    config_map_name,
    job_name,
    label_value,
    selector,
    trainer_sa_name,
)
from .settings import OperatorSettings
from .trainerenv import config_map, env, trainer_config

# The operator renders through this module; names, labels and checks live in naming.py and
# admission.py, the trainer's config and environment in trainerenv.py, the per-job identity in
# identity.py. All are re-exported here for its callers.
__all__ = [
    "ANN_DRY_RUN",
    "ANN_FINETUNEJOB",
    "ANN_GENERATION",
    "ANN_LINEAGE",
    "ANN_SPEC_HASH",
    "ANN_SUSPEND",
    "CONFIG_DIR",
    "CONFIG_KEY",
    "CONFIG_PATH",
    "CONTAINER",
    "GRACE_SECONDS",
    "KUEUE_PRIORITY_LABEL",
    "KUEUE_QUEUE_LABEL",
    "LABEL_JOB",
    "LABEL_RUN",
    "NON_RETRYABLE_EXIT_CODES",
    "TERMINATION_LOG",
    "TRAINER_UID",
    "WORKSPACE",
    "Owner",
    "RenderError",
    "Run",
    "check",
    "check_secrets",
    "child_labels",
    "child_meta",
    "config_map",
    "config_map_name",
    "env",
    "gpu_resource",
    "job",
    "job_name",
    "label_value",
    "parse_quantity",
    "pod_spec",
    "rbac",
    "role",
    "role_binding",
    "run_objects",
    "secret_refs",
    "selector",
    "service_account",
    "service_account_object",
    "shm_size",
    "trainer_config",
    "trainer_sa_name",
]


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
        spec.dataset.test.pvc if spec.dataset.test else None,
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
    if spec.model.cache_claim_name:
        # Read-write, but only the claim's kubetune-model-cache/ directory: the rest of the
        # volume stays out of the trainer's reach.
        volumes.append(
            {
                "name": "model-cache",
                "persistentVolumeClaim": {"claimName": spec.model.cache_claim_name},
            }
        )
        mounts.append(
            {"name": "model-cache", "mountPath": MODEL_CACHE_ROOT, "subPath": MODEL_CACHE_SUBPATH}
        )

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
                "labels": child_labels(owner, run.number),
                "annotations": {ANN_FINETUNEJOB: owner.name},
            },
            "spec": pod_spec(spec, owner, run, settings),
        },
    }
    job_spec.update(group.job_fields(spec, job_name(owner.name, run.number), policy.backoff_limit))
    if policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    meta = child_meta(
        owner,
        job_name(owner.name, run.number),
        run.number,
        **{
            ANN_SPEC_HASH: run.spec_hash,
            ANN_GENERATION: str(run.generation),
            ANN_SUSPEND: "true" if suspend else "false",
            **group.job_annotations(spec),
            **({ANN_DRY_RUN: "true"} if spec.dry_run else {}),
            **(
                {ANN_LINEAGE: json.dumps(run.base.lineage, sort_keys=True)}
                if run.base is not None
                else {}
            ),
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


def dry_run_spec(spec: FineTuneJobSpec) -> FineTuneJobSpec:
    """A dry run's spec: one CPU pod, no GPU, no queue (it estimates, it never trains)."""
    res = spec.resources.model_copy(
        update={"gpus": 0, "nodes": 1, "gpu_type": None, "gpu_resource_name": None}
    )
    dist = res.distribution.model_copy(update={"processes_per_node": None})
    return spec.model_copy(
        update={
            "resources": res.model_copy(update={"distribution": dist}),
            "queue_name": None,
            "workload_priority_class": None,
        }
    )


def run_objects(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Everything run `run` needs, in creation order (the Job last: its pod mounts the rest)."""
    spec = run.resolved(spec)
    if spec.dry_run:
        spec = dry_run_spec(spec)
    check(spec, owner.name, settings, owner.namespace)
    name = job_name(owner.name, run.number)
    service = group.headless_service(
        spec,
        name,
        child_meta(owner, name, run.number),
        {LABEL_JOB: label_value(owner.name), LABEL_RUN: str(run.number)},
    )
    return [
        *rbac(spec, owner, settings),
        config_map(spec, owner, run, settings),
        *([service] if service else []),
        job(spec, owner, run, settings),
    ]
