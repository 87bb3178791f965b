"""One thread per pod: what kubelet + a container runtime do for a pod, with local processes.

Lifecycle: Pending (containers waiting ContainerCreating) -> volumes materialised in a per-pod
sandbox -> init containers one by one -> all containers started (Running, Ready) -> each exit
recorded as state.terminated (exitCode, reason Completed/Error/OOMKilled, termination message)
and restarted per restartPolicy -> Succeeded/Failed. activeDeadlineSeconds kills the pod
(Failed, DeadlineExceeded). A deletionTimestamp gets SIGTERM, SIGKILL after the grace period,
then the pod object is deleted with gracePeriodSeconds=0, as kubelet does.

Each container runs as ``unshare --mount --propagation private /bin/sh <sandbox>/run.sh CMD``:
the script joins the container's memory cgroup, bind-mounts the pod's volumes (sandbox dirs)
and its own termination-log file onto the paths the pod spec names, cds to workingDir and execs
CMD, so the process sees /workspace, /etc/kubetune/config.json, /dev/termination-log and
/var/run/secrets/kubernetes.io/serviceaccount at the paths it expects while sharing the host's
root filesystem otherwise (images are not used).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import images as images_mod
from .cgroups import Cgroup, MemoryCgroups
from .images import LocalImages
from .kube import JSON, ApiError, Kube, pod_path
from .util import expand, now, parse_quantity, parse_time

log = logging.getLogger("nodeagent.pods")


def host_paths_in_use(state_dir: Path) -> list[Path]:
    """Host paths a container process needs to stay visible in its mount namespace."""
    checkout = Path(__file__).resolve().parents[2]
    paths = {state_dir.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    paths.add(checkout)
    return sorted(paths)


def hidden_host_path(dst: str, needed: list[Path]) -> Path | None:
    """The first of `needed` that a mount at `dst` would cover (dst is it or an ancestor)."""
    target = Path(dst)
    for path in needed:
        if target == path or target in path.parents:
            return path
    return None


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


class PodWorker(threading.Thread):
    def __init__(self, ctx: NodeContext, pod: JSON, on_exit: Callable[[str], None]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self._pod = pod
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._gone = False
        self._on_exit = on_exit
        self.sandbox = ctx.pods_dir / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.log_dir = ctx.logs_dir / f"{self.ns}_{self.pod_name}_{self.uid}"
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.init_runs = [ContainerRun(c, True) for c in spec.get("initContainers") or []]
        self.main_runs = [ContainerRun(c, False) for c in spec.get("containers") or []]
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time: str | None = None
        self.terminal = False
        self.sandbox_ready = False
        self.initialized = not self.init_runs
        self._conditions: dict[str, JSON] = {}
        self._last_pushed: str = ""
        self.volume_dirs: dict[str, Path] = {}
        self.sa_dir: Path | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def pod(self) -> JSON:
        with self._lock:
            return self._pod

    def update(self, pod: JSON) -> None:
        with self._lock:
            self._pod = pod
        self._changed.set()

    def mark_gone(self) -> None:
        self._gone = True
        self._changed.set()

    def runs(self) -> list[ContainerRun]:
        return self.init_runs + self.main_runs

    def find_run(self, container: str) -> ContainerRun | None:
        for r in self.runs():
            if r.name == container:
                return r
        return None

    def _deletion_requested(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _check(self) -> None:
        if self.ctx.stop.is_set():
            raise _Shutdown()
        if self._gone:
            raise _Gone()
        if self._deletion_requested():
            raise _Deleted()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and self.start_time and not self.terminal:
            elapsed = time.time() - parse_time(self.start_time).timestamp()
            if elapsed > float(deadline):
                raise _Deadline()

    def _sleep(self, seconds: float) -> None:
        self._check()
        self._changed.wait(seconds)
        self._changed.clear()
        self._check()

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.ctx.post_event(self.pod, type_, reason, message)

    # ------------------------------------------------------------------ status

    def _set_condition(
        self, ctype: str, status: bool, reason: str | None = None, message: str | None = None
    ) -> None:
        value = "True" if status else "False"
        old = self._conditions.get(ctype)
        if old and old["status"] == value and old.get("reason") == reason:
            old["message"] = message
            return
        self._conditions[ctype] = {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }

    def _container_status(self, r: ContainerRun) -> JSON:
        state = r.state or {"waiting": {"reason": "ContainerCreating"}}
        running = "running" in state
        status: JSON = {
            "name": r.name,
            "image": r.spec.get("image", ""),
            "imageID": "",
            "ready": running and not r.init,
            "started": running,
            "restartCount": r.restarts,
            "state": state,
            "lastState": r.last_state,
        }
        if r.container_id:
            status["containerID"] = r.container_id
        return status

    def _refresh_conditions(self) -> None:
        self._set_condition("PodReadyToStartContainers", self.sandbox_ready)
        if self.initialized:
            self._set_condition("Initialized", True)
        else:
            pending = [r.name for r in self.init_runs if r.exit_code() != 0]
            self._set_condition(
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending)}]",
            )
        if self.terminal:
            self._set_condition("ContainersReady", False, "PodCompleted")
            self._set_condition("Ready", False, "PodCompleted")
        else:
            unready = [r.name for r in self.main_runs if not r.running]
            if unready:
                msg = f"containers with unready status: [{' '.join(unready)}]"
                self._set_condition("ContainersReady", False, "ContainersNotReady", msg)
                self._set_condition("Ready", False, "ContainersNotReady", msg)
            else:
                self._set_condition("ContainersReady", True)
                self._set_condition("Ready", True)

    def push(self) -> None:
        """Merge-patch the full pod status (lists replaced whole); skipped when unchanged."""
        self._refresh_conditions()
        current = self.pod.get("status") or {}
        ours = set(self._conditions)
        conditions = [c for c in current.get("conditions") or [] if c.get("type") not in ours]
        if not any(c.get("type") == "PodScheduled" for c in conditions):
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": self.start_time,
                }
            )
        conditions += list(self._conditions.values())
        status: JSON = {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(r) for r in self.main_runs],
            "initContainerStatuses": [self._container_status(r) for r in self.init_runs] or None,
        }
        key = json.dumps(status, sort_keys=True)
        if key == self._last_pushed:
            return
        try:
            updated = self.ctx.kube.merge_patch(
                pod_path(self.ns, self.pod_name, "status"), {"status": status}
            )
        except ApiError as e:
            if e.status == 404:
                self.mark_gone()
                return
            log.warning("%s/%s: status update failed: %s", self.ns, self.pod_name, e)
            return
        except Exception as e:  # connection problems: the next push retries
            log.warning("%s/%s: status update failed: %s", self.ns, self.pod_name, e)
            return
        if updated.get("metadata", {}).get("uid") == self.uid:
            with self._lock:
                self._pod = updated
        self._last_pushed = key

    # ------------------------------------------------------------------ main flow

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.exception("%s/%s: worker failed", self.ns, self.pod_name)
            with contextlib.suppress(Exception):
                self._kill_all(0)
                if not self.terminal:
                    self.phase, self.reason, self.message = "Failed", "NodeAgentError", str(e)
                    self.terminal = True
                    self.push()
        finally:
            grace = 0.0 if self._gone else 2.0
            with contextlib.suppress(Exception):
                self._kill_all(grace)
            self.ctx.cgroups.remove_pod(self.uid)
            if self._gone:
                shutil.rmtree(self.sandbox, ignore_errors=True)
            self._on_exit(self.uid)

    def _run(self) -> None:
        try:
            try:
                self._lifecycle()
            except _Deadline:
                self._handle_deadline()
            except _PodFailed:
                self._finish()
            self._await_deletion()
        except _Deleted:
            self._handle_deletion()
        except (_Gone, _Shutdown):
            pass

    def _lifecycle(self) -> None:
        pod = self.pod
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.terminal = True
            return
        previous = status.get("containerStatuses") or []
        if any(
            ("running" in (s.get("state") or {})) or ("terminated" in (s.get("state") or {}))
            for s in previous
        ):
            # Started by an earlier agent process, whose children died with it.
            self.start_time = status.get("startTime") or now()
            self.phase, self.reason = "Failed", "NodeAgentRestarted"
            self.message = "the node agent restarted while this pod ran; its processes are gone"
            self.terminal = True
            self.push()
            return
        self._check()
        self.start_time = status.get("startTime") or now()
        for r in self.init_runs:
            r.state = {"waiting": {"reason": "PodInitializing"}}
        for r in self.main_runs:
            r.state = {
                "waiting": {"reason": "PodInitializing" if self.init_runs else "ContainerCreating"}
            }
        self.push()
        self._prepare_sandbox()
        self.sandbox_ready = True
        self.push()
        for r in self.init_runs:
            self._run_init(r)
        self.initialized = True
        for r in self.main_runs:
            r.state = {"waiting": {"reason": "ContainerCreating"}}
        self.push()
        for r in self.main_runs:
            self._start(r)
        self._monitor()
        self._finish()

    def _finish(self) -> None:
        codes = [r.exit_code() for r in self.main_runs]
        failed_init = (
            any(r.exit_code() not in (None, 0) for r in self.init_runs) and not self.initialized
        )
        ok = not failed_init and all(c == 0 for c in codes)
        self.phase = "Succeeded" if ok else "Failed"
        self.terminal = True
        for r in self.main_runs:
            if not r.state.get("terminated") and not r.running:
                r.state = {
                    "waiting": {
                        "reason": "PodInitializing" if not self.initialized else "ContainerCreating"
                    }
                }
        self.push()
        self.ctx.cgroups.remove_pod(self.uid)
        log.info("%s/%s: %s", self.ns, self.pod_name, self.phase)

    def _await_deletion(self) -> None:
        while True:
            self._sleep(5.0)

    def _run_init(self, r: ContainerRun) -> None:
        while True:
            self._start(r)
            while r.running:
                self._sleep(0.2)
            self._reap(r)
            code = r.exit_code()
            self.push()
            if code == 0:
                r.done = True
                return
            if self.restart_policy == "Never":
                raise _PodFailed()
            self._wait_backoff(r)

    def _wait_backoff(self, r: ContainerRun) -> None:
        r.backoff = min(self.ctx.backoff_max, r.backoff * 2 if r.backoff else self.ctx.backoff_base)
        r.last_state, r.state = (
            r.state,
            {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {r.backoff:.0f}s restarting failed container={r.name} pod={self.pod_name}_{self.ns}({self.uid})",
                }
            },
        )
        self.push()
        self._event("Warning", "BackOff", "Back-off restarting failed container")
        deadline = time.monotonic() + r.backoff
        while time.monotonic() < deadline:
            self._sleep(min(0.5, deadline - time.monotonic()))
        r.restarts += 1

    def _monitor(self) -> None:
        while True:
            for r in self.main_runs:
                if r.proc is not None and not r.running and "running" in r.state:
                    self._reap(r)
                    code = r.exit_code()
                    if self.restart_policy == "Always" or (
                        self.restart_policy == "OnFailure" and code != 0
                    ):
                        r.backoff = min(
                            self.ctx.backoff_max,
                            r.backoff * 2 if r.backoff else self.ctx.backoff_base,
                        )
                        r.restart_at = time.monotonic() + r.backoff
                        r.last_state = r.state
                        r.state = {
                            "waiting": {
                                "reason": "CrashLoopBackOff",
                                "message": f"back-off {r.backoff:.0f}s restarting failed container={r.name} pod={self.pod_name}_{self.ns}({self.uid})",
                            }
                        }
                        self._event("Warning", "BackOff", "Back-off restarting failed container")
                    else:
                        r.done = True
                    self.push()
                if r.restart_at is not None and time.monotonic() >= r.restart_at:
                    r.restart_at = None
                    r.restarts += 1
                    self._start(r)
            if all(r.done for r in self.main_runs):
                return
            self.push()
            self._sleep(0.2)

    # ------------------------------------------------------------------ interrupts

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _handle_deletion(self) -> None:
        self._kill_all(self._grace(), event=True)
        if not self.terminal and not self._gone:
            ok = all(r.exit_code() == 0 for r in self.main_runs)
            self.phase = "Succeeded" if ok else "Failed"
            self.terminal = True
            self.push()
        if not self._gone:
            delete_pod_now(self.ctx.kube, self.ns, self.pod_name, self.uid)
        self._gone = True  # nothing more to do for this pod: the sandbox can go

    def _handle_deadline(self) -> None:
        log.info("%s/%s: activeDeadlineSeconds exceeded", self.ns, self.pod_name)
        self._event(
            "Normal",
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline",
        )
        self._kill_all(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), event=True)
        self.phase, self.reason = "Failed", "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self.terminal = True
        self.push()

    def _kill_all(self, grace: float, event: bool = False) -> None:
        """SIGTERM every running container, SIGKILL whatever is left after `grace` seconds."""
        live = [r for r in self.runs() if r.running]
        for r in live:
            if event:
                self._event("Normal", "Killing", f"Stopping container {r.name}")
            _signal_run(r, signal.SIGTERM, self.ctx.images)
        deadline = time.monotonic() + grace
        while any(r.running for r in live) and time.monotonic() < deadline:
            if self._gone or self.ctx.stop.is_set():
                break
            meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
            if meta_grace is not None and float(meta_grace) == 0:
                break
            time.sleep(0.1)
        for r in live:
            if r.running:
                _signal_run(r, signal.SIGKILL, self.ctx.images)
        for r in live:
            if r.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(timeout=10)
            self._reap(r)
            r.done = True

    # ------------------------------------------------------------------ containers

    def _start(self, r: ContainerRun) -> None:
        """Start one container; while it cannot start, keep a waiting state up and retry."""
        announced: set[str] = set()
        pull_backoff = 5.0
        while True:
            self._check()
            try:
                self._pull(r)
                image = str(r.spec.get("image", ""))
                in_image = self.ctx.images is not None and self.ctx.images.exists(image)
                r.podman_name = f"kt-{self.uid[:13]}-{r.name}-{r.restarts}" if in_image else ""
                env = self._resolve_env(r)
                argv = self._argv(r, env)
                break
            except _Waiting as w:
                if w.reason == "ErrImagePull":
                    r.state = {"waiting": {"reason": "ErrImagePull", "message": w.message}}
                    self.push()
                    self._event("Warning", "Failed", w.message)
                    self._sleep(1.0)
                    r.state = {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{r.spec.get("image", "")}"',
                        }
                    }
                    self.push()
                    self._event(
                        "Normal", "BackOff", f'Back-off pulling image "{r.spec.get("image", "")}"'
                    )
                    self._sleep(pull_backoff)
                    pull_backoff = min(30.0, pull_backoff * 2)
                    continue
                r.state = {"waiting": {"reason": w.reason, "message": w.message}}
                self.push()
                if w.message not in announced:
                    announced.add(w.message)
                    self._event("Warning", "Failed", f"Error: {w.message}")
                self._sleep(2.0)
        self._spawn(r, env, argv)

    def _pull(self, r: ContainerRun) -> None:
        image = str(r.spec.get("image", ""))
        pattern = self.ctx.unpullable
        if pattern is not None and pattern.search(image):
            raise _Waiting(
                "ErrImagePull",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found (kubetune node agent: image matches the unpullable-images pattern)',
            )

    def _argv(self, r: ContainerRun, env: dict[str, str]) -> list[str]:
        command = list(r.spec.get("command") or [])
        args = list(r.spec.get("args") or [])
        if not command and r.podman_name:
            # The image's entrypoint, with the pod's args.
            return [expand(a, env) for a in args]
        if not command:
            image = str(r.spec.get("image", ""))
            for pattern, entrypoint in self.ctx.entrypoints:
                if pattern.search(image):
                    command = list(entrypoint)
                    break
        if not command:
            if not args:
                raise _Waiting(
                    "CreateContainerError",
                    f"container {r.name}: the kubetune node agent runs no images, so it needs "
                    "`command` (or an entrypoint for this image in KUBETUNE_AGENT_ENTRYPOINTS)",
                )
            command, args = args, []
        return [expand(a, env) for a in command + args]

    def _spawn(self, r: ContainerRun, env: dict[str, str], argv: list[str]) -> None:
        cdir = self.sandbox / "containers" / r.name
        cdir.mkdir(parents=True, exist_ok=True)
        r.term_path = cdir / f"termination-log.{r.restarts}"
        r.term_path.write_bytes(b"")
        r.term_path.chmod(0o666)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        r.log_path = self.log_dir / f"{r.name}.{r.restarts}.log"
        limit = _memory_limit(r.spec)
        if r.podman_name:
            self._spawn_in_image(r, env, argv, limit)
            return
        r.cgroup = self.ctx.cgroups.create(self.uid, f"{r.name}-{r.restarts}", limit)
        if limit is not None and r.cgroup is None and r.restarts == 0:
            log.warning(
                "%s/%s: memory limit of %s not enforced (no cgroup)", self.ns, self.pod_name, r.name
            )
        script = cdir / f"run.{r.restarts}.sh"
        script.write_text(self._script(r))
        if self.ctx.use_mount_ns:
            cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", str(script), *argv]
        else:
            cmd = ["/bin/sh", str(script), *argv]
        r.container_id = f"kubetune://{self.uid}-{r.name}-{r.restarts}"
        r.started_at = now()
        with open(r.log_path, "ab") as out:
            r.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=str(self._home()),
            )
        log.info(
            "%s/%s: started %s (pid %d): %s",
            self.ns,
            self.pod_name,
            r.name,
            r.proc.pid,
            shlex.join(argv),
        )
        r.state = {"running": {"startedAt": r.started_at}}
        if not r.init:
            self.phase = "Running"
        self._event("Normal", "Started", f"Started container {r.name}")
        self.push()

    def _spawn_in_image(
        self, r: ContainerRun, env: dict[str, str], argv: list[str], limit: int | None
    ) -> None:
        """Run the container inside its image with podman (images.py says what it gets)."""
        assert self.ctx.images is not None and r.log_path is not None
        images_mod.remove(self.ctx.images, r.podman_name)  # a leftover of an agent restart
        cenv = images_mod.container_env(env, self.ctx.base_env)
        env_file = self.sandbox / "containers" / r.name / f"env.{r.restarts}"
        multiline = images_mod.write_env_file(env_file, cenv)
        spec = self.pod["spec"]
        podman_argv = self.ctx.images.command(
            *images_mod.run_args(
                name=r.podman_name,
                image=str(r.spec.get("image", "")),
                pod_spec=spec,
                container=r.spec,
                env_file=env_file,
                env_names=multiline,
                mounts=self._mounts(r, for_image=True),
                memory_limit=limit,
                hostname=self.pod_name,
                argv=argv,
            )
        )
        # podman reads the values of `--env NAME` (multi-line values) from its own environment.
        penv = {k: os.environ[k] for k in ("HOME", "KUBETUNE_CONTAINERS") if k in os.environ}
        penv["PATH"] = self.ctx.base_env.get("PATH", os.defpath)
        penv.update({k: cenv[k] for k in multiline})
        r.container_id = f"podman://{r.podman_name}"
        r.signalled = False
        r.started_at = now()
        with open(r.log_path, "ab") as out:
            r.proc = subprocess.Popen(
                podman_argv,
                env=penv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=str(self._home()),
            )
        log.info(
            "%s/%s: started %s in image %s (pid %d): %s",
            self.ns, self.pod_name, r.name, r.spec.get("image"), r.proc.pid, shlex.join(argv),
        )  # fmt: skip
        r.state = {"running": {"startedAt": r.started_at}}
        if not r.init:
            self.phase = "Running"
        self._event("Normal", "Started", f"Started container {r.name}")
        self.push()

    def _reap(self, r: ContainerRun) -> None:
        """Record a finished container's terminated state and clean up what it left."""
        if r.proc is None:
            return
        if "terminated" in r.state and r.state["terminated"].get("containerID") == r.container_id:
            return
        code = r.proc.poll()
        if code is None:  # still running (unkillable?): nothing to record yet
            return
        if code < 0:
            code = 128 - code
        # Like a runtime when a container's init process exits: kill whatever it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, signal.SIGKILL)
        oom = False
        if r.podman_name and self.ctx.images is not None:
            # runc enforces the limit; podman's OOMKilled flag stays false on this host's
            # cgroup v1, so a SIGKILL nobody sent to a memory-limited container counts as well.
            oom = images_mod.oom_killed(self.ctx.images, r.podman_name) or (
                code == 137 and not r.signalled and _memory_limit(r.spec) is not None
            )
            images_mod.remove(self.ctx.images, r.podman_name)
            with contextlib.suppress(OSError):
                (self.sandbox / "containers" / r.name / f"env.{r.restarts}").unlink()
        if r.cgroup is not None:
            oom = r.cgroup.oom_kills() > 0
            r.cgroup.remove()
            r.cgroup = None
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        terminated: JSON = {
            "exitCode": code,
            "reason": reason,
            "startedAt": r.started_at,
            "finishedAt": now(),
            "containerID": r.container_id,
        }
        message = self._termination_message(r, code)
        if message:
            terminated["message"] = message
        r.state = {"terminated": terminated}
        log.info("%s/%s: %s exited %d (%s)", self.ns, self.pod_name, r.name, code, reason)

    def _termination_message(self, r: ContainerRun, code: int) -> str:
        msg = ""
        if r.term_path is not None:
            with contextlib.suppress(OSError):
                msg = r.term_path.read_bytes()[:TERMINATION_MESSAGE_MAX].decode("utf-8", "replace")
        if (
            not msg
            and code != 0
            and r.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            and r.log_path
        ):
            with contextlib.suppress(OSError):
                lines = r.log_path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
                msg = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode("utf-8", "replace")
        return msg

    def _home(self) -> Path:
        home = self.sandbox / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    def _script(self, r: ContainerRun) -> str:
        q = shlex.quote
        lines = ["#!/bin/sh", "# generated by the kubetune node agent", "set -e"]
        if r.cgroup is not None:
            lines.append(f"echo $$ > {q(str(r.cgroup.procs_file))}")
        if self.ctx.use_mount_ns:
            for src, dst, ro in self._mounts(r):
                if src.is_dir():
                    lines.append(f"mkdir -p {q(dst)}")
                else:
                    parent = os.path.dirname(dst) or "/"
                    lines.append(f"[ -e {q(dst)} ] || {{ mkdir -p {q(parent)} && : > {q(dst)}; }}")
                lines.append(f"mount --bind {q(str(src))} {q(dst)}")
                if ro:
                    lines.append(f"mount -o remount,bind,ro {q(dst)}")
        home = q(str(self._home()))
        workdir = r.spec.get("workingDir")
        if workdir:
            lines.append(
                f"cd {q(workdir)} 2>/dev/null || {{ mkdir -p {q(workdir)} 2>/dev/null && cd {q(workdir)}; }} || cd {home}"
            )
        else:
            lines.append(f"cd {home}")
        lines.append('exec "$@"')
        return "\n".join(lines) + "\n"

    def _mounts(self, r: ContainerRun, for_image: bool = False) -> list[tuple[Path, str, bool]]:
        mounts: list[tuple[Path, str, bool]] = []
        for m in r.spec.get("volumeMounts") or []:
            src = self.volume_dirs.get(m["name"])
            if src is None:
                continue
            sub = m.get("subPath") or m.get("subPathExpr")
            if sub:
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)
            mounts.append((src, str(m["mountPath"]).rstrip("/") or "/", bool(m.get("readOnly"))))
        paths = {dst for _, dst, _ in mounts}
        if self.sa_dir is not None and SA_DIR not in paths:
            mounts.append((self.sa_dir, SA_DIR, True))
        term = r.spec.get("terminationMessagePath") or "/dev/termination-log"
        if r.term_path is not None and term not in paths:
            mounts.append((r.term_path, term, False))
        hosts = self._hosts_file()
        if hosts is not None and "/etc/hosts" not in paths:
            mounts.append((hosts, "/etc/hosts", True))
        mounts.sort(key=lambda m: (m[1].count("/"), m[1]))
        if for_image:  # its own root filesystem: no host path to protect
            return mounts
        return [m for m in mounts if not self._hides_host(m[1])]

    def _hosts_file(self) -> Path | None:
        """A stand-in for cluster DNS, for pods with a hostname and subdomain (the pods of an
        Indexed Job behind a headless Service): /etc/hosts resolving the names of the group's
        pods, `<prefix>-<i>.<subdomain>[.<ns>[.svc[.cluster.local]]]` for i < HOSTS_INDEXES,
        to 127.0.0.1, where every pod of every node agent runs. Other names resolve as on the
        host (its own /etc/hosts is kept on top)."""
        spec = self.pod["spec"]
        hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
        if not hostname or not subdomain:
            return None
        m = re.fullmatch(r"(.+)-([0-9]+)", str(hostname))
        names = [f"{m.group(1)}-{i}" for i in range(HOSTS_INDEXES)] if m else [str(hostname)]
        lines = []
        with contextlib.suppress(OSError):
            lines.append(Path("/etc/hosts").read_text().rstrip("\n"))
        lines.append(f"# kubetune node agent: pods of {self.ns}/{subdomain}")
        for name in names:
            fqdn = [f"{name}.{subdomain}", f"{name}.{subdomain}.{self.ns}"]
            fqdn += [f"{fqdn[1]}.svc", f"{fqdn[1]}.svc.cluster.local"]
            lines.append("127.0.0.1 " + " ".join(fqdn))
        path = self.sandbox / "etc-hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _hides_host(self, dst: str) -> bool:
        """A stand-in limit: containers share the host's filesystem, so a volume mounted at a
        path that holds what the process itself runs from (the agent's state dir with the
        sandbox, the Python environment, the checkout) would hide it, e.g. a pod mounting /tmp
        on a machine whose checkout lives under /tmp. Such a mount is skipped, with a log line;
        a kubelet has no such problem (each container has its own root filesystem)."""
        needed = hidden_host_path(dst, host_paths_in_use(self.ctx.state_dir))
        if needed is not None:
            log.warning(
                "%s/%s: not mounting a volume at %s: it would hide %s, which the container "
                "runs from on this host (stand-in limit)",
                self.ns, self.pod_name, dst, needed,
            )  # fmt: skip
        return needed is not None

    # ------------------------------------------------------------------ env

    def _resolve_env(self, r: ContainerRun) -> dict[str, str]:
        env = dict(self.ctx.base_env)
        env["HOSTNAME"] = self.pod_name
        env["HOME"] = str(self._home())
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": self.ctx.api_host,
                "KUBERNETES_SERVICE_PORT": str(self.ctx.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ctx.api_port),
                "KUBERNETES_PORT": f"tcp://{self.ctx.api_host}:{self.ctx.api_port}",
            }
        )
        if self.sa_dir is not None:
            env["KUBECONFIG"] = str(self.sandbox / "kubeconfig")
        gpus = _limit(r.spec, "nvidia.com/gpu")
        if gpus:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(int(gpus)))
        cache: dict[tuple[str, str], JSON | None] = {}
        for src in r.spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                obj = self._get_ref("configmaps", ref["name"], bool(ref.get("optional")), cache)
                data = (obj or {}).get("data") or {}
            else:
                ref = src["secretRef"]
                obj = self._get_ref("secrets", ref["name"], bool(ref.get("optional")), cache)
                data = {
                    k: base64.b64decode(v).decode()
                    for k, v in ((obj or {}).get("data") or {}).items()
                }
            for k, v in data.items():
                env[prefix + k] = v
        for e in r.spec.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(str(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = self._resource_field(r, vf["resourceFieldRef"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                value = self._key_ref("configmaps", ref, cache)
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                value = self._key_ref("secrets", ref, cache)
            else:
                raise _Waiting("CreateContainerConfigError", f"unsupported valueFrom in env {name}")
            if value is not None:
                env[name] = value
        return env

    def _get_ref(
        self, kind: str, name: str, optional: bool, cache: dict[tuple[str, str], JSON | None]
    ) -> JSON | None:
        if (kind, name) not in cache:
            try:
                cache[(kind, name)] = self.ctx.kube.get(
                    f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
                )
            except ApiError as e:
                if e.status != 404:
                    raise
                cache[(kind, name)] = None
        obj = cache[(kind, name)]
        if obj is None and not optional:
            raise _Waiting("CreateContainerConfigError", f'{kind[:-1]} "{name}" not found')
        return obj

    def _key_ref(
        self, kind: str, ref: JSON, cache: dict[tuple[str, str], JSON | None]
    ) -> str | None:
        optional = bool(ref.get("optional"))
        obj = self._get_ref(kind, ref["name"], optional, cache)
        if obj is None:
            return None
        key = ref["key"]
        if kind == "secrets":
            raw = (obj.get("data") or {}).get(key)
            value = None if raw is None else base64.b64decode(raw).decode()
        else:
            value = (obj.get("data") or {}).get(key)
        if value is None and not optional:
            raise _Waiting(
                "CreateContainerConfigError",
                f"couldn't find key {key} in {kind[:-1]} {self.ns}/{ref['name']}",
            )
        return value

    def _field(self, path: str) -> str:
        pod = self.pod
        meta, spec = pod["metadata"], pod["spec"]
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", self.ctx.node),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise _Waiting("CreateContainerConfigError", f"unsupported fieldRef {path}")

    def _resource_field(self, r: ContainerRun, ref: JSON) -> str:
        container = r.spec
        if ref.get("containerName"):
            found = self.find_run(ref["containerName"])
            container = found.spec if found else container
        kind, _, res = str(ref["resource"]).partition(".")
        resources = container.get("resources") or {}
        raw = (resources.get(kind) or {}).get(res)
        if raw is None and kind == "requests":
            raw = (resources.get("limits") or {}).get(res)
        if raw is None:
            raw = self.ctx.node_allocatable.get(res, "0")
        divisor = parse_quantity(str(ref.get("divisor", "1")))
        return str(math.ceil(parse_quantity(str(raw)) / divisor))

    # ------------------------------------------------------------------ volumes

    def _prepare_sandbox(self) -> None:
        announced: set[str] = set()
        while True:
            self._check()
            try:
                self._materialize_volumes()
                return
            except _Waiting as w:
                if w.message not in announced:
                    announced.add(w.message)
                    self._event("Warning", "FailedMount", w.message)
                self._sleep(2.0)

    def _materialize_volumes(self) -> None:
        vol_root = self.sandbox / "volumes"
        vol_root.mkdir(parents=True, exist_ok=True)
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            self._write_service_account()
        for v in spec.get("volumes") or []:
            name = v["name"]
            d = vol_root / name
            if "emptyDir" in v:
                d.mkdir(exist_ok=True)
                d.chmod(0o777)  # as kubelet makes it: writable by the pod's (non-root) user
            elif "configMap" in v:
                src = v["configMap"]
                obj = self._volume_source("configmaps", src["name"], bool(src.get("optional")))
                self._write_files(
                    d,
                    _configmap_files(obj),
                    src.get("items"),
                    src.get("defaultMode", 0o644),
                    bool(src.get("optional")),
                )
            elif "secret" in v:
                src = v["secret"]
                obj = self._volume_source("secrets", src["secretName"], bool(src.get("optional")))
                self._write_files(
                    d,
                    _secret_files(obj),
                    src.get("items"),
                    src.get("defaultMode", 0o644),
                    bool(src.get("optional")),
                )
            elif "projected" in v:
                self._projected(d, v["projected"])
            elif "downwardAPI" in v:
                src = v["downwardAPI"]
                files = {
                    i["path"]: self._field(i["fieldRef"]["fieldPath"]).encode()
                    for i in src.get("items") or []
                    if "fieldRef" in i
                }
                self._write_files(d, files, None, src.get("defaultMode", 0o644), False)
            elif "hostPath" in v:
                hp = v["hostPath"]
                path = Path(hp["path"])
                if hp.get("type") == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif hp.get("type") == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                d = path
            elif "persistentVolumeClaim" in v:
                d = self.ctx.state_dir / "pvc" / self.ns / v["persistentVolumeClaim"]["claimName"]
                d.mkdir(parents=True, exist_ok=True)
            else:
                kinds = [k for k in v if k != "name"]
                raise _Waiting(
                    "FailedMount",
                    f"volume {name}: type {kinds} is not supported by the kubetune node agent",
                )
            self.volume_dirs[name] = d

    def _volume_source(self, kind: str, name: str, optional: bool) -> JSON | None:
        try:
            return self.ctx.kube.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise _Waiting(
                    "FailedMount", f'MountVolume.SetUp failed: {kind[:-1]} "{name}" not found'
                ) from e
            raise

    def _write_files(
        self, d: Path, files: dict[str, bytes], items: list[JSON] | None, mode: int, optional: bool
    ) -> None:
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        selected: list[tuple[str, bytes, int]] = []
        if items:
            for item in items:
                if item["key"] not in files:
                    if optional or item.get("optional"):
                        continue
                    raise _Waiting(
                        "FailedMount", f"MountVolume.SetUp failed: key {item['key']} not found"
                    )
                selected.append((item["path"], files[item["key"]], item.get("mode", mode)))
        else:
            selected = [(k, v, mode) for k, v in files.items()]
        for rel, data, m in selected:
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(m)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)

    def _projected(self, d: Path, proj: JSON) -> None:
        mode = proj.get("defaultMode", 0o644)
        files: dict[str, bytes] = {}
        for src in proj.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = self._token(
                    t.get("audience"), int(t.get("expirationSeconds", TOKEN_EXPIRATION))
                )
                files[t["path"]] = token.encode()
            elif "configMap" in src or "secret" in src:
                kind = "configMap" if "configMap" in src else "secret"
                s = src[kind]
                optional = bool(s.get("optional"))
                obj = self._volume_source(
                    "configmaps" if kind == "configMap" else "secrets", s["name"], optional
                )
                data = _configmap_files(obj) if kind == "configMap" else _secret_files(obj)
                if s.get("items"):
                    for item in s["items"]:
                        if item["key"] in data:
                            files[item["path"]] = data[item["key"]]
                        elif not optional:
                            raise _Waiting(
                                "FailedMount",
                                f"MountVolume.SetUp failed: key {item['key']} not found in {s['name']}",
                            )
                else:
                    files.update(data)
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        files[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
            else:
                log.warning(
                    "%s/%s: projected source %s not supported; skipped",
                    self.ns,
                    self.pod_name,
                    list(src),
                )
        self._write_files(d, files, None, mode, False)

    def _token(self, audience: str | None, expiration: int) -> str:
        spec: JSON = {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "uid": self.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            resp = self.ctx.kube.create(
                f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiError as e:
            if e.status in (403, 404):
                raise _Waiting(
                    "FailedMount", f'failed to fetch token for service account "{sa}": {e.message}'
                ) from e
            raise
        return str(resp["status"]["token"])

    def _write_service_account(self) -> None:
        """Token, CA and namespace for the pod's service account plus a kubeconfig using them."""
        sa_dir = self.sandbox / "serviceaccount"
        files = {
            "token": self._token(None, TOKEN_EXPIRATION).encode(),
            "ca.crt": self.ctx.ca_file.read_bytes(),
            "namespace": self.ns.encode(),
        }
        self._write_files(sa_dir, files, None, 0o644, False)
        server = f"https://{self.ctx.api_host}:{self.ctx.api_port}"
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubetune",
                    "cluster": {"server": server, "certificate-authority": str(sa_dir / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": f"system:serviceaccount:{self.ns}:{sa}",
                    "user": {"tokenFile": str(sa_dir / "token")},
                }
            ],
            "contexts": [
                {
                    "name": "in-pod",
                    "context": {
                        "cluster": "kubetune",
                        "user": f"system:serviceaccount:{self.ns}:{sa}",
                        "namespace": self.ns,
                    },
                }
            ],
            "current-context": "in-pod",
        }
        (self.sandbox / "kubeconfig").write_text(json.dumps(kubeconfig, indent=1))
        self.sa_dir = sa_dir


def _configmap_files(obj: JSON | None) -> dict[str, bytes]:
    if obj is None:
        return {}
    files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


def _secret_files(obj: JSON | None) -> dict[str, bytes]:
    if obj is None:
        return {}
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def _limit(spec: JSON, resource: str) -> str | None:
    res = spec.get("resources") or {}
    value = (res.get("limits") or {}).get(resource)
    return None if value is None else str(value)


def _memory_limit(spec: JSON) -> int | None:
    value = _limit(spec, "memory")
    return None if value is None else int(parse_quantity(value))


def _signal_run(r: ContainerRun, sig: int, images: LocalImages | None = None) -> None:
    r.signalled = True
    if r.podman_name and images is not None and r.running:
        # The container, not the podman client (SIGKILL to the client would orphan it).
        images_mod.kill(images, r.podman_name, signal.Signals(sig).name.removeprefix("SIG"))
        return
    if r.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.proc.pid, sig)
    if r.cgroup is not None:
        r.cgroup.signal_all(sig)


def delete_pod_now(kube: Kube, namespace: str, name: str, uid: str) -> None:
    """Delete the pod object with gracePeriodSeconds=0 (what kubelet does once it is stopped)."""
    try:
        kube.delete(
            pod_path(namespace, name),
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            },
        )
        log.info("%s/%s: deleted", namespace, name)
    except ApiError as e:
        if e.status not in (404, 409):
            log.warning("%s/%s: delete failed: %s", namespace, name, e)
