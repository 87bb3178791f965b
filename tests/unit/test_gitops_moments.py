"""The pure status derivation at every GitOps moment (tests/gitops_moments.py), judged by kstatus'
rules and by the Argo CD health Lua; the kstatus condition contract over every combination; and
docs/gitops.md's table against the moments. The same moments run live, with the real kstatus
library, in tests/integration/test_gitops_kstatus.py."""

from __future__ import annotations

import itertools
from typing import Any

import gitops_moments
import pytest
import yaml
from gitops_moments import MOMENTS, Moment
from kubetune_api.v1alpha1 import Phase, Reason
from kubetune_operator import status
from test_chart_argocd_health import REPO, argocd_health, ftj, kstatus

NOW = "2026-01-01T00:00:00Z"
PROBLEM = (Reason.SERVICE_ACCOUNT_NOT_ALLOWED.value, "spec.resources.serviceAccountName: no")


def derived(m: Moment, generation: int) -> dict[str, Any]:
    """The status the operator writes at moment `m` (for `created`: the CRD's default)."""
    if not m.phase:
        return {"observedGeneration": 0}
    problem = PROBLEM if m.reason == PROBLEM[0] else None
    reason = Reason.TRAINING.value if problem else m.reason
    state = status.RunState(m.phase, reason, f"{reason} happened")
    conds = status.conditions(None, state, generation, NOW, problem=problem)
    return {
        "phase": m.phase,
        "message": state.message,
        "observedGeneration": generation,
        "run": 2 if m.key.startswith("changed") else 1,
        "conditions": conds,
    }


@pytest.mark.parametrize("moment", MOMENTS, ids=lambda m: m.key)
def test_each_moment_reads_as_documented(moment: Moment) -> None:
    generation = 2 if moment.key.startswith("changed") else 1
    obj = ftj(derived(moment, generation), generation)
    assert kstatus(obj) == moment.kstatus
    health = argocd_health(obj)
    assert health["status"] == moment.argo, health
    if moment.reason:
        assert moment.reason in health["message"]


@pytest.mark.parametrize("moment", [m for m in MOMENTS if m.key.startswith("changed")])
def test_a_spec_change_reads_in_progress_until_observed(moment: Moment) -> None:
    """Between the edit and the operator's next write the status describes generation 1."""
    before = gitops_moments.BY_KEY["succeeded" if "finished" in moment.key else "running"]
    obj = ftj(derived(before, 1), generation=2)
    assert kstatus(obj) == "InProgress"
    assert argocd_health(obj)["status"] == "Progressing"


def test_the_crd_defaults_status_so_nothing_reads_current_before_the_operator() -> None:
    crd = yaml.safe_load((REPO / "crds" / "kubetune.io_finetunejobs.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["status"]["default"] == {"observedGeneration": 0}
    # Without the default kstatus would read a status-less object as Current.
    assert kstatus(ftj(None, 1)) == "Current"
    assert kstatus(ftj({"observedGeneration": 0}, 1)) == "InProgress"


PHASES = [p.value for p in Phase]
REASONS = {
    Phase.PENDING.value: [Reason.CREATED.value, Reason.UNSCHEDULABLE.value],
    Phase.QUEUED.value: [Reason.QUEUED.value, Reason.ADMITTED.value],
    Phase.RUNNING.value: [Reason.TRAINING.value, Reason.RETRYING.value],
    Phase.SUCCEEDED.value: [Reason.COMPLETED.value],
    Phase.FAILED.value: [Reason.DATASET_ERROR.value, Reason.DEADLINE_EXCEEDED.value],
    Phase.SUSPENDED.value: [Reason.SUSPENDED.value, Reason.PREEMPTED.value],
}


@pytest.mark.parametrize(
    ("phase", "reason", "problem", "waiting"),
    [
        (p, r, problem, waiting)
        for p in PHASES
        for r in REASONS[p]
        for problem, waiting in itertools.product([None, PROBLEM], [None, "gen 3 is queued"])
    ],
)
def test_condition_contract(
    phase: str, reason: str, problem: tuple[str, str] | None, waiting: str | None
) -> None:
    conds = {
        c["type"]: c
        for c in status.conditions(
            None, status.RunState(phase, reason, "m"), 7, NOW, problem, waiting
        )
    }
    reconciling = conds["Reconciling"]["status"] == "True"
    stalled = conds["Stalled"]["status"] == "True"
    assert not (reconciling and stalled)
    assert stalled == (phase == "Failed" or problem is not None)
    assert reconciling == (not stalled and (phase not in ("Succeeded", "Failed") or bool(waiting)))
    assert (conds["Ready"]["status"] == "True") == (
        phase == "Succeeded" and not stalled and not reconciling
    )
    assert all(c["observedGeneration"] == 7 for c in conds.values())
    if problem is not None:
        assert conds["Stalled"]["reason"] == problem[0]


def test_every_status_write_carries_observed_generation() -> None:
    """`derive` is the only source of status writes; each one sets observedGeneration."""
    for generation in (1, 4):
        obj = ftj({"observedGeneration": 0}, generation)
        obj["spec"] = {"runPolicy": {}}
        out = status.derive(
            obj, status.Decision(current_run=0), None, [], now=status.parse_time(NOW),  # type: ignore[arg-type]
            gpu_resources={"nvidia.com/gpu"}, problem=PROBLEM,
        )  # fmt: skip
        assert out.status["observedGeneration"] == generation


def test_docs_table_matches_the_moments() -> None:
    text = gitops_moments.DOC.read_text()
    assert gitops_moments.current_doc_block(text) == gitops_moments.doc_block(), (
        "docs/gitops.md is stale: run `python tests/gitops_moments.py --write`"
    )
