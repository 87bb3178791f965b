"""Names, labels, annotations and owner references of everything the operator creates (pure).

Every name is deterministic (`<job>-run-<n>`, `<job>-trainer`) and bounded to 63 characters,
so creating the same run twice is "409 Already exists", which the caller treats as success.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kubetune_api.v1alpha1 import (
    API_GROUP,
    API_VERSION,
    KIND,
    FineTuneJobSpec,
    Reason,
)

# Labels and annotations on everything the operator creates.
LABEL_JOB = f"{API_GROUP}/job"
LABEL_RUN = f"{API_GROUP}/run"
ANN_FINETUNEJOB = f"{API_GROUP}/finetunejob"
ANN_SPEC_HASH = f"{API_GROUP}/spec-hash"
ANN_GENERATION = f"{API_GROUP}/generation"
# The runPolicy.suspend value the operator last applied to the Job. A Job whose spec.suspend
# differs from it was suspended (or resumed) by someone else, e.g. Kueue: that is left alone.
ANN_SUSPEND = f"{API_GROUP}/suspend"
# On the Job of a dry run (spec.dryRun): only then does status accept an estimate instead of
# artifacts (the operator writes Job metadata; the pod cannot).
ANN_DRY_RUN = f"{API_GROUP}/dry-run"
# spec.model.fromJob: the base job run this run started from (chain.py), as JSON.
ANN_LINEAGE = f"{API_GROUP}/lineage"
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
    """One run of a FineTuneJob: the number, the generation it trains, and its spec hash;
    with `spec.model.fromJob`, the base it was resolved to when it started (chain.Base)."""

    number: int
    generation: int
    spec_hash: str
    base: Any = None  # chain.Base | None

    def resolved(self, spec: FineTuneJobSpec) -> FineTuneJobSpec:
        """The spec the trainer runs: `model.fromJob` replaced by the concrete base model."""
        if self.base is None:
            return spec
        return spec.model_copy(update={"model": self.base.model})


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


def child_labels(owner: Owner, run: int | None = None) -> dict[str, str]:
    labels = {
        LABEL_JOB: label_value(owner.name),
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if run is not None:
        labels[LABEL_RUN] = str(run)
    return labels


def child_meta(
    owner: Owner, name: str, run: int | None = None, **annotations: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner, run),
        "annotations": {ANN_FINETUNEJOB: owner.name, **annotations},
        "ownerReferences": [owner.reference()],
    }
    return meta
