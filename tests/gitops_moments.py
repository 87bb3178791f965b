"""What GitOps tools read at each moment of a FineTuneJob's life: the one table that the tests
and docs/gitops.md share.

- tests/unit/test_gitops_moments.py derives each moment's status with the operator's pure status
  functions and checks kstatus' rules and the Argo CD health Lua against `argo`/`kstatus`;
- tests/integration/test_gitops_kstatus.py drives a real operator through every moment on the
  local cluster and runs the real kstatus library (hack/tools/kstatus) and the Lua on the live
  object;
- docs/gitops.md embeds `markdown_table()` between the markers below; the unit test fails when
  the doc is stale. `python tests/gitops_moments.py --write` rewrites it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "gitops.md"
BEGIN = "<!-- moments:begin (generated from tests/gitops_moments.py) -->"
END = "<!-- moments:end -->"


@dataclass(frozen=True)
class Moment:
    key: str
    when: str  # the moment, as the doc says it
    phase: str  # status.phase ("" when the operator has written no status yet)
    reason: str  # the reason in the status (Ready's, or Stalled's when stalled)
    argo: str  # Argo CD health (helm/kubetune/files/argocd-health.lua)
    kstatus: str  # kstatus / Flux
    flux: str  # what a Flux Kustomization with `wait: true` does


WAITS = "waits"
MOVES_ON = "Ready; dependents apply"
FAILS = "fails its health check now"

MOMENTS: tuple[Moment, ...] = (
    Moment("created", "just created, before the operator's first status write", "", "",
           "Progressing", "InProgress", WAITS),
    Moment("pending", "Pending (e.g. no node with a free GPU)", "Pending", "Unschedulable",
           "Progressing", "InProgress", WAITS),
    Moment("running", "Running", "Running", "Training", "Progressing", "InProgress", WAITS),
    Moment("succeeded", "Succeeded (artifacts in S3)", "Succeeded", "Completed", "Healthy",
           "Current", MOVES_ON),
    Moment("failed", "Failed (e.g. bad data)", "Failed", "DatasetError", "Degraded", "Failed",
           FAILS),
    Moment("suspended", "suspended (`runPolicy.suspend: true`)", "Suspended", "Suspended",
           "Suspended", "InProgress", WAITS),
    Moment("resumed", "resumed (`runPolicy.suspend: false`)", "Running", "Training",
           "Progressing", "InProgress", WAITS),
    Moment("changed-running", "spec changed while running (new run)", "Running", "Training",
           "Progressing", "InProgress", WAITS),
    Moment("changed-finished", "spec changed after a finished run (new run)", "Running",
           "Training", "Progressing", "InProgress", WAITS),
    Moment("deadline", "Unschedulable past `runPolicy.activeDeadlineSeconds`", "Failed",
           "DeadlineExceeded", "Degraded", "Failed", FAILS),
    Moment("invalid-running", "a spec that cannot run, applied while a run is active",
           "Running", "ServiceAccountNotAllowed", "Degraded", "Failed", FAILS),
)  # fmt: skip

BY_KEY = {m.key: m for m in MOMENTS}


def markdown_table() -> str:
    rows = [
        "| moment | `status.phase` | reason | Argo CD health | kstatus (Flux) | Flux `wait: true` |",
        "|---|---|---|---|---|---|",
    ]
    for m in MOMENTS:
        phase = f"`{m.phase}`" if m.phase else "(none yet)"
        reason = f"`{m.reason}`" if m.reason else ""
        rows.append(f"| {m.when} | {phase} | {reason} | {m.argo} | {m.kstatus} | {m.flux} |")
    return "\n".join(rows)


def doc_block() -> str:
    return f"{BEGIN}\n{markdown_table()}\n{END}"


def current_doc_block(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    start = text.index(BEGIN)
    return text[start : text.index(END, start) + len(END)]


def write_doc() -> None:
    text = DOC.read_text()
    block = current_doc_block(text)
    if block is None:
        raise SystemExit(f"{DOC}: markers {BEGIN!r} ... {END!r} not found")
    DOC.write_text(text.replace(block, doc_block()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_doc()
    else:
        print(doc_block())
