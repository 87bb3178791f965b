"""Property test: the Python models and the real API server agree on which FineTuneJob
manifests are valid.

Hypothesis starts from a valid manifest (each example in examples/, or a minimal one) and
applies one to three mutations drawn from the CRD schema itself: any spec field set to a
boundary value, a value just beyond it, a value of the wrong JSON type, null, a regex-generated
string (or one that almost matches), a fresh sub-object, a deleted field, an unknown field. Each
manifest goes to `FineTuneJob.model_validate` and to the API server as a dry-run create with
strict field validation; accept/refuse must match, and for an accepted manifest the stored
object (the server's defaults and pruning applied) must mean the same to the models as the
manifest does. The manifests are a mix of valid and invalid ones (checked at the end).

KUBETUNE_AGREEMENT_EXAMPLES sets the sample size (default 100; runs in well under a minute).
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubetune_api.build import crd as crdbuild
from kubetune_api.v1alpha1 import FineTuneJob
from pydantic import ValidationError
from test_api_crd import api_dry_run, assert_same_defaults, cases, install_crd

EXAMPLES = int(os.environ.get("KUBETUNE_AGREEMENT_EXAMPLES", "100"))
SCHEMA = crdbuild.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = SCHEMA["properties"]["spec"]
REPO = Path(__file__).resolve().parents[2]
NAME = "agreement"


def _bases() -> list[dict[str, Any]]:
    docs = [cases.apply_ops([])]
    examples = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples").glob("*.yaml"))]
    docs += [d for d in examples if d.get("kind") == "FineTuneJob"]
    for doc in docs:
        doc["metadata"] = {"name": NAME}
    return docs


BASES = _bases()


def _paths(node: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, child in node.get("properties", {}).items():
        path = (*prefix, name)
        out.append((path, child))
        out += _paths(child, path)
    return out


FIELDS = _paths(SPEC_SCHEMA, ("spec",))
# Hypothesis favours the first elements of sampled_from; do not let that always be spec.task.
random.Random(0).shuffle(FIELDS)
OBJECT_FIELDS = [(p, n) for p, n in FIELDS if "properties" in n]

# Strings that break patterns in the ways the two regex engines (Go RE2, Rust regex) could
# disagree on: Unicode spaces and digits, trailing newlines, empty strings.
NASTY = [
    "",
    " ",
    "a b",
    "a\u00a0b",
    "a\u000bb",
    "x\n",
    "\u0663",
    "é",
    "\U0001f600",
    "A",
    "-",
    "a..b",
    "*",
]

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _integer(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    lo, hi = node.get("minimum", -(2**31)), node.get("maximum", 2**31)
    edges = [lo - 1, lo, hi, hi + 1, 2**63, -(2**63) - 1]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(lo, hi),
        st.integers(lo, hi),
        st.integers(lo, hi),
        st.integers(lo, hi).map(float),  # 8.0
        st.integers(lo, hi).map(lambda v: v + 0.5),
        st.integers(lo, hi).map(str),
        st.sampled_from(node.get("enum", [])) if "enum" in node else st.nothing(),
    )


def _number(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    lo, hi = node.get("minimum", -1e6), node.get("maximum", 1e6)
    return st.one_of(
        st.sampled_from([lo, hi, lo - 1e-9, hi + 1e-9, lo - 1, hi + 1, 0, 1e-300]),
        st.floats(lo, hi, allow_nan=False),
        st.integers(int(lo), int(hi)),
        st.floats(lo, hi, allow_nan=False).map(str),
    )


def _string(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    max_len = node.get("maxLength", 64)
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
    options: list[st.SearchStrategy[Any]] = [
        st.sampled_from(NASTY),
        st.just("x" * (max_len + 1)),
        st.integers(0, 10),
    ]
    if "pattern" in node:
        regex = st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) < 80)
        options += [regex] * 6 + [regex.map(lambda s: s + "\n"), regex.map(lambda s: s + " "), text]
    elif "enum" in node:
        values = node["enum"]
        options += [st.sampled_from(values)] * 6
        options.append(st.sampled_from([v.upper() for v in values] + ["bogus", False, "no"]))
    else:
        options += [text] * 6
    return st.one_of(options)


def _quantity(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) < 30),
        st.sampled_from(["500m", "16Gi", "1.5", "1e3", ".5", "+1Ki", "16GB", "1..2", "-1", "Gi"]),
        st.integers(-3, 2**64),
        st.sampled_from([4.0, 1.5, True, None]),
    )


def value_for(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a schema node: mostly plausible, often just wrong."""
    kind = node.get("type")
    wrong: st.SearchStrategy[Any] = st.sampled_from([None, "text", 7, True, [], {}])
    if node.get("x-kubernetes-int-or-string"):
        return _quantity(node)
    if kind == "integer":
        base = _integer(node)
    elif kind == "number":
        base = _number(node)
    elif kind == "boolean":
        base = st.one_of(st.booleans(), st.booleans(), st.sampled_from(["true", 1, 0]))
    elif kind == "string":
        base = _string(node)
    elif kind == "array":
        item = value_for(node["items"], depth + 1)
        max_items = node.get("maxItems", 4)
        lists = st.lists(item, max_size=min(max_items, 3))
        unique = st.lists(item, min_size=1, max_size=2).map(lambda xs: xs + xs[:1])
        too_many = (
            st.just([copy.deepcopy(node.get("default", [None])[0]) if node.get("default") else "x"] * (max_items + 1))
            if max_items <= 64 else st.nothing()
        )  # fmt: skip
        base = st.one_of(lists, lists, unique, too_many)
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        base = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3)
    elif "additionalProperties" in node:
        base = st.dictionaries(
            st.from_regex(r"\A[a-z][a-z0-9./-]{0,12}\Z"),
            value_for(node["additionalProperties"], depth + 1),
            max_size=3,
        )
    elif "properties" in node:
        if depth >= 2:
            base = st.just({})
        else:
            props = node["properties"]
            base = st.fixed_dictionaries(
                {}, optional={k: value_for(v, depth + 1) for k, v in props.items()}
            )
    else:
        base = JSON_VALUES
    return st.one_of(*[base] * 6, wrong)


def tame_value(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that satisfy the field's own constraints (the cross-field rules may still fail)."""
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(
            st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) < 30),
            st.integers(0, 2**40),
        )
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if kind == "integer":
        return st.integers(node.get("minimum", 0), node.get("maximum", 2**31))
    if kind == "number":
        lo, hi = node.get("minimum", 0.0), node.get("maximum", 1e6)
        return st.floats(
            lo, hi, allow_nan=False,
            exclude_min=bool(node.get("exclusiveMinimum")),
            exclude_max=bool(node.get("exclusiveMaximum")),
        )  # fmt: skip
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        max_len = min(node.get("maxLength", 32), 32)
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= node.get("maxLength", 1024) and node.get("minLength", 0) <= len(s)
            )  # fmt: skip
        return st.text(
            st.characters(exclude_categories=["Cs"]), min_size=node.get("minLength", 0),
            max_size=max_len,
        )  # fmt: skip
    if kind == "array":
        lo = node.get("minItems", 0)
        return st.lists(
            tame_value(node["items"], depth + 1), min_size=lo, max_size=max(lo, 2),
            unique_by=lambda v: json.dumps(v, sort_keys=True),
        )  # fmt: skip
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3)
    if "additionalProperties" in node:
        return st.dictionaries(
            st.from_regex(r"\A[a-z][a-z0-9./-]{0,12}\Z"),
            tame_value(node["additionalProperties"], depth + 1),
            max_size=2,
        )
    props = node.get("properties", {})
    required = set(node.get("required", []))
    if depth >= 2:
        return st.fixed_dictionaries({k: tame_value(props[k], depth + 1) for k in required})
    return st.fixed_dictionaries(
        {k: tame_value(v, depth + 1) for k, v in props.items() if k in required},
        optional={k: tame_value(v, depth + 1) for k, v in props.items() if k not in required},
    )


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool = False) -> None:
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    # "tame" examples only set values that fit the field itself: they probe the cross-field
    # rules and defaults; "wild" ones also try every way a single value can be wrong.
    tame = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 2, 2, 3]))):
        if tame:
            path, node = draw(st.sampled_from(FIELDS))
            _set(doc, path, draw(tame_value(node)))
            continue
        action = draw(st.sampled_from(["set"] * 6 + ["delete", "unknown"]))
        if action == "unknown":
            path, _ = draw(st.sampled_from(OBJECT_FIELDS))
            _set(doc, (*path, draw(st.sampled_from(["extra", "Epochs", "lora_r"]))), 1)
            continue
        path, node = draw(st.sampled_from(FIELDS))
        if action == "delete":
            _set(doc, path, None, delete=True)
        else:
            _set(doc, path, draw(value_for(node)))
    return doc


def python_verdict(doc: dict[str, Any]) -> tuple[bool, str]:
    try:
        FineTuneJob.model_validate(doc)
    except ValidationError as e:
        return False, str(e)
    return True, ""


@pytest.fixture(scope="module")
def custom(cluster: Cluster) -> Any:
    install_crd(cluster)
    return cluster.custom()


def test_python_and_api_server_agree(custom: Any) -> None:
    seen = {True: 0, False: 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("KUBETUNE_AGREEMENT_RANDOM") != "1",
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(manifests())
    def agree(doc: dict[str, Any]) -> None:
        body = json.loads(json.dumps(doc))  # exactly what goes over the wire
        server_ok, server_err, stored = api_dry_run(custom, body)
        python_ok, python_err = python_verdict(body)
        seen[server_ok] += 1
        assert server_ok == python_ok, (
            f"API server {'accepts' if server_ok else 'refuses'}, Python "
            f"{'accepts' if python_ok else 'refuses'}:\n"
            f"spec: {json.dumps(body['spec'], indent=1)[:3000]}\n"
            f"server: {server_err[:1500]}\npython: {python_err[:1500]}"
        )
        if stored is not None:
            # Accepted by both: and what the server stores means the same to the models.
            assert_same_defaults(body, stored)

    agree()
    total = seen[True] + seen[False]
    print(f"\nagreement: {total} manifests, {seen[True]} accepted, {seen[False]} refused")
    # Both kinds must be well represented, or the test says little.
    assert seen[True] >= total // 10 and seen[False] >= total // 3, seen
