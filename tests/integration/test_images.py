"""Image hygiene, checked on the images hack/images builds (operator and trainer):

- the user is the non-root uid the chart (operator) and the operator's rendered trainer pods
  (trainer) run as;
- no `.git`, no CA bundle or credential handed to the build in any layer (every layer's files
  are read from the local storage, not only the final filesystem);
- `pip check` is clean and every installed distribution is the version its constraints file pins;
- OCI labels (source, version, revision) and `--version` name the package version and commit.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from imagelib import REPO, built, podman

pytestmark = pytest.mark.integration

IMAGES = ("operator", "trainer")
CONSTRAINTS = {
    "operator": REPO / "operator" / "constraints.txt",
    "trainer": REPO / "trainer-image" / "constraints.txt",
}
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)


def _inspect(ref: str) -> dict[str, Any]:
    out = podman("image", "inspect", ref)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)[0])


def _run(ref: str, *args: str, entrypoint: str | None = None) -> str:
    cmd = ["run", "--rm", "--network", "none"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    out = podman(*cmd, ref, *args)
    assert out.returncode == 0, f"{ref} {args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def _storage() -> Path:
    return Path(os.environ.get("KUBETUNE_CONTAINERS", Path.home() / ".cache/kubetune/containers"))


def _layer_dirs(ref: str) -> list[Path]:
    """The diff directories of every layer of `ref` in the overlay storage."""
    diff_ids = _inspect(ref)["RootFS"]["Layers"]
    layers = json.loads((_storage() / "storage/overlay-layers/layers.json").read_text())
    by_diff = {layer.get("diff-digest"): layer["id"] for layer in layers}
    dirs = [_storage() / "storage/overlay" / by_diff[d] / "diff" for d in diff_ids]
    assert all(d.is_dir() for d in dirs), dirs
    return dirs


def _cert_bodies(data: bytes) -> set[bytes]:
    return {re.sub(rb"\s+", b"", m) for m in PEM.findall(data)}


@pytest.mark.parametrize("name", IMAGES)
def test_user_is_the_non_root_uid_pods_run_as(name: str) -> None:
    ref = built(*IMAGES)[name]
    user = _inspect(ref)["Config"]["User"]
    if name == "operator":
        values = yaml.safe_load((REPO / "helm/kubetune/values.yaml").read_text())
        sc = values["podSecurityContext"]
        expected = f"{sc['runAsUser']}:{sc['runAsGroup']}"
    else:
        from kubetune_operator.render import TRAINER_UID

        expected = f"{TRAINER_UID}:{TRAINER_UID}"
    assert user == expected
    uid, gid = expected.split(":")
    assert _run(ref, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python") == (
        f"{uid} {gid}\n"
    )
    assert uid != "0"


# Each image ships its own package and the API it stands on, and not the other's package.
SHIPPED = {
    "operator": {"kubetune_api": True, "kubetune_operator": True, "kubetune_trainer": False},
    "trainer": {"kubetune_api": True, "kubetune_trainer": True, "kubetune_operator": False},
}


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_ships_its_package_and_the_api_only(name: str) -> None:
    ref = built(*IMAGES)[name]
    probe = (
        "import importlib.util as u; "
        "print(' '.join(p for p in ('kubetune_api', 'kubetune_operator', 'kubetune_trainer') "
        "if u.find_spec(p)))"
    )
    found = set(_run(ref, "-c", probe, entrypoint="python").split())
    assert found == {pkg for pkg, shipped in SHIPPED[name].items() if shipped}


@pytest.mark.parametrize("name", IMAGES)
def test_no_git_and_no_build_secret_in_any_layer(name: str) -> None:
    ref = built(*IMAGES)[name]
    # The CA certificates the build was given beyond the base image's own store (hack/images:
    # KUBETUNE_EXTRA_CA_BUNDLE, default $PIP_CERT): mounted as a build secret, never written.
    extra = os.environ.get("KUBETUNE_EXTRA_CA_BUNDLE") or os.environ.get("PIP_CERT")
    base_store = _run(ref, "/etc/ssl/certs/ca-certificates.crt", entrypoint="cat").encode()
    secret_certs = (
        _cert_bodies(Path(extra).read_bytes()) - _cert_bodies(base_store) if extra else set()
    )
    # PEM wraps base64 at 64 columns: a certificate's first line appears verbatim in any copy.
    needles = [c[:64] for c in secret_certs]
    found_git, found_secret, scanned = [], [], 0
    for layer in _layer_dirs(ref):
        for root, dirs, files in os.walk(layer):
            if ".git" in dirs or ".git" in files:
                found_git.append(os.path.join(root, ".git"))
            for f in files:
                p = os.path.join(root, f)
                if not needles:
                    continue
                try:
                    st = os.lstat(p)
                    # Regular files only (the base layer has /dev nodes: /dev/zero never ends);
                    # big libraries and weights are not where a copied bundle lands.
                    if not stat.S_ISREG(st.st_mode) or st.st_size > 8 << 20:
                        continue
                    data = Path(p).read_bytes()
                except OSError:
                    continue
                scanned += 1
                if any(n in data for n in needles):
                    found_secret.append(p)
    assert not found_git, found_git
    assert not found_secret, f"build secret (extra CA) written into a layer: {found_secret}"
    print(f"\n[images] {name}: {scanned} files scanned for {len(needles)} extra CA certificate(s)")


@pytest.mark.parametrize("name", IMAGES)
def test_pip_check_clean_and_versions_pinned(name: str) -> None:
    ref = built(*IMAGES)[name]
    # pip is not in the image; Debian's pip wheel (python3-pip-whl in the base) checks it.
    check = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "bash", ref, "-c",
        "PYTHONPATH=$(ls /usr/share/python-wheels/pip-*.whl) python -m pip check",
    )  # fmt: skip
    assert check.returncode == 0 and "No broken requirements" in check.stdout, (
        check.stdout + check.stderr
    )
    listing = _run(
        ref,
        "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        entrypoint="python",
    )
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in json.loads(listing).items()}
    pins = {}
    for line in CONSTRAINTS[name].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            k, _, v = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", k).lower()] = v
    assert installed.pop("kubetune") == _pyproject_version()
    unpinned = {k: v for k, v in installed.items() if k not in pins}
    assert not unpinned, f"installed but not in {CONSTRAINTS[name].name}: {unpinned}"
    # A CPU torch is 2.15.0+cpu for the pin 2.15.0; CUDA wheels from PyPI carry no local label.
    wrong = {
        k: (v, pins[k]) for k, v in installed.items() if v.split("+")[0] != pins[k].split("+")[0]
    }
    assert not wrong, f"versions differ from {CONSTRAINTS[name].name}: {wrong}"


def _pyproject_version() -> str:
    m = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def _revision() -> str:
    rev = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return rev


@pytest.mark.parametrize("name", IMAGES)
def test_labels_and_version_name_the_commit(name: str) -> None:
    ref = built(*IMAGES)[name]
    labels = _inspect(ref)["Config"]["Labels"]
    version = _pyproject_version()
    assert labels["org.opencontainers.image.source"] == "https://github.com/kubetune/kubetune"
    assert labels["org.opencontainers.image.version"] == version
    revision = labels["org.opencontainers.image.revision"]
    assert revision.split("-")[0] == _revision(), labels
    prog = {"operator": "kubetune-operator", "trainer": "kubetune-train"}[name]
    assert _run(ref, "--version") == f"{prog} {version} (commit {revision})\n"
    assert ref.endswith(f":{version}-{revision}" + ("-cuda" if name == "trainer" else ""))
