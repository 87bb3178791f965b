"""The node agent's podman arguments for a container run inside its image (nodeagent/images.py):
what reaches `podman run`, and that secret values never do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nodeagent.images import container_env, run_args, write_env_file

IMAGE = "localhost/kubetune/trainer:0.1.0-abc-cuda"


def _args(container: dict, pod_spec: dict | None = None, **kw) -> list[str]:  # type: ignore[type-arg]
    base = {
        "name": "kt-1-main-0", "image": IMAGE, "pod_spec": pod_spec or {},
        "container": {"name": "main", "image": IMAGE, **container},
        "env_file": Path("/sandbox/env.0"), "env_names": [], "mounts": [],
        "memory_limit": None, "hostname": "pod-a", "argv": None,
    }  # fmt: skip
    base.update(kw)
    return run_args(**base)


def _pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_security_context_container_over_pod() -> None:
    args = _args(
        {"securityContext": {"runAsUser": 10001, "readOnlyRootFilesystem": True,
                             "allowPrivilegeEscalation": False,
                             "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
        pod_spec={"securityContext": {"runAsUser": 1, "runAsGroup": 2, "fsGroup": 3,
                                      "supplementalGroups": [4]}},
    )  # fmt: skip
    assert _pairs(args, "--user") == ["10001:2"]
    assert _pairs(args, "--group-add") == ["4", "3"]
    assert "--read-only" in args
    assert _pairs(args, "--security-opt") == ["no-new-privileges"]
    assert _pairs(args, "--cap-drop") == ["all"] and _pairs(args, "--cap-add") == [
        "net_bind_service"
    ]
    assert _pairs(args, "--network") == ["host"] and _pairs(args, "--pull") == ["never"]


def test_no_user_flag_keeps_the_images_user() -> None:
    assert "--user" not in _args({})


def test_command_replaces_the_entrypoint_and_args_follow_the_image() -> None:
    args = _args({"command": ["kubetune-train"], "args": ["--config", "/c"]},
                 argv=["kubetune-train", "--config", "/c"])  # fmt: skip
    i = args.index(IMAGE)
    assert args[i - 2 : i] == ["--entrypoint", '["kubetune-train"]']
    assert args[i + 1 :] == ["--config", "/c"]
    # No command: the image's entrypoint, the pod's args after the image.
    args = _args({"args": ["--version"]}, argv=["--version"])
    assert "--entrypoint" not in args and args[-2:] == [IMAGE, "--version"]


def test_memory_mounts_workdir_env() -> None:
    args = _args(
        {"workingDir": "/workspace"},
        memory_limit=64 << 20,
        mounts=[(Path("/sb/volumes/cfg"), "/etc/kubetune", True),
                (Path("/sb/term"), "/dev/termination-log", False)],
        env_names=["PEM"],
    )  # fmt: skip
    assert _pairs(args, "--memory") == [str(64 << 20)] == _pairs(args, "--memory-swap")
    assert _pairs(args, "--volume") == [
        "/sb/volumes/cfg:/etc/kubetune:ro",
        "/sb/term:/dev/termination-log:rw",
    ]
    assert _pairs(args, "--workdir") == ["/workspace"]
    assert _pairs(args, "--env-file") == ["/sandbox/env.0"] and _pairs(args, "--env") == ["PEM"]


def test_env_drops_the_agents_own_environment() -> None:
    agent = {"PATH": "/host/venv/bin:/usr/bin", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    resolved = {**agent, "HOME": "/sandbox/home", "KUBECONFIG": "/sandbox/kubeconfig",
                "LANG": "de_DE.UTF-8", "TOKEN": "s3cret", "KUBERNETES_SERVICE_HOST": "127.0.0.1"}  # fmt: skip
    assert container_env(resolved, agent) == {
        "LANG": "de_DE.UTF-8",  # the pod set it: kept
        "TOKEN": "s3cret",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
    }


def test_env_file_is_private_and_multiline_values_stay_out_of_it(tmp_path: Path) -> None:
    path = tmp_path / "env.0"
    rest = write_env_file(path, {"TOKEN": "s3cret", "PEM": "-----BEGIN\nxyz\n-----END"})
    assert rest == ["PEM"]
    assert path.read_text() == "TOKEN=s3cret\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    args = _args({}, env_names=rest, env_file=path)
    assert not any("s3cret" in a or "xyz" in a for a in args)
