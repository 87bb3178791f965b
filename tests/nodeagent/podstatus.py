"""Pod status reporting: conditions, container statuses, the status push, Events and
termination messages, as the kubelet reports them (a mixin of pods.PodWorker)."""

from __future__ import annotations

import contextlib
import json
import logging

from .kube import JSON, ApiError, pod_path
from .podtypes import FALLBACK_LOG_BYTES, FALLBACK_LOG_LINES, TERMINATION_MESSAGE_MAX, ContainerRun
from .util import now

log = logging.getLogger("nodeagent.pods")


class PodStatus:
    """The status part of pods.PodWorker (uses its attributes: ctx, pod, sandbox, ...)."""

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.ctx.post_event(self.pod, type_, reason, message)

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
