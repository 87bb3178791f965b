"""The generated CRD on the real kube-apiserver: bad manifests are refused by `kubectl apply`
with the offending field named, good ones and the examples are accepted (with the same defaults
the Python models fill in), task and output.uri are immutable, `kubectl explain` documents every
field, and `kubectl get ftj` shows the printer columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from kubernetes.client.exceptions import ApiException
from kubetune_api.build import crd as crdbuild
from kubetune_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL, FineTuneJob

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / crdbuild.CRD_PATHS[0]
# The chart ships both CRDs and `kubectl get kubetune` (the category) lists both kinds: with only
# the FineTuneJob CRD, a discovery that still knows FineTuneSchedule (kubectl's disk cache of an
# earlier cluster on the same address) makes the category lookup fail.
SCHEDULE_CRD_FILE = REPO / crdbuild.SCHEDULE_CRD_PATHS[0]
# Dry runs are admitted like creates, so they need an existing namespace; nothing is stored.
DRY_RUN_NAMESPACE = "default"


def _load_cases() -> ModuleType:
    path = REPO / "tests" / "unit" / "test_api_models.py"
    spec = importlib.util.spec_from_file_location("kubetune_api_cases", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def api_dry_run(custom: Any, doc: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None]:
    """A dry-run create through the API client, with strict field validation, sending the JSON
    exactly as given (kubectl would turn 8.0 into 8): (accepted, error, object as stored)."""
    try:
        stored = custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, DRY_RUN_NAMESPACE, PLURAL, doc,
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
    except ApiException as e:
        if e.status in (400, 422):  # strict decoding error, Invalid
            body = str(e.body)
            return False, str(json.loads(body).get("message", body)), None
        raise
    return True, "", stored


def _has_integral_float(node: Any) -> bool:
    if isinstance(node, float):
        return node.is_integer()
    if isinstance(node, dict):
        return any(_has_integral_float(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_integral_float(v) for v in node)
    return False


def dry_run(cluster: Cluster, doc: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None]:
    """`kubectl apply --dry-run=server --validate=strict`: (accepted, stderr, object as stored)."""
    proc = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
        namespace=DRY_RUN_NAMESPACE, input=json.dumps(doc), check=False,
    )  # fmt: skip
    if proc.returncode == 0:
        return True, proc.stderr, json.loads(proc.stdout)
    return False, proc.stderr + proc.stdout, None


def install_crd(cluster: Cluster) -> None:
    """Apply the committed CRD and wait until the API server serves this version of it."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=kubetune-tests",
        "-f", str(CRD_FILE), "-f", str(SCHEDULE_CRD_FILE),
    )  # fmt: skip
    cluster.wait_crd_established(crdbuild.CRD_NAME)
    cluster.wait_crd_established(crdbuild.SCHEDULE_CRD_NAME)
    # The handler for a changed schema is swapped in asynchronously: wait until a few probes get
    # the answers the committed schema gives.
    probes = [
        (cases.apply_ops(ops), True) for name, ops in cases.GOOD if name in ("text-template",)
    ] + [
        (cases.apply_ops(ops), False)
        for name, ops, *_ in cases.BAD
        if name in ("bad-quantity", "name-too-long", "bad-node-selector-value")
    ]

    def served() -> bool:
        return all(dry_run(cluster, doc)[0] == ok for doc, ok in probes)

    cluster.wait_for(served, timeout=60, interval=1, what="the committed CRD schema to be served")


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> Cluster:
    install_crd(cluster)
    return cluster


@pytest.fixture(scope="module")
def custom(crd: Cluster) -> Any:
    return crd.custom()


def test_crd_is_established_and_structural(crd: Cluster) -> None:
    obj = crd.kubectl_json("get", "crd", crdbuild.CRD_NAME)
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    # A non-structural schema, or a CEL rule over the cost budget, would show up here.
    assert "NonStructuralSchema" not in conditions, conditions
    assert obj["status"]["acceptedNames"]["shortNames"] == ["ftj"]
    assert obj["status"]["acceptedNames"]["categories"] == ["kubetune"]


@pytest.mark.parametrize(
    ("ops", "path", "fragment"), [b[1:] for b in cases.BAD], ids=[b[0] for b in cases.BAD]
)
def test_bad_manifest_refused_naming_the_field(
    crd: Cluster, custom: Any, ops: list[Any], path: str, fragment: str | None
) -> None:
    doc = cases.apply_ops(ops)
    attempts = [("API", api_dry_run(custom, doc))]
    if not _has_integral_float(doc):  # kubectl would send 8.0 as 8
        attempts.append(("kubectl apply", dry_run(crd, doc)))
    for how, (ok, err, _) in attempts:
        assert not ok, f"{how}: accepted:\n{json.dumps(doc['spec'], indent=1)[:2000]}"
        # The API server names the field: `spec.a.b: Invalid value`, `spec.a[0].b: ...`,
        # `unknown field "spec.a.b"`, `spec.a: Required value`.
        named = f"{path}:" in err or f"{path}[" in err or f'"{path}"' in err
        assert named, f"{how}: error does not name {path}:\n{err}"
        if fragment:
            assert fragment in err, f"{how}: {err}"
    assert cases.python_error(doc) is not None, "the Python models accept what the server refuses"


@pytest.mark.parametrize("ops", [g[1] for g in cases.GOOD], ids=[g[0] for g in cases.GOOD])
def test_good_manifest_accepted_with_the_same_defaults(
    crd: Cluster, custom: Any, ops: list[Any]
) -> None:
    doc = cases.apply_ops(ops)
    for ok, err, stored in (api_dry_run(custom, doc), dry_run(crd, doc)):
        assert ok, err
        assert stored is not None
        assert_same_defaults(doc, stored)


def assert_same_defaults(doc: dict[str, Any], stored: dict[str, Any]) -> None:
    """What the API server stores (its defaults applied) is what the models make of the
    manifest (their defaults applied): the operator sees the spec the user meant."""
    mine = FineTuneJob.model_validate(doc).spec.wire()
    theirs = FineTuneJob.model_validate(stored).spec
    assert theirs.wire() == mine
    # And the server has already filled in every default the models know of (except optional
    # fields without one): nothing the trainer uses is missing from `kubectl get -o yaml`.
    assert _paths(stored["spec"]) >= _paths(mine)


def _paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        out = set()
        for k, v in node.items():
            out |= {f"{prefix}.{k}"} | _paths(v, f"{prefix}.{k}")
        return out
    return set()


@pytest.mark.parametrize("path", cases.EXAMPLES, ids=[p.name for p in cases.EXAMPLES])
def test_example_accepted_by_the_api_server(crd: Cluster, path: Path) -> None:
    proc = crd.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-o", "json", "-f", str(path),
        namespace=DRY_RUN_NAMESPACE, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_same_defaults(yaml.safe_load(path.read_text()), json.loads(proc.stdout))


# --------------------------------------------------------------------------- updates


def _job(name: str) -> dict[str, Any]:
    return cases.apply_ops([("set", "metadata.name", name)])


def test_task_and_output_uri_are_immutable(crd: Cluster, namespace: str) -> None:
    doc = _job("immutable")
    crd.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(doc))

    def update(ops: list[Any]) -> tuple[int, str]:
        changed = cases.apply_ops(ops, base=doc)
        proc = crd.kubectl(
            "apply", "-f", "-", namespace=namespace, input=json.dumps(changed), check=False
        )
        return proc.returncode, proc.stderr

    # Changing the task (consistently, so only immutability is violated) is refused.
    rc, err = update(
        [*cases._CLS, ("set", "spec.classification", {"numLabels": 2})],
    )
    assert rc != 0 and "spec.task:" in err and "task is immutable" in err, err
    # A new output.uri would orphan earlier runs' artifacts: refused.
    rc, err = update([("set", "spec.output.uri", "s3://bucket/elsewhere")])
    assert rc != 0 and "spec.output.uri:" in err and "output.uri is immutable" in err, err
    # Everything else may change; the immutable fields may be restated.
    rc, err = update(
        [
            ("set", "spec.hyperparameters.learningRate", 0.0001),
            ("set", "spec.runPolicy.suspend", True),
            ("set", "spec.output.uri", "s3://bucket/out"),
            ("set", "spec.task", "causal-lm"),
        ]
    )
    assert rc == 0, err
    live = crd.kubectl_json("get", "ftj", "immutable", namespace=namespace)
    assert live["spec"]["runPolicy"]["suspend"] is True
    assert live["metadata"]["generation"] == 2


def test_name_longer_than_the_limit_is_refused_even_with_generate_name(crd: Cluster) -> None:
    doc = _job("x")
    del doc["metadata"]["name"]
    doc["metadata"]["generateName"] = "g" * 48  # + 5 random characters = 53
    proc = crd.kubectl(
        "create", "--dry-run=server", "-f", "-", namespace=DRY_RUN_NAMESPACE,
        input=json.dumps(doc), check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "metadata.name: Too long" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- kubectl UX


def _described_fields(node: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """(kubectl explain path, description) of every field under `node`."""
    out = []
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        out.append((path, child["description"]))
        out += _described_fields(child.get("items", child), path)
    return out


def test_kubectl_explain_describes_every_field(crd: Cluster) -> None:
    schema = crdbuild.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = _described_fields(schema["properties"]["spec"], "finetunejob.spec")
    fields += _described_fields(schema["properties"]["status"], "finetunejob.status")
    assert len(fields) > 150

    def explained(path: str) -> str | None:
        proc = crd.kubectl("explain", path, check=False)
        if proc.returncode != 0 or "DESCRIPTION:" not in proc.stdout:
            return None
        return " ".join(proc.stdout.split("DESCRIPTION:", 1)[1].split())

    # The OpenAPI document of a changed CRD is republished asynchronously.
    crd.wait_for(
        lambda: explained("finetunejob.spec.dataset.textTemplate"),
        timeout=60, interval=1, what="kubectl explain to know the current schema",
    )  # fmt: skip
    missing = []
    for path, description in fields:
        text = explained(path)
        if text is None or " ".join(description.split()[:6]) not in text:
            missing.append(path)
    assert not missing, f"kubectl explain shows no (or another) description for: {missing}"


def test_printer_columns_category_short_name_and_field_selectors(
    crd: Cluster, namespace: str
) -> None:
    doc = _job("columns")
    doc["spec"]["method"] = {"type": "qlora"}
    crd.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(doc))
    status = {
        "status": {
            "phase": "Running",
            "model": "org/model",
            "progressSummary": "12/100 (12%)",
            "run": 1,
            "progress": {"step": 12, "totalSteps": 100, "loss": 1.25, "evalLoss": 1.5},
            "message": "training",
        }
    }
    crd.kubectl(
        "patch", "ftj", "columns", "--subresource=status", "--type=merge", "-p",
        json.dumps(status), namespace=namespace,
    )  # fmt: skip
    out = crd.kubectl("get", "ftj", "columns", namespace=namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "NAME", "PHASE", "TASK", "METHOD", "MODEL", "PROGRESS", "LOSS", "AGE",
    ], out  # fmt: skip
    assert row.split()[:8] == [
        "columns", "Running", "causal-lm", "qlora", "org/model", "12/100", "(12%)", "1.25",
    ], out  # fmt: skip
    wide = crd.kubectl("get", "ftj", "columns", "-o", "wide", namespace=namespace).stdout
    assert wide.splitlines()[0].split()[-5:] == [
        "RUN", "EVAL-LOSS", "EVAL", "PROMOTED", "MESSAGE",
    ], wide  # fmt: skip
    assert "columns" in crd.kubectl("get", "kubetune", namespace=namespace).stdout
    selected = crd.kubectl(
        "get", "finetunejobs", "--field-selector", "spec.method.type=qlora", "-o", "name",
        namespace=namespace,
    ).stdout.split()  # fmt: skip
    assert selected == ["finetunejob.kubetune.io/columns"]
    none = crd.kubectl(
        "get", "ftj", "--field-selector", "spec.task=sequence-classification", "-o", "name",
        namespace=namespace,
    ).stdout.split()  # fmt: skip
    assert none == []
    # The spec is not writable through the status subresource, nor the status through the spec.
    live = crd.kubectl_json("get", "ftj", "columns", namespace=namespace)
    assert live["status"]["phase"] == "Running" and live["metadata"]["generation"] == 1
    FineTuneJob.model_validate(live)


def test_status_schema_refuses_a_bad_phase(crd: Cluster, namespace: str) -> None:
    crd.kubectl("apply", "-f", "-", namespace=namespace, input=json.dumps(_job("badphase")))
    proc = crd.kubectl(
        "patch", "ftj", "badphase", "--subresource=status", "--type=merge", "-p",
        json.dumps({"status": {"phase": "Exploded"}}), namespace=namespace, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "status.phase" in proc.stderr, proc.stderr
