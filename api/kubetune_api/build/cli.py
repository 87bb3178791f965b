"""The API build tool's command line: renders every generated file from the models and checks they are current.

    python -m kubetune_api.build            print the CRD (YAML) to stdout
    python -m kubetune_api.build --write    write every generated file
    python -m kubetune_api.build --check    exit 1, with a diff, when one is stale
    python -m kubetune_api.build --docs     print docs/api.md to stdout

Generated files (relative to the repository root, or --root):
    crds/kubetune.io_finetunejobs.yaml                  the CRD (`kubectl apply -f crds/`)
    helm/kubetune/crds/kubetune.io_finetunejobs.yaml    the Helm chart's copy (same bytes)
    crds/kubetune.io_finetuneschedules.yaml             the FineTuneSchedule CRD (and its
    helm/kubetune/crds/kubetune.io_finetuneschedules.yaml  chart copy)
    docs/api.md                                         the spec/status reference
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from .crd import CRD_PATHS, REPO_ROOT, SCHEDULE_CRD_PATHS, render_crd, render_schedule_crd
from .docs import DOCS_PATH, render_docs


def generated() -> dict[Path, str]:
    """Every generated file, relative to the repository root, with its content."""
    text = render_crd()
    files = {path: text for path in CRD_PATHS}
    schedule = render_schedule_crd()
    files.update({path: schedule for path in SCHEDULE_CRD_PATHS})
    files[DOCS_PATH] = render_docs()
    return files


def write(root: Path) -> list[Path]:
    written = []
    for rel, content in generated().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            written.append(path)
    return written


def check(root: Path) -> list[str]:
    """Unified diffs of the stale files (empty when all are current)."""
    diffs = []
    for rel, content in generated().items():
        path = root / rel
        current = path.read_text() if path.exists() else ""
        if current != content:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                content.splitlines(keepends=True),
                fromfile=f"{rel} (committed)" if path.exists() else f"{rel} (missing)",
                tofile=f"{rel} (generated)",
            )
            diffs.append("".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_api.build", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the generated files")
    mode.add_argument("--check", action="store_true", help="fail with a diff if one is stale")
    mode.add_argument("--docs", action="store_true", help="print docs/api.md")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.root):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.check:
        diffs = check(args.root)
        for diff in diffs:
            sys.stdout.write(diff)
        if diffs:
            print(
                f"\n{len(diffs)} generated file(s) are stale: run `make crds` "
                "(python -m kubetune_api.build --write) and commit the result.",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(render_docs() if args.docs else render_crd())
    return 0
