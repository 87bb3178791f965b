"""Memory cgroups for the node agent's containers (what the container runtime does for kubelet).

Each container run gets its own memory cgroup, v1 (``/sys/fs/cgroup/memory``) or v2, with the
container's ``resources.limits.memory`` as its limit (no limit when unset). The cgroup also lets
the agent find and kill every process of a container, even ones that left its process group, and
tells it whether the kernel OOM-killed something in it (``oom_kill`` in memory.oom_control or
memory.events), which becomes ``reason: OOMKilled``.

When neither is usable (not root, no memory controller) ``MemoryCgroups.available`` is False:
limits are then not enforced and OOMKilled is never reported; the agent logs that once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from pathlib import Path

log = logging.getLogger("nodeagent.cgroups")


class Cgroup:
    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs_file.read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.path / name).read_text()
        except OSError:
            return 0
        m = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        return int(m.group(1)) if m else 0

    def signal_all(self, sig: int) -> int:
        n = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                n += 1
        return n

    def kill_all(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.signal_all(signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.05)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        log.warning("could not remove cgroup %s", self.path)


class MemoryCgroups:
    """Creates per-container memory cgroups under <root>/<prefix>/ (kubetune/<id>/<node>)."""

    def __init__(self, prefix: str) -> None:
        self.version = 0
        self.base: Path | None = None
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "memory.limit_in_bytes").exists():
                self.version, self.base = 1, v1 / prefix
            elif "memory" in (v2 / "cgroup.controllers").read_text().split():
                self.version, self.base = 2, v2 / prefix
                self._enable_v2(v2, prefix)
            if self.base is not None:
                self.base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("memory cgroups unavailable (%s): memory limits are NOT enforced", e)
            self.version, self.base = 0, None
        if self.base is None and self.version == 0:
            log.warning("no memory cgroup controller found: memory limits are NOT enforced")

    @property
    def available(self) -> bool:
        return self.base is not None

    def _enable_v2(self, root: Path, prefix: str) -> None:
        # Delegate the memory controller down to <prefix>/ so leaves can set memory.max.
        path = root
        for part in prefix.strip("/").split("/"):
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text("+memory")
            path = path / part
            path.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (path / "cgroup.subtree_control").write_text("+memory")

    def create(self, pod_uid: str, name: str, limit_bytes: int | None) -> Cgroup | None:
        if self.base is None:
            return None
        pod_dir = self.base / pod_uid
        try:
            pod_dir.mkdir(exist_ok=True)
            if self.version == 2:
                with contextlib.suppress(OSError):
                    (pod_dir / "cgroup.subtree_control").write_text("+memory")
            path = pod_dir / name
            if path.exists():
                Cgroup(path, self.version).remove()
            path.mkdir()
            cg = Cgroup(path, self.version)
            if limit_bytes is not None:
                if self.version == 1:
                    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    with contextlib.suppress(OSError):  # absent without swap accounting
                        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                else:
                    (path / "memory.max").write_text(str(limit_bytes))
                    with contextlib.suppress(OSError):
                        (path / "memory.swap.max").write_text("0")
            return cg
        except OSError as e:
            log.warning("could not create cgroup for %s/%s: %s", pod_uid, name, e)
            return None

    def remove_pod(self, pod_uid: str) -> None:
        if self.base is None:
            return
        pod_dir = self.base / pod_uid
        if not pod_dir.exists():
            return
        for child in pod_dir.iterdir():
            if child.is_dir():
                Cgroup(child, self.version).remove()
        with contextlib.suppress(OSError):
            pod_dir.rmdir()

    def remove_all(self) -> None:
        if self.base is None or not self.base.exists():
            return
        for pod_dir in self.base.iterdir():
            if pod_dir.is_dir():
                self.remove_pod(pod_dir.name)
