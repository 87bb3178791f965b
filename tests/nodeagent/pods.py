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

The worker is split by concern; this module holds the main flow (lifecycle, monitor, restarts,
deletion, deadline, kill), and its parts are mixins of PodWorker:
  * podtypes.py: NodeContext, ContainerRun, the interrupts and limits;
  * podstatus.py: conditions, container statuses, the status push, Events, termination messages;
  * podenv.py: env and envFrom resolution (ConfigMap/Secret keys, fieldRef, resourceFieldRef);
  * podvolumes.py: the sandbox, volumes, service-account token files, per-container mounts;
  * podexec.py: pull, argv, spawn (local or in its image), reap, signals.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .kube import JSON, ApiError, Kube, pod_path
from .podenv import PodEnv
from .podexec import PodExec, _signal_run
from .podstatus import PodStatus
from .podtypes import ContainerRun, NodeContext, _Deadline, _Deleted, _Gone, _PodFailed, _Shutdown
from .podvolumes import PodVolumes
from .util import now, parse_time

log = logging.getLogger("nodeagent.pods")


class PodWorker(PodStatus, PodEnv, PodVolumes, PodExec, threading.Thread):
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
