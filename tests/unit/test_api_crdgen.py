"""The generated CRD is a structural schema that says what the models say, and the committed
copies (crds/, the Helm chart's crds/, docs/api.md) are current."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml
from kubetune_api import v1alpha1 as c
from kubetune_api.build import cli
from kubetune_api.build import crd as crdbuild
from kubetune_api.build import docs as apidocs
from kubetune_api.v1alpha1 import FineTuneJobSpec
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parents[2]
CRD = crdbuild.crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.spec.model.hubId`, `[]` for items, `{}` for maps)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


NODES = list(walk(SCHEMA))


def test_crd_identity() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "finetunejobs.kubetune.io"
    spec = CRD["spec"]
    assert spec["group"] == "kubetune.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob" and spec["names"]["plural"] == "finetunejobs"
    assert spec["names"]["shortNames"] == ["ftj"] and spec["names"]["categories"] == ["kubetune"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    cols = {col["name"]: col for col in VERSION["additionalPrinterColumns"]}
    assert [n for n, col in cols.items() if not col.get("priority")] == [
        "Phase", "Task", "Method", "Model", "Progress", "Loss", "Age",
    ]  # fmt: skip
    paths = {p for p, _ in NODES}
    for col in cols.values():
        if col["jsonPath"] != ".metadata.creationTimestamp":
            assert col["jsonPath"] in paths, col
    assert cols["Age"]["type"] == "date" and cols["Loss"]["type"] == "number"


def test_schema_is_structural() -> None:
    for path, node in NODES:
        for key in node:
            assert key in crdbuild.ALLOWED_KEYS, f"{path}: unexpected key {key!r}"
        for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "title", "$defs", "nullable"):
            assert key not in node, f"{path}: {key}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if node.get("type") == "object":
            kinds = [
                "properties" in node,
                "additionalProperties" in node,
                bool(node.get("x-kubernetes-preserve-unknown-fields")),
            ]
            assert sum(kinds) == 1, f"{path}: object needs exactly one of properties, "
            "additionalProperties or x-kubernetes-preserve-unknown-fields"
        if node.get("type") == "array":
            assert "items" in node, path
        for req in node.get("required", []):
            assert req in node.get("properties", {}), f"{path}: required {req} not a property"


def test_every_property_has_a_description() -> None:
    for path, node in NODES:
        if path == ".metadata":  # the API server refuses a description there
            assert set(node["properties"]) == {"name"}
            continue
        if path and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path}: no description"


def test_cel_rules_name_existing_fields() -> None:
    count = 0
    for path, node in NODES:
        for rule in node.get("x-kubernetes-validations", []):
            count += 1
            assert rule["rule"] and rule["message"], path
            target = rule.get("fieldPath")
            if target:
                target_node: dict[str, Any] = node
                for name in target.lstrip(".").split("."):
                    target_node = target_node["properties"][name]
    assert count >= 30


def test_defaults_of_objects_are_empty_and_nested_defaults_exist() -> None:
    for name in ("method", "hyperparameters", "resources", "tracking", "runPolicy"):
        assert SPEC["properties"][name]["default"] == {}, name
    assert SPEC["properties"]["tracking"]["properties"]["reportTo"]["default"] == ["tensorboard"]
    assert SPEC["properties"]["dataset"]["properties"]["fields"]["default"] == {}
    assert "default" not in SPEC["properties"]["model"]
    assert SPEC["required"] == ["model", "dataset", "output"]


def test_numeric_bounds_are_openapi_v3_0() -> None:
    lr = SPEC["properties"]["hyperparameters"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True and lr["maximum"] == 1
    num_labels = SPEC["properties"]["classification"]["properties"]["numLabels"]
    assert (num_labels["minimum"], num_labels["maximum"]) == (2, 10000)
    for path, node in NODES:
        if node.get("type") == "integer" and path.startswith(".spec") and "enum" not in node:
            assert "maximum" in node, f"{path}: unbounded integer (int64 overflow)"
        for key in ("minimum", "maximum"):
            # The API server reads the schema's numbers as float64: a bound beyond 2**53 (e.g.
            # int64 max) is no longer an integer and breaks validation of the field.
            if isinstance(node.get(key), int | float):
                assert abs(node[key]) <= 2**53, f"{path}: {key} {node[key]} is not exact"


def test_integers_refuse_floats_on_the_server_too() -> None:
    """The API server's OpenAPI check lets 8.0 through for an integer, its CEL evaluation does
    not: every integer (and quantity) in the spec carries a rule that makes it refuse 8.0
    everywhere, as the models do."""
    for path, node in NODES:
        if not path.startswith(".spec") or "enum" in node:
            continue
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        if node.get("type") == "integer":
            assert "type(self) == int" in rules, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type(self) == int || type(self) == string" in rules, path


def test_quantities_are_int_or_string() -> None:
    cpu = SPEC["properties"]["resources"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True and "type" not in cpu
    assert cpu["pattern"] == c.QUANTITY_PATTERN and cpu["minimum"] == 0


def test_free_form_objects_preserve_unknown_fields() -> None:
    inline = SPEC["properties"]["dataset"]["properties"]["inline"]["items"]
    assert inline == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    # affinity is the typed core/v1 Affinity now: nothing unknown survives in it.
    affinity = SPEC["properties"]["resources"]["properties"]["affinity"]
    assert "x-kubernetes-preserve-unknown-fields" not in affinity
    assert set(affinity["properties"]) == {"nodeAffinity", "podAffinity", "podAntiAffinity"}
    selector = SPEC["properties"]["resources"]["properties"]["nodeSelector"]
    assert selector["additionalProperties"]["type"] == "string"


def _spec_models() -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [FineTuneJobSpec]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        yield model
        for field in model.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)


def _type_args(tp: Any) -> Iterator[Any]:
    yield tp
    for arg in getattr(tp, "__args__", ()) or ():
        yield from _type_args(arg)
    for arg in getattr(tp, "__metadata__", ()) or ():
        yield arg


def _constraints(metadata: list[Any], kind: str) -> dict[str, Any]:
    """The OpenAPI keys that pydantic/annotated_types constraints must become."""
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out.update(minimum=m.gt, exclusiveMinimum=True)
        elif isinstance(m, annotated_types.Le):
            out["maximum"] = m.le
        elif isinstance(m, annotated_types.Lt):
            out.update(maximum=m.lt, exclusiveMaximum=True)
        elif isinstance(m, annotated_types.MinLen):
            out[{"array": "minItems", "object": "minProperties"}.get(kind, "minLength")] = (
                m.min_length
            )
        elif isinstance(m, annotated_types.MaxLen):
            out[{"array": "maxItems", "object": "maxProperties"}.get(kind, "maxLength")] = (
                m.max_length
            )
        elif getattr(m, "pattern", None) is not None:
            out["pattern"] = m.pattern
        elif isinstance(m, FieldInfo):
            out.update(_constraints(m.metadata, kind))
    return out


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _check_type(tp: Any, node: dict[str, Any], where: str, seen: set[Any]) -> int:
    """Check the constraints of `tp` (and of its items, values, nested models) in `node`."""
    checked = 0
    tp = _unwrap_optional(tp)
    metadata: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        metadata += list(tp.__metadata__)
        tp = _unwrap_optional(tp.__origin__)
    kind = node.get("type", "")
    for key, value in _constraints(metadata, kind).items():
        assert node.get(key) == value, f"{where}: {key} is {node.get(key)!r}, model says {value!r}"
        checked += 1
    origin = typing.get_origin(tp)
    if origin is list:
        checked += _check_type(typing.get_args(tp)[0], node["items"], f"{where}[]", seen)
    elif origin is dict:
        value_tp = typing.get_args(tp)[1]
        if value_tp is not Any:
            checked += _check_type(value_tp, node["additionalProperties"], f"{where}{{}}", seen)
    elif isinstance(tp, type) and issubclass(tp, BaseModel) and (tp, where) not in seen:
        seen.add((tp, where))
        for name, field in tp.model_fields.items():
            prop = node["properties"][field.alias or name]
            field_kind = prop.get("type", "")
            for key, value in _constraints(field.metadata, field_kind).items():
                assert prop.get(key) == value, (
                    f"{where}.{field.alias}: {key} is {prop.get(key)!r}, model says {value!r}"
                )
                checked += 1
            checked += _check_type(field.annotation, prop, f"{where}.{field.alias}", seen)
    return checked


def test_every_model_constraint_is_in_the_schema() -> None:
    """pydantic sometimes leaves a constraint out of its JSON Schema while still enforcing it
    (e.g. a pattern next to a BeforeValidator): every one must reach the CRD."""
    checked = _check_type(FineTuneJobSpec, SPEC, ".spec", set())
    assert checked > 100


def test_enums_match_the_models() -> None:
    by_values = {frozenset(e): e for e in vars(c).values() if isinstance(e, type) and issubclass(e, StrEnum) and e is not StrEnum}  # fmt: skip
    enums = [node["enum"] for _, node in NODES if "enum" in node and node.get("type") == "string"]
    for values in enums:
        if frozenset(values) in by_values:
            assert values == [v.value for v in by_values[frozenset(values)]]
    assert [
        "full",
        "lora",
        "qlora",
        "dora",
        "prompt-tuning",
        "prefix-tuning",
        "ia3",
        "bitfit",
    ] in enums
    bits = SPEC["properties"]["method"]["properties"]["quantization"]["properties"]["bits"]
    assert bits["enum"] == [4]


def test_cel_rules_equal_the_models_rules() -> None:
    """Every rule in the models' json_schema_extra is in the CRD exactly once per use."""
    rules = {r["rule"] for _, n in NODES for r in n.get("x-kubernetes-validations", [])}
    for model in _spec_models():
        extra: Any = model.model_config.get("json_schema_extra")
        if isinstance(extra, dict):
            for rule in extra.get("x-kubernetes-validations", []):
                assert rule["rule"] in rules, (model.__name__, rule)
    name = SCHEMA["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] == c.MAX_NAME_LENGTH


# --------------------------------------------------------------------------- committed files


def test_committed_files_are_current() -> None:
    assert cli.check(REPO) == [], "stale: run make crds"
    assert cli.main(["--check"]) == 0


def test_helm_copy_is_identical() -> None:
    a, b = (REPO / p for p in crdbuild.CRD_PATHS)
    assert a.read_bytes() == b.read_bytes()
    assert yaml.safe_load(a.read_text()) == CRD


def test_cli_check_passes_on_the_committed_files() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune_api.build", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _copy_generated(root: Path) -> None:
    for rel in cli.generated():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)


@pytest.mark.parametrize("rel", list(cli.generated()), ids=str)
def test_check_fails_with_a_diff_when_stale(
    tmp_path: Path, rel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _copy_generated(tmp_path)
    assert cli.main(["--check", "--root", str(tmp_path)]) == 0
    target = tmp_path / rel
    target.write_text(target.read_text().replace("Rank of the update", "Rank of THE update"))
    capsys.readouterr()
    assert cli.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "-" in out.out and "Rank of THE update" in out.out and str(rel) in out.out
    assert "make crds" in out.err
    # --write repairs it, and only it.
    assert cli.write(tmp_path) == [target]
    assert cli.main(["--check", "--root", str(tmp_path)]) == 0


def test_check_fails_when_a_file_is_missing(tmp_path: Path) -> None:
    _copy_generated(tmp_path)
    (tmp_path / crdbuild.CRD_PATHS[1]).unlink()
    assert cli.main(["--check", "--root", str(tmp_path)]) == 1


def test_docs_mention_every_spec_field() -> None:
    docs = (REPO / apidocs.DOCS_PATH).read_text()
    for path, _ in NODES:
        if path.startswith((".spec.", ".status.")) and not path.endswith(("[]", "{}")):
            name = path.rsplit(".", 1)[-1].rstrip("[]{}")
            assert f"`{name}`" in docs, path
    for col in crdbuild.PRINTER_COLUMNS:
        assert col["jsonPath"] in docs
