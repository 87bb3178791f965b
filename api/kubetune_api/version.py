"""The version both entry points print (`kubetune-train --version`, `kubetune-operator --version`):
the package version and the commit it was built from.

Images record the commit at build time (hack/images passes REVISION; the Dockerfiles write it to
/opt/kubetune/REVISION); a checkout asks git. Shared by the operator, so no torch here.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
from pathlib import Path

REVISION_FILE = Path("/opt/kubetune/REVISION")


def package_version() -> str:
    try:
        return md.version("kubetune")
    except md.PackageNotFoundError:
        return "0.0.0+unknown"


def revision() -> str:
    """The commit: KUBETUNE_REVISION, the image's REVISION file, or git in a checkout."""
    env = os.environ.get("KUBETUNE_REVISION", "").strip()
    if env and env != "unknown":
        return env
    try:
        text = REVISION_FILE.read_text(encoding="utf-8").split()
        if len(text) >= 2 and text[1] != "unknown":
            return text[1]
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def version_line(prog: str) -> str:
    return f"{prog} {package_version()} (commit {revision()})"
