"""The node agent's pod worker, shared parts: its context, per-container state, and the
interrupts that end a pod's main flow (pods.py)."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import Cgroup, MemoryCgroups
from .images import LocalImages
from .kube import JSON, Kube

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


TERMINATION_MESSAGE_MAX = 4096


FALLBACK_LOG_LINES = 80


FALLBACK_LOG_BYTES = 2048


# How many pod names of an Indexed Job the /etc/hosts stand-in lists (PodWorker._hosts_file).
HOSTS_INDEXES = 64


TOKEN_EXPIRATION = 3607  # the kubelet's value: the API server extends such bound tokens to a year


@dataclass
class NodeContext:
    """What pod workers need from the agent."""

    kube: Kube
    node: str
    state_dir: Path
    api_host: str
    api_port: int
    ca_file: Path
    cgroups: MemoryCgroups
    use_mount_ns: bool
    base_env: dict[str, str]
    unpullable: re.Pattern[str] | None
    entrypoints: list[tuple[re.Pattern[str], list[str]]]
    node_allocatable: dict[str, str]
    stop: threading.Event
    post_event: Callable[[JSON, str, str, str], None]
    images: LocalImages | None = None
    backoff_base: float = 2.0
    backoff_max: float = 20.0

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


class _Interrupt(Exception):
    pass


class _Deleted(_Interrupt):
    """The pod has a deletionTimestamp."""


class _Gone(_Interrupt):
    """The pod object no longer exists (or was replaced)."""


class _Shutdown(_Interrupt):
    """The agent is stopping."""


class _Deadline(_Interrupt):
    """activeDeadlineSeconds passed."""


class _PodFailed(Exception):
    """An init container failed and restartPolicy is Never."""


class _Waiting(Exception):
    """A container cannot start yet; carries the waiting reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ContainerRun:
    spec: JSON
    init: bool
    restarts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    cgroup: Cgroup | None = None
    state: JSON = field(default_factory=dict)
    last_state: JSON = field(default_factory=dict)
    started_at: str | None = None
    restart_at: float | None = None
    backoff: float = 0.0
    done: bool = False
    log_path: Path | None = None
    term_path: Path | None = None
    container_id: str = ""
    # Set when the container runs inside its image (podman; images.py): the container's name.
    podman_name: str = ""
    signalled: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        t = self.state.get("terminated")
        return None if t is None else int(t["exitCode"])
