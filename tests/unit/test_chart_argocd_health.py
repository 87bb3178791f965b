"""The Argo CD health check (helm/kubetune/files/argocd-health.lua) and the Flux (kstatus) view.

The Lua runs under Lua 5.1 through lupa, as Argo CD's gopher-lua is a Lua 5.1 VM, with the
libraries Argo CD does not offer (io, os, require, load...) removed. Statuses come from the API
models in api.py and, where the operator has landed, from its own condition derivation
(`kubetune_operator.status.conditions`), so a change in the status vocabulary shows up here.
docs/gitops.md must embed the Lua verbatim.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "helm" / "kubetune" / "files" / "argocd-health.lua"
GITOPS_DOC = REPO / "docs" / "gitops.md"
NOW = "2026-01-01T00:00:00Z"

Obj = dict[str, Any]


def lua_runtime() -> Any:
    import lupa  # a dev dependency (pyproject.toml)

    try:
        mod = importlib.import_module("lupa.lua51")
    except ImportError:  # a lupa without the bundled Lua 5.1
        mod = lupa
    return mod.LuaRuntime(unpack_returned_tuples=True)


def argocd_health(obj: Obj) -> dict[str, str]:
    """Run the script the way Argo CD does: `obj` is a global, the chunk returns a table."""
    lua = lua_runtime()
    g = lua.globals()
    for name in ("io", "os", "require", "dofile", "loadfile", "load", "loadstring", "debug"):
        g[name] = None
    g.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LUA.read_text())
    out = {str(k): str(v) for k, v in dict(result).items()}
    assert set(out) <= {"status", "message"}, out
    assert out["status"] in {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
        "Missing",
        "Unknown",
    }
    return out


def kstatus(obj: Obj) -> str:
    """kstatus' generic rules (sigs.k8s.io/cli-utils pkg/kstatus/status, checkGenericProperties),
    which Flux uses for custom resources without a type-specific rule."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    if gen is not None and "observedGeneration" in status and status["observedGeneration"] != gen:
        return "InProgress"
    for c in status.get("conditions") or []:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    return "Current"


def ftj(status: Obj | None, generation: int = 1) -> Obj:
    obj: Obj = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "quickstart", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


# ------------------------------------------------------- statuses from the api.py models


def model_status(phase: str, reason: str, message: str, **extra: Any) -> Obj:
    from kubetune_api.v1alpha1 import Condition, ConditionType, FineTuneJobStatus

    def cond(t: str, true: bool) -> Condition:
        return Condition(
            type=t,
            status="True" if true else "False",
            reason=reason,
            message=message,
            last_transition_time=NOW,
            observed_generation=1,
        )

    terminal = phase in ("Succeeded", "Failed")
    conds = [
        cond(ConditionType.READY, phase == "Succeeded"),
        cond(ConditionType.RUNNING, phase == "Running"),
        cond(ConditionType.SUCCEEDED, phase == "Succeeded"),
        cond(ConditionType.FAILED, phase == "Failed"),
        cond(ConditionType.SUSPENDED, phase == "Suspended"),
        cond(ConditionType.RECONCILING, not terminal),
        cond(ConditionType.STALLED, phase == "Failed"),
    ]
    st = FineTuneJobStatus(
        phase=phase, conditions=conds, observed_generation=1, run=1, message=message, **extra
    )
    return st.wire()


EXPECTED = {
    "Pending": ("Progressing", "InProgress"),
    "Running": ("Progressing", "InProgress"),
    "Succeeded": ("Healthy", "Current"),
    "Failed": ("Degraded", "Failed"),
    # Suspended (by the user or by a queue) is not done: Flux keeps waiting (docs/gitops.md).
    "Suspended": ("Suspended", "InProgress"),
}


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("Pending", "Created"),
        ("Pending", "WaitingForPod"),
        ("Pending", "Unschedulable"),
        ("Pending", "ImagePullBackOff"),
        ("Running", "Training"),
        ("Running", "Retrying"),
        ("Succeeded", "Completed"),
        ("Failed", "OOMKilled"),
        ("Failed", "BackoffLimitExceeded"),
        ("Failed", "DatasetError"),
        ("Suspended", "Suspended"),
    ],
)
def test_api_model_statuses(phase: str, reason: str) -> None:
    from kubetune_api.v1alpha1 import Phase, Reason

    assert phase in {p.value for p in Phase} and reason in {r.value for r in Reason}
    obj = ftj(model_status(phase, reason, f"{reason} happened"))
    health = argocd_health(obj)
    assert health["status"] == EXPECTED[phase][0]
    assert reason in health["message"] and f"{reason} happened" in health["message"]


def test_no_status_yet_is_progressing() -> None:
    assert argocd_health(ftj(None)) == {
        "status": "Progressing",
        "message": "Waiting for the kubetune operator",
    }
    assert argocd_health(ftj({}))["status"] == "Progressing"


def test_unobserved_spec_change_is_progressing_even_after_success() -> None:
    status = model_status("Succeeded", "Completed", "done")
    health = argocd_health(ftj(status, generation=2))
    assert health == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 2",
    }
    assert kstatus(ftj(status, generation=2)) == "InProgress"


def test_running_message_shows_progress() -> None:
    from kubetune_api.v1alpha1 import Progress

    progress = Progress(run=1, step=10, total_steps=30, loss=2.5, stage="train")
    status = model_status("Running", "Training", "pod x is training", progress=progress)
    health = argocd_health(ftj(status))
    assert health["status"] == "Progressing"
    assert health["message"] == "Running: Training: pod x is training (step 10/30)"


def test_phase_missing_falls_back_on_terminal_conditions() -> None:
    for phase, (argo, _) in EXPECTED.items():
        status = model_status(phase, "Completed", "m")
        del status["phase"]
        assert argocd_health(ftj(status))["status"] == (
            argo if phase in ("Succeeded", "Failed", "Suspended") else "Progressing"
        )


# ------------------------------------------- statuses from the operator's own derivation


def operator_conditions() -> Any:
    return importlib.import_module("kubetune_operator.status")


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("Pending", "Created"),
        ("Pending", "Unschedulable"),
        ("Running", "Training"),
        ("Running", "Retrying"),
        ("Succeeded", "Completed"),
        ("Failed", "OOMKilled"),
        ("Failed", "DeadlineExceeded"),
        ("Failed", "InvalidSpec"),
        ("Suspended", "Suspended"),
        ("Suspended", "Preempted"),
    ],
)
def test_operator_derived_statuses(phase: str, reason: str) -> None:
    """Argo CD and Flux read what the operator actually writes."""
    st = operator_conditions()
    state = st.RunState(phase, reason, f"{reason} happened")
    conds = st.conditions(None, state, 3, NOW)
    status = {
        "phase": phase,
        "message": state.message,
        "observedGeneration": 3,
        "run": 1,
        "conditions": conds,
    }
    obj = ftj(status, generation=3)
    health = argocd_health(obj)
    assert health["status"] == EXPECTED[phase][0], health
    assert reason in health["message"]
    assert kstatus(obj) == EXPECTED[phase][1]
    ready = next(c for c in conds if c["type"] == "Ready")
    assert (ready["status"] == "True") == (phase == "Succeeded")


def test_operator_problem_stalls() -> None:
    """A spec that cannot run (e.g. a ServiceAccount that is not allowed) is Stalled for Flux
    and Degraded for Argo CD."""
    st = operator_conditions()
    state = st.RunState("Failed", "ServiceAccountNotAllowed", "not allowed")
    conds = st.conditions(None, state, 1, NOW, problem=("ServiceAccountNotAllowed", "not allowed"))
    obj = ftj({"phase": "Failed", "observedGeneration": 1, "conditions": conds})
    assert kstatus(obj) == "Failed"
    assert argocd_health(obj)["status"] == "Degraded"


# ------------------------------------------------------------------------------- the doc


def test_gitops_doc_embeds_the_lua_verbatim() -> None:
    """docs/gitops.md carries the script inside the argocd-cm example, indented by 4 spaces."""
    doc = GITOPS_DOC.read_text()
    key = "resource.customizations.health.kubetune.io_FineTuneJob: |"
    assert key in doc
    block = doc.split(key, 1)[1].split("```", 1)[0]
    lines = [ln[4:] if ln.startswith("    ") else ln for ln in block.strip("\n").splitlines()]
    assert "\n".join(lines).strip() == LUA.read_text().strip()
