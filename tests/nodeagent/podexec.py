"""Container processes: pull, argv, spawn (locally in a mount namespace, or in its image with
podman), reap and signal (a mixin of pods.PodWorker)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path

from . import images as images_mod
from .images import LocalImages
from .kube import JSON
from .podtypes import ContainerRun, _Waiting
from .util import expand, now, parse_quantity

log = logging.getLogger("nodeagent.pods")


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


def _limit(spec: JSON, resource: str) -> str | None:
    res = spec.get("resources") or {}
    value = (res.get("limits") or {}).get(resource)
    return None if value is None else str(value)


def _memory_limit(spec: JSON) -> int | None:
    value = _limit(spec, "memory")
    return None if value is None else int(parse_quantity(value))


class PodExec:
    """The exec part of pods.PodWorker (uses its attributes: ctx, pod, sandbox, ...)."""

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
        self._launch(r, cmd, env, argv, "")

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
        self._launch(r, podman_argv, penv, argv, f" in image {r.spec.get('image')}")

    def _launch(
        self, r: ContainerRun, cmd: list[str], env: dict[str, str], argv: list[str], where: str
    ) -> None:
        """Start `cmd` for container `r` (its output appended to its log); it is Running."""
        assert r.log_path is not None
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
            "%s/%s: started %s%s (pid %d): %s",
            self.ns, self.pod_name, r.name, where, r.proc.pid, shlex.join(argv),
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
