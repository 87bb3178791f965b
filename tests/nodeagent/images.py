"""Containers from local images: when a pod's image exists in the local podman storage
(hack/podman: runc, rootful, storage under ~/.cache/kubetune/containers, where hack/images
builds), the node agent runs the container *inside that image* instead of as a host process.

What the container gets, as a kubelet + container runtime would give it:
- the image's root filesystem, entrypoint (unless the pod sets `command`) and workdir (unless
  `workingDir`);
- the pod's volumes (the same sandbox directories the process mode bind-mounts), its service
  account token at /var/run/secrets/kubernetes.io/serviceaccount and its own termination-log
  file at `terminationMessagePath`;
- the resolved env (values, fieldRefs, configMap/secret refs, envFrom) and nothing of the
  agent's own environment; values are never on a command line: they go through an env file
  (mode 0600 in the pod's sandbox, beside its secret volumes, removed when the container ends),
  or, for a value with a newline (which env files cannot hold), through podman's environment
  (`--env NAME`);
- `securityContext`: runAsUser/runAsGroup (container over pod), fsGroup/supplementalGroups,
  readOnlyRootFilesystem, allowPrivilegeEscalation=false, capabilities drop/add;
- `resources.limits.memory` as the container's memory limit (OOMKilled is read back);
- the host's network namespace, like the process mode (the API server and MinIO listen on the
  loopback; no pod IPs here).

Anything else in the image's name is left to the process mode (images are not pulled: there is
no registry here). Set KUBETUNE_AGENT_IMAGES=off to never use images.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("nodeagent.images")

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
PODMAN = REPO / "hack" / "podman"


class LocalImages:
    """Which images exist in the local podman storage (positive answers are cached; a missing
    image is looked up again after `recheck` seconds, since builds may land while we run)."""

    def __init__(self, podman: Path = PODMAN, recheck: float = 10.0) -> None:
        self.podman = podman
        self.recheck = recheck
        self._known: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()
        self.enabled = (
            os.environ.get("KUBETUNE_AGENT_IMAGES", "on") != "off"
            and podman.exists()
            and shutil.which("podman") is not None
            and os.geteuid() == 0
        )

    def exists(self, image: str) -> bool:
        if not self.enabled or not image:
            return False
        with self._lock:
            hit = self._known.get(image)
            if hit is not None and (hit[0] or time.monotonic() - hit[1] < self.recheck):
                return hit[0]
        try:
            found = (
                subprocess.run(
                    [str(self.podman), "image", "exists", image],
                    capture_output=True,
                    timeout=60,
                    check=False,
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("podman image exists %s failed: %s", image, e)
            found = False
        with self._lock:
            self._known[image] = (found, time.monotonic())
        return found

    def command(self, *args: str) -> list[str]:
        return [str(self.podman), *args]


def _sc(pod_spec: JSON, container: JSON, key: str) -> Any:
    """A securityContext field, the container's over the pod's."""
    c = (container.get("securityContext") or {}).get(key)
    return c if c is not None else (pod_spec.get("securityContext") or {}).get(key)


def run_args(
    *,
    name: str,
    image: str,
    pod_spec: JSON,
    container: JSON,
    env_file: Path | None,
    env_names: Sequence[str],
    mounts: Sequence[tuple[Path, str, bool]],
    memory_limit: int | None,
    hostname: str,
    argv: Sequence[str] | None,
) -> list[str]:
    """`podman run` arguments (after `podman`) for one container. `argv` is the pod's
    command + args already expanded; None means the image's entrypoint with the pod's args
    (given in `argv` as [] + args through `container["args"]` by the caller)."""
    args = ["run", "--name", name, "--network", "host", "--hostname", hostname]
    args += ["--pull", "never", "--init=false", "--stop-timeout", "30"]
    uid = _sc(pod_spec, container, "runAsUser")
    gid = _sc(pod_spec, container, "runAsGroup")
    if uid is not None:
        args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    groups = list((pod_spec.get("securityContext") or {}).get("supplementalGroups") or [])
    fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None:
        groups.append(fs_group)
    for g in groups:
        args += ["--group-add", str(g)]
    if _sc(pod_spec, container, "readOnlyRootFilesystem"):
        args += ["--read-only"]
    if _sc(pod_spec, container, "allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = (container.get("securityContext") or {}).get("capabilities") or {}
    for cap in caps.get("drop") or []:
        args += ["--cap-drop", str(cap).lower()]
    for cap in caps.get("add") or []:
        args += ["--cap-add", str(cap).lower()]
    if memory_limit is not None:
        # No swap beyond the limit, like a kubelet on a node without swap.
        args += ["--memory", str(memory_limit), "--memory-swap", str(memory_limit)]
    for src, dst, ro in mounts:
        args += ["--volume", f"{src}:{dst}:{'ro' if ro else 'rw'}"]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for n in env_names:
        args += ["--env", n]
    workdir = container.get("workingDir")
    if workdir:
        args += ["--workdir", str(workdir)]
    if container.get("command"):
        assert argv is not None
        args += ["--entrypoint", json.dumps([argv[0]]), image, *argv[1:]]
    else:
        args += [image, *(argv or [])]
    return args


def container_env(resolved: Mapping[str, str], agent_env: Mapping[str, str]) -> dict[str, str]:
    """The env a container in an image gets: what the pod resolved, without what came only from
    the agent's own environment (its PATH, HOME, KUBECONFIG are host paths)."""
    drop = {"HOME", "KUBECONFIG"}
    return {
        k: v
        for k, v in resolved.items()
        if k not in drop and not (k in agent_env and agent_env[k] == v)
    }


def write_env_file(path: Path, env: Mapping[str, str]) -> list[str]:
    """Write the single-line values to `path` (0600); return the names of the others."""
    lines, rest = [], []
    for k, v in sorted(env.items()):
        if "\n" in v or "\r" in v:
            rest.append(k)
        else:
            lines.append(f"{k}={v}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return rest


def oom_killed(images: LocalImages, name: str) -> bool:
    out = subprocess.run(
        images.command("inspect", "--format", "{{.State.OOMKilled}}", name),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() == "true"


def remove(images: LocalImages, name: str) -> None:
    subprocess.run(
        images.command("rm", "--force", "--time", "0", name),
        capture_output=True,
        timeout=120,
        check=False,
    )


def kill(images: LocalImages, name: str, sig: str) -> None:
    subprocess.run(
        images.command("kill", "--signal", sig, name),
        capture_output=True,
        timeout=60,
        check=False,
    )
