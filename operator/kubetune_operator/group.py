"""Pure rendering of a run that trains with several processes (docs/design.md, "Scaling out").

* One pod, several processes (`resources.gpus > 1`): the trainer container gets the launcher
  arguments (`--nproc-per-node N`); `kubetune-train` then starts N processes through torchrun.
* Several pods (`resources.nodes > 1`): the run's Job becomes an Indexed Job with
  completions = parallelism = nodes, its pods get a stable DNS name through a headless Service
  (`<job>-<index>.<service>`), and torchrun's static rendezvous runs on the pod of index 0. Each
  pod's node rank is its completion index (the Job controller sets JOB_COMPLETION_INDEX).

A pod failing fails every rank (their collectives break), every pod of the group exits, and the
Job starts the group again; the trainer resumes from the last checkpoint. The Job's
backoffLimit is scaled by the group size so that `runPolicy.backoffLimit` counts group
restarts, not pods. Kueue (when a queue is configured) admits all pods of one Job as a single
workload, which is gang admission; without a queue, `scheduling_deadline` bounds how long a
partly scheduled group may hold its GPUs.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.v1alpha1 import RDZV_PORT, DistributionStrategy, FineTuneJobSpec, ResourcesSpec

# Seconds a group may wait for all its pods to be scheduled (read back by podset.Group.of).
ANN_SCHEDULING_DEADLINE = "kubetune.io/scheduling-deadline-seconds"
# How long a group of several pods may wait for all of its pods to be scheduled, when
# runPolicy.schedulingTimeoutSeconds is not set.
DEFAULT_SCHEDULING_TIMEOUT = 600


def launched(res: ResourcesSpec) -> bool:
    """Whether the pod starts its processes through the launcher: more than one process in
    the run, or FSDP (it needs a process group, even with one process)."""
    return res.world_size() > 1 or res.distribution.strategy == DistributionStrategy.FSDP


def service_name(job_name: str) -> str:
    """The headless Service of a multi-pod run: named like its Job (one per run)."""
    return job_name


def rdzv_endpoint(job_name: str, namespace: str) -> str:
    """The pod of index 0, by the DNS name the headless Service gives it."""
    return f"{job_name}-0.{service_name(job_name)}.{namespace}.svc:{RDZV_PORT}"


def launcher_args(spec: FineTuneJobSpec, job_name: str, namespace: str, rdzv_id: str) -> list[str]:
    """The trainer's launcher arguments (after `--config`), or [] for one plain process."""
    res = spec.resources
    if not launched(res):
        return []
    args = ["--nproc-per-node", str(res.processes_per_node())]
    if res.nodes > 1:
        args += [
            "--nnodes",
            str(res.nodes),
            "--rdzv-endpoint",
            rdzv_endpoint(job_name, namespace),
            "--rdzv-id",
            rdzv_id,
        ]
    return args


def job_fields(spec: FineTuneJobSpec, job_name: str, backoff_limit: int) -> dict[str, Any]:
    """Job spec fields of a multi-pod run (empty for one pod)."""
    nodes = spec.resources.nodes
    if nodes <= 1:
        return {}
    return {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        # A group failure fails every pod of the group: `backoffLimit` group restarts are
        # backoffLimit x nodes failed pods; the next failed pod ends the run.
        "backoffLimit": backoff_limit * nodes,
    }


def job_annotations(spec: FineTuneJobSpec) -> dict[str, str]:
    """Annotations the status derivation reads off the Job (podset.Group.of)."""
    deadline = scheduling_deadline(spec)
    return {} if deadline is None else {ANN_SCHEDULING_DEADLINE: str(deadline)}


def pod_fields(spec: FineTuneJobSpec, job_name: str) -> dict[str, Any]:
    """Pod spec fields of a multi-pod run: the subdomain that gives each pod its DNS name."""
    if spec.resources.nodes <= 1:
        return {}
    return {"subdomain": service_name(job_name)}


def headless_service(
    spec: FineTuneJobSpec, job_name: str, meta: dict[str, Any], selector: dict[str, str]
) -> dict[str, Any] | None:
    """The headless Service of a multi-pod run (None for one pod). `meta` is the rendered
    metadata (name, namespace, labels, owner); `selector` picks the run's pods."""
    if spec.resources.nodes <= 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "name": service_name(job_name)},
        "spec": {
            "clusterIP": "None",
            "selector": dict(selector),
            # Rendezvous happens before any pod is Ready: publish the addresses at once.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def scheduling_deadline(spec: FineTuneJobSpec) -> int | None:
    """Seconds a multi-pod group may wait for all of its pods to be scheduled (None: one pod,
    which waits as long as it must)."""
    timeout = spec.run_policy.scheduling_timeout_seconds
    if timeout is not None:
        return timeout
    return DEFAULT_SCHEDULING_TIMEOUT if spec.resources.nodes > 1 else None
